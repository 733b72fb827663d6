"""A candidate judged against live on the same encounter-hours.

The metrics a review board and the promotion policy read, and the
:class:`~vigil_contracts.events.ComparisonSummarized` event that carries them.

Which rows count:

- *scored* rows: encounter-hours (in the window, by data time) that both the candidate and live scored;
- *labelled* rows: scored rows whose encounter has an outcome (censored encounters are left out).

Agreement, alert rates and alerts per 100 patient-days use the scored rows (alert burden needs no outcome);
AUROC, utility, sensitivity, PPV, calibration and subgroup performance use the labelled rows. Each encounter-hour
stands for one hour of patient time, so patient-days = rows / 24.

Keys the registry's policy reads (docs/registry.md): ``metrics["auroc_diff"] = {"estimate", "ci_low",
"ci_high"}``, ``metrics["candidate"]["ece"]``, ``metrics["candidate"]["disparity_ratio"]`` (also
``metrics["disparity_ratio"]``) and ``metrics["alert_rate_ratio"]``. Undefined values (an AUROC with one class,
a ratio over zero) are ``null``: the policy fails closed on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from vigil_contracts.events import ComparisonSummarized, deterministic_id, utcnow
from vigil_shadow import stats
from vigil_shadow.join import Attributes, Joined, JoinState

AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("18-44", -math.inf, 45.0),
    ("45-64", 45.0, 65.0),
    ("65-79", 65.0, 80.0),
    ("80+", 80.0, math.inf),
)
UNKNOWN = "unknown"


@dataclass(frozen=True)
class CompareConfig:
    """How comparisons are computed (from the service's settings, or replay's options)."""

    horizon_hours: float = 6.0
    bootstrap_iterations: int = 200
    bootstrap_seed: int = 2019
    ci_level: float = 0.95
    calibration_bins: int = 10
    min_subgroup_positives: int = 10

    @classmethod
    def from_settings(cls, settings: Any) -> CompareConfig:
        """Read the same-named settings fields."""
        return cls(**{f: getattr(settings, f) for f in cls.__dataclass_fields__})


@dataclass
class Comparison:
    """One candidate's comparison; ``metrics`` is what the event carries, ``plots`` what the report draws."""

    model_name: str
    candidate_version: str
    live_version: str
    window_start: datetime | None
    window_end: datetime | None
    shadow_hours: float
    scored_hours: int
    labelled_hours: int
    labelled_encounters: int
    positive_encounters: int
    metrics: dict[str, Any]
    plots: dict[str, Any] = field(default_factory=dict)

    def event_id(self) -> str:
        """Deterministic: the same window and the same evidence give the same id."""
        return deterministic_id(
            "comparison",
            self.model_name,
            self.candidate_version,
            self.live_version,
            self.window_start.isoformat() if self.window_start else None,
            self.window_end.isoformat() if self.window_end else None,
            self.scored_hours,
            self.labelled_hours,
        )

    def to_event(self, occurred_at: datetime | None = None) -> ComparisonSummarized:
        """The event published to the comparisons topic (keyed by model name)."""
        return ComparisonSummarized(
            event_id=self.event_id(),
            occurred_at=occurred_at or utcnow(),
            key=self.model_name,
            model_name=self.model_name,
            candidate_version=self.candidate_version,
            live_version=self.live_version,
            window_start=self.window_start,
            window_end=self.window_end,
            shadow_hours=self.shadow_hours,
            scored_hours=self.scored_hours,
            labelled_hours=self.labelled_hours,
            labelled_encounters=self.labelled_encounters,
            positive_encounters=self.positive_encounters,
            metrics=self.metrics,
        )

    def summary(self) -> dict[str, Any]:
        """The event's fields as JSON-ready data (without plots)."""
        return self.to_event(occurred_at=datetime(1970, 1, 1, tzinfo=UTC)).model_dump(
            mode="json", exclude={"occurred_at", "schema_version", "type", "key"}
        )


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ratio(a: float, b: float) -> float:
    if b == 0 or not math.isfinite(a) or not math.isfinite(b):
        return float("nan")
    return a / b


def _confusion(alert: np.ndarray, y: np.ndarray) -> dict[str, float]:
    positive = y == 1
    tp = int(np.sum(alert & positive))
    fp = int(np.sum(alert & ~positive))
    fn = int(np.sum(~alert & positive))
    tn = int(np.sum(~alert & ~positive))
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
    }


