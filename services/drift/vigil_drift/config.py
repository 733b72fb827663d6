"""Alert thresholds, configurable per model; defaults from the article's monitoring table.

| Article row | Default here |
|---|---|
| Data drift: drift score > 0.3 | ``psi`` 0.3 (max of PSI and SD-normalised Wasserstein, recent values) |
| Prediction distribution: > 20% shift in mean prediction | ``mean_score_shift`` 0.2 (relative) |
| Concept drift: calibration error > 0.1 | ``ece`` 0.1 |
| Model performance: AUC drops below 0.85 | ``auroc_min`` 0.85, lowered to ``baseline - auroc_drop`` for a model
  whose own reference AUROC is below it (else it would alarm from day one) |
| Fairness: disparity ratio > 1.25 | ``disparity`` 1.25 |
| Infrastructure: P99 latency > 500 ms | ``latency_p99_ms`` 500 |
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Thresholds(BaseModel):
    """Every threshold, window and guard of the detectors (one set per model; ``inputs`` uses the default)."""

    model_config = ConfigDict(extra="forbid")

    # --- data drift: values ---
    psi: float = 0.3
    """Open a data-drift alert when a feature's drift score (max of windowed PSI and SD-normalised Wasserstein
    distance to the reference) reaches this."""
    psi_clear: float = 0.2
    """Resolve it when the drift score falls below this (hysteresis)."""
    psi_window_rows: int = Field(default=8000, ge=100)
    """A feature's value window holds about the values this many stay-hours carry (by its reference measured
    rate): a vital's window then spans as many patient-hours as a lab's, so one patient's autocorrelated
    readings do not dominate it."""
    psi_window_min: int = Field(default=2000, ge=50)
    """Fewest values in a feature's window (rare labs)."""
    psi_window_max: int = Field(default=8000, ge=50)
    psi_every: int = Field(default=200, ge=1)
    """Evaluate PSI every this many new values of a feature."""
    psi_final_min: int = Field(default=1000, ge=10)
    """At the end of a file check, a feature whose window never filled is judged once over all its values if
    it has at least this many. Not fewer: blood gases from a few dozen patients (500 PaCO2 values of 150
    stays in the bundled sample) moved the drift score to 0.43 between two halves of the same hospital."""
    # --- data drift: missingness / ordering patterns ---
    missing_change: float = 0.5
    """Open when the measured rate changes by this share: |cur - ref| / max(cur, ref) (0.5 = halved or doubled)."""
    missing_clear: float = 0.3
    missing_abs_floor: float = 0.002
    """...and by at least this much in absolute terms (share of stay-hours), so noise on rare labs is ignored."""
    missing_expected: int = 600
    """Size each feature's window so the reference would expect this many measurements in it."""
    missing_window_min: int = 2000
    """Stay-hours in the smallest missingness window."""
    missing_window_max: int = 60000
    missing_every: int = Field(default=500, ge=1)
    """Evaluate the measured rate every this many stay-hours."""
    adwin_delta: float = 0.002
    """ADWIN's confidence (River's default); its detections locate change points, effect sizes gate alerts."""
    adwin_block_rows: int = 50
    """The missing-rate stream ADWIN watches is the measured rate per block of this many stay-hours."""
    drift_share: float = 0.25
    """Open an inputs alert when this share of the monitored features has an open drift alert."""
    warmup_rows: int = 0
    """Stay-hours to see before judging inputs (the check command sets it to skip its synthetic admission burst)."""
    # --- predictions ---
    mean_score_shift: float = 0.2
    """Relative shift of the windowed mean score from the baseline."""
    alert_rate_shift: float = 0.5
    """Relative shift of the windowed alert rate from the baseline (wider than the mean: alerts are rarer)."""
    prediction_window: int = Field(default=60000, ge=100)
    """Scores in the window: about 600 h of a 100-bed census. Case mix swings the mean score: on set A split in
    two, windows of 20000 scores moved it by up to 52% from the baseline, 50000 by 20%, 100000 by 10%."""
    prediction_every: int = Field(default=2000, ge=1)
    # --- outcomes (delayed labels) ---
    horizon_hours: float = 6.0
    """A score at t is positive when t >= onset - horizon (PhysioNet's SepsisLabel convention)."""
    auroc_min: float = 0.85
    auroc_drop: float = 0.05
    ece: float = 0.1
    error_rate_increase: float = 0.5
    """An error-rate alert needs DDM/FHDDM to fire and the windowed error rate this much above baseline."""
    performance_window: int = Field(default=50000, ge=100)
    """Labelled predictions in the performance and fairness window."""
    performance_every: int = Field(default=5000, ge=1)
    min_positives: int = 300
    """Minimum positive (and negative) labelled predictions in a window or subgroup before judging it."""
    min_positive_stays: int = 20
    """...and minimum distinct stays among the positives (a septic stay's hours are not independent)."""
    fairness_window: int = Field(default=150000, ge=100)
    """Labelled predictions in the fairness window: per-subgroup sensitivity needs many positive stays per
    subgroup (set A split in two: with 50000 labelled hours, about 15-35 septic stays per age band, and the
    max/min sensitivity ratio wandered up to 2.4 with nothing changed)."""
    fairness_min_positive_stays: int = 40
    """Minimum distinct positive stays in a subgroup before its sensitivity and AUROC are compared."""
    disparity: float = 1.25
    """Fairness: max/min across subgroups of sensitivity or AUROC."""
    fairness_z: float = 3.0
    """A sensitivity disparity counts only when the best and worst subgroups differ by this many standard
    errors (clustered by stay). 3, not 2: the best and worst of up to four subgroups, over three attributes,
    judged again at every evaluation (at 2.0, set A split in two opened an age-band alert at z = 2.56)."""
    disparity_growth: float = 1.25
    """When the reference has its own disparity for a metric and attribute, alert only above
    ``max(disparity, reference_disparity * disparity_growth)``."""
    fairness_attributes: tuple[str, ...] = ("sex", "age_band", "unit")
    # --- infrastructure ---
    latency_p99_ms: float = 500.0
    latency_window: int = Field(default=1000, ge=10)
    latency_every: int = Field(default=100, ge=1)
    latency_min: int = 200
    # --- alert hygiene ---
    open_after: int = Field(default=3, ge=1)
    """Consecutive evaluations beyond the threshold before an alert opens."""
    resolve_after: int = Field(default=3, ge=1)
    """Consecutive evaluations inside the clear level before it resolves."""
    critical_factor: float = 2.0
    """Severity is critical when the value is this many times beyond the threshold (relative to it)."""


def thresholds_for(model: str | None, overrides: dict[str, dict[str, Any]] | None = None) -> Thresholds:
    """The thresholds of ``model``: defaults, then ``overrides['*']``, then ``overrides[model]``."""
    merged: dict[str, Any] = {}
    for key in ("*", model or "inputs"):
        merged.update((overrides or {}).get(key, {}))
    return Thresholds(**merged)


def parse_overrides(text: str) -> dict[str, dict[str, Any]]:
    """Per-model overrides from JSON: ``{"sepsis-hgb": {"psi": 0.25}, "*": {"open_after": 3}}``."""
    raw = json.loads(text) if text.strip() else {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ValueError("thresholds must be a JSON object of objects keyed by model name or '*'")
    for v in raw.values():
        Thresholds(**v)  # fail fast on unknown or bad values
    return raw