def _model_block(
    version: str,
    threshold: float,
    p_scored: np.ndarray,
    alert_scored: np.ndarray,
    p_lab: np.ndarray,
    alert_lab: np.ndarray,
    y: np.ndarray,
    bins: int,
) -> dict[str, Any]:
    scored = len(p_scored)
    patient_days = scored / 24.0
    block: dict[str, Any] = {
        "version": version,
        "threshold": threshold,
        "scored_hours": scored,
        "labelled_hours": len(p_lab),
        "alerts": int(alert_scored.sum()),
        "alert_rate": _ratio(float(alert_scored.sum()), scored),
        "alerts_per_100_patient_days": _ratio(float(alert_scored.sum()) * 100.0, patient_days),
        "mean_probability": float(p_scored.mean()) if scored else float("nan"),
        "auroc": stats.auroc(p_lab, y),
        "ece": stats.ece(p_lab, y, bins),
        "labelled_alert_rate": _ratio(float(alert_lab.sum()), len(alert_lab)),
    }
    block.update(_confusion(alert_lab, y))
    return block


def _subgroup_of(attrs: Attributes) -> dict[str, str]:
    sex = UNKNOWN if attrs.sex is None else ("male" if attrs.sex >= 0.5 else "female")
    age = UNKNOWN
    if attrs.age is not None:
        age = next(name for name, lo, hi in AGE_BANDS if lo <= attrs.age < hi)
    return {"sex": sex, "age_band": age, "unit": attrs.unit or UNKNOWN}


def _subgroups(
    j: Joined, lab: np.ndarray, min_positives: int
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Per attribute and group: each model's performance; and each model's disparity summary."""
    groups_of = [_subgroup_of(a) for a in j.attributes]
    y = j.label[lab]
    enc = j.enc[lab]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    disparity: dict[str, dict[str, Any]] = {"live": {}, "candidate": {}}
    for attribute in ("sex", "age_band", "unit"):
        names = np.array([g[attribute] for g in groups_of], dtype=object)
        row_group = names[enc] if len(enc) else np.array([], dtype=object)
        table: dict[str, dict[str, Any]] = {}
        for group in sorted(set(names.tolist())):
            m = row_group == group
            if not m.any():
                continue
            entry: dict[str, Any] = {
                "hours": int(m.sum()),
                "positives": int(y[m].sum()),
                "encounters": len(set(enc[m].tolist())),
            }
            for who, p, a in (
                ("live", j.p_live[lab], j.alert_live[lab]),
                ("candidate", j.p_cand[lab], j.alert_cand[lab]),
            ):
                c = _confusion(a[m], y[m])
                entry[who] = {
                    "sensitivity": c["sensitivity"],
                    "ppv": c["ppv"],
                    "alert_rate": _ratio(float(a[m].sum()), int(m.sum())),
                    "auroc": stats.auroc(p[m], y[m]),
                }
            table[group] = entry
        out[attribute] = table
        # The disparity ratio compares how many septic stays each group has detected (the article: "does the model
        # systematically under-flag certain populations?"). Stay-level detection, with a floor of septic stays
        # per group, is what a small cohort can support; hourly sensitivity swings with one stay's length.
        for who, alert in (("live", j.alert_live[lab]), ("candidate", j.alert_cand[lab])):
            eligible = {}
            for g, e in table.items():
                m = (row_group == g) & (y == 1)
                septic = set(enc[m].tolist())
                e["septic_encounters"] = len(septic)
                if g == UNKNOWN or len(septic) < min_positives:
                    continue
                detected = set(enc[m & alert].tolist())
                e[who]["stay_sensitivity"] = len(detected) / len(septic)
                eligible[g] = e[who]["stay_sensitivity"]
            ratio = float("nan")
            if len(eligible) >= 2:
                worst, best = min(eligible.values()), max(eligible.values())
                ratio = best / worst if worst > 0 else float("inf")
            disparity[who][attribute] = {"ratio": ratio, "groups": sorted(eligible)}
    return out, disparity


def _overall_disparity(per_attribute: dict[str, Any]) -> float:
    """The worst attribute's best-to-worst ratio of detected septic stays (NaN when no attribute has two groups)."""
    ratios = [v["ratio"] for v in per_attribute.values() if not math.isnan(v["ratio"])]
    return max(ratios) if ratios else float("nan")


def _hist(p: np.ndarray, edges: np.ndarray) -> list[int]:
    counts: list[int] = np.histogram(p, bins=edges)[0].astype(int).tolist()
    return counts


def _plots(j: Joined, lab: np.ndarray, bins: int) -> dict[str, Any]:
    y = j.label[lab]
    # Risk models for rare outcomes score mostly near 0: bins span the observed range, not [0, 1].
    top = max([float(j.p_live.max()), float(j.p_cand.max()), j.threshold_live, j.threshold_cand]) if len(j) else 1.0
    edges = np.linspace(0.0, min(1.0, top * 1.05) if top > 0 else 1.0, 31)
    plots: dict[str, Any] = {
        "roc": {},
        "calibration": {},
        "distribution": {"edges": edges.tolist()},
        "timeline": {},
        "thresholds": {"live": j.threshold_live, "candidate": j.threshold_cand},
    }
    for who, p, a in (("live", j.p_live, j.alert_live), ("candidate", j.p_cand, j.alert_cand)):
        plots["roc"][who] = stats.roc_points(p[lab], y)
        plots["calibration"][who] = stats.calibration_curve(p[lab], y, bins)
        plots["distribution"][who] = {
            "positive": _hist(p[lab][y == 1], edges),
            "negative": _hist(p[lab][y == 0], edges),
            "censored": _hist(p[~lab], edges),
        }
        if len(j.data_time):
            hours = j.data_time.astype("datetime64[h]")
            start = hours.min()
            offset = (hours - start).astype(int)
            per_hour = np.bincount(offset, weights=a.astype(float), minlength=int(offset.max()) + 1)
            plots["timeline"][who] = {"start": str(start), "alerts_per_hour": per_hour.astype(int).tolist()}
    return plots


def _lead_times(j: Joined, state: JoinState, lab: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per model: hours from a septic stay's first alert to its onset (alerts at or after onset do not count).

    The console's alert-burden panel shows it: an alert only helps a clinician if it comes before onset.
    """
    out: dict[str, dict[str, Any]] = {}
    septic = [e for e in sorted(set(j.enc[lab].tolist())) if j.septic[e]]
    for who, alert in (("live", j.alert_live), ("candidate", j.alert_cand)):
        leads: list[float] = []
        for e in septic:
            onset = state.outcomes[j.encounters[e]].sepsis_onset
            if onset is None:
                continue
            onset64 = np.datetime64(onset.replace(tzinfo=None), "us")
            early = (j.enc == e) & alert & (j.data_time < onset64)
            if early.any():
                leads.append(float((onset64 - j.data_time[early].min()) / np.timedelta64(1, "h")))
        out[who] = {
            "septic_stays": len(septic),
            "detected_before_onset": len(leads),
            "median_hours": float(np.median(leads)) if leads else float("nan"),
        }
    return out


def _curves(j: Joined, lab: np.ndarray, bins: int) -> dict[str, Any]:
    """Thinned ROC and reliability curves on the labelled rows, small enough to travel in the event."""
    y = j.label[lab]
    return {
        "roc": {
            who: stats.roc_points(p[lab], y, max_points=40) for who, p in (("live", j.p_live), ("candidate", j.p_cand))
        },
        "calibration": {
            who: stats.calibration_curve(p[lab], y, bins) for who, p in (("live", j.p_live), ("candidate", j.p_cand))
        },
    }


def compare(
    state: JoinState,
    model_name: str,
    version: str,
    *,
    config: CompareConfig | None = None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    with_plots: bool = False,
) -> Comparison:
    """Compare one candidate with live over ``[window_start, window_end)`` of data time."""
    config = config or CompareConfig()
    state.horizon = timedelta(hours=config.horizon_hours)
    j = state.joined(model_name, version, window_start=window_start, window_end=window_end)
    lab = j.labelled
    y = j.label[lab]
    enc_lab = j.enc[lab]
    labelled_encounters = sorted(set(enc_lab.tolist()))
    live_version = _mode(j, state)
    live = _model_block(
        live_version,
        j.threshold_live,
        j.p_live,
        j.alert_live,
        j.p_live[lab],
        j.alert_live[lab],
        y,
        config.calibration_bins,
    )
    cand = _model_block(
        version, j.threshold_cand, j.p_cand, j.alert_cand, j.p_cand[lab], j.alert_cand[lab], y, config.calibration_bins
    )
    # Utility and the bootstrap work on encounters re-indexed to the labelled ones.
    remap = {e: i for i, e in enumerate(labelled_encounters)}
    enc_idx = np.fromiter((remap[e] for e in enc_lab.tolist()), dtype=np.int64, count=len(enc_lab))
    n_enc = len(labelled_encounters)
    observed, best, inaction = stats.stay_utilities(
        enc_idx, y, {"live": j.alert_live[lab], "candidate": j.alert_cand[lab]}, n_enc
    )
    live["utility"] = stats.normalized_utility(observed["live"], best, inaction)
    cand["utility"] = stats.normalized_utility(observed["candidate"], best, inaction)
    ranked_live = stats.RankedScores.of(j.p_live[lab], y)
    ranked_cand = stats.RankedScores.of(j.p_cand[lab], y)
    auroc_diffs = np.full(config.bootstrap_iterations, np.nan)
    utility_diffs = np.full(config.bootstrap_iterations, np.nan)
    if n_enc and config.bootstrap_iterations:
        multiplicity = stats.resamples(n_enc, config.bootstrap_iterations, config.bootstrap_seed)
        for b, m in enumerate(multiplicity):
            w = m[enc_idx]
            auroc_diffs[b] = ranked_cand.auroc(w) - ranked_live.auroc(w)
            utility_diffs[b] = stats.normalized_utility(
                observed["candidate"], best, inaction, m
            ) - stats.normalized_utility(observed["live"], best, inaction, m)
    subgroups, disparity = _subgroups(j, lab, config.min_subgroup_positives)
    live["disparity"] = disparity["live"]
    cand["disparity"] = disparity["candidate"]
    live["disparity_ratio"] = _overall_disparity(disparity["live"])
    cand["disparity_ratio"] = _overall_disparity(disparity["candidate"])
    metrics: dict[str, Any] = {
        "live": live,
        "candidate": cand,
        "auroc_diff": _diff(cand["auroc"] - live["auroc"], auroc_diffs, config.ci_level),
        "utility_diff": _diff(cand["utility"] - live["utility"], utility_diffs, config.ci_level),
        "agreement": _ratio(float(np.sum(j.alert_live == j.alert_cand)), len(j)),
        "alert_rate_diff": cand["alert_rate"] - live["alert_rate"],
        "alert_rate_ratio": _ratio(cand["alert_rate"], live["alert_rate"]),
        "disparity_ratio": cand["disparity_ratio"],
        "subgroups": subgroups,
        "live_versions": j.live_versions,
        "labelling": {"horizon_hours": config.horizon_hours, "censored_hours": int((~lab).sum())},
        "bootstrap": {
            "unit": "encounter",
            "paired": True,
            "iterations": config.bootstrap_iterations,
            "seed": config.bootstrap_seed,
            "level": config.ci_level,
        },
        "positive_hours": int(y.sum()),
        # What a reviewer's plots need (ROC, reliability, lead time), carried in the event so the registry
        # holds the evidence an approver saw, not only its summary numbers.
        "curves": _curves(j, lab, config.calibration_bins),
        "lead_time": _lead_times(j, state, lab),
    }
    span = 0.0
    if len(j.data_time):
        span = float((j.data_time.max() - j.data_time.min()) / np.timedelta64(1, "h"))
    return Comparison(
        model_name=model_name,
        candidate_version=version,
        live_version=live_version,
        window_start=window_start,
        window_end=window_end,
        shadow_hours=span,
        scored_hours=len(j),
        labelled_hours=int(lab.sum()),
        labelled_encounters=n_enc,
        positive_encounters=int(sum(bool(j.septic[e]) for e in labelled_encounters)),
        metrics=clean(metrics),
        plots=clean(_plots(j, lab, config.calibration_bins)) if with_plots else {},
    )


def _diff(estimate: float, resampled: np.ndarray, level: float) -> dict[str, float]:
    low, high = stats.interval(resampled, level)
    return {"estimate": estimate, "ci_low": low, "ci_high": high}


def _mode(j: Joined, state: JoinState) -> str:
    """The live version that scored most of the joint rows (normally the only one)."""
    if not j.live_versions:
        return ""
    if len(j.live_versions) == 1:
        return j.live_versions[0]
    table = state.live.get(j.model_name, {})
    counts: dict[str, int] = {}
    for e, h in zip(j.enc.tolist(), j.hour.tolist(), strict=True):
        v = table[(j.encounters[e], h)].version
        counts[v] = counts.get(v, 0) + 1
    return max(sorted(counts), key=lambda v: counts[v])


def compare_all(
    state: JoinState,
    *,
    config: CompareConfig | None = None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    with_plots: bool = False,
    candidates: list[tuple[str, str]] | None = None,
) -> list[Comparison]:
    """Every candidate (or the given ones) against live."""
    return [
        compare(
            state, name, version, config=config, window_start=window_start, window_end=window_end, with_plots=with_plots
        )
        for name, version in (candidates if candidates is not None else state.candidates())
    ]
