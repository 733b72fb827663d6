"""The training reference stored with a model version (``reference.json`` in the model package).

Drift is judged against what the model was trained on, so the reference travels with the model. Per feature of
the vocabulary it holds:

- the value distribution: inner quantile bin edges and the share of values in each bin (for the population
  stability index, PSI) and a small deterministic sample (for the Wasserstein distance);
- the missing rate (share of stay-hours without a value) and the measurement frequency (readings per stay-hour;
  equal to ``1 - missing_rate`` for hourly binned PhysioNet rows, larger when the EHR sends several per hour);

plus the model's score baseline (mean score and alert rate at its threshold; AUROC and calibration error when
labels are present) when the scores on the reference rows are given.

``build_reference(df, scores=None, threshold=None) -> Reference``; ``Reference.to_json()`` / ``from_json()``;
``Reference.save(path)`` / ``load(path)``. ``df`` is PhysioNet-format rows (one per stay-hour, columns ``HR``,
``Temp``...; canonical names such as ``heart_rate`` are accepted too).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vigil_contracts.vocabulary import MEASUREMENTS

REFERENCE_FORMAT = 1
"""Version of the reference.json layout."""

DEFAULT_BINS = 10
SAMPLE_SIZE = 1000
LABEL_COLUMN = "SepsisLabel"


@dataclass
class FeatureReference:
    """One feature's training distribution and measurement pattern."""

    name: str
    column: str
    n_values: int
    """Measured values in the reference rows."""
    missing_rate: float
    """Share of stay-hours without a value (1.0 for a feature never measured)."""
    measurements_per_stay_hour: float
    """Readings per stay-hour (``1 - missing_rate`` for hourly PhysioNet rows)."""
    bin_edges: list[float] = field(default_factory=list)
    """Inner bin edges (quantiles); bins are (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    proportions: list[float] = field(default_factory=list)
    """Share of reference values in each bin (len(bin_edges) + 1)."""
    sample: list[float] = field(default_factory=list)
    """A deterministic sample of the values, sorted (Wasserstein distance)."""
    mean: float | None = None
    std: float | None = None
    quantiles: dict[str, float] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """True when the reference has values to compare against."""
        return self.n_values > 0 and len(self.proportions) > 0

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        """The bin of each value (vectorised); ties at an edge go to the upper bin, as in the reference."""
        return np.searchsorted(np.asarray(self.bin_edges, dtype=float), values, side="right")


@dataclass
class ScoreBaseline:
    """The model's behaviour on the reference rows."""

    n_scores: int
    mean_score: float
    alert_rate: float | None = None
    threshold: float | None = None
    auroc: float | None = None
    ece: float | None = None
    error_rate: float | None = None
    subgroups: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """attribute -> group -> {positives, negatives, positive_stays, sensitivity, auroc} (labels and a threshold
    needed); the fairness monitor compares live disparity with the disparity the model already had."""
    disparity: dict[str, float] = field(default_factory=dict)
    """``<metric>:<attribute>`` -> max/min ratio over the reference's subgroups."""


@dataclass
class Reference:
    """A model version's training reference."""

    features: dict[str, FeatureReference]
    n_rows: int
    n_stays: int
    scores: ScoreBaseline | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    format: int = REFERENCE_FORMAT
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The JSON form stored as ``reference.json``."""
        return json.dumps(asdict(self), allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Reference:
        """Parse ``to_json``'s output."""
        raw = json.loads(text)
        if raw.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"unsupported reference format {raw.get('format')!r}")
        features = {k: FeatureReference(**v) for k, v in raw["features"].items()}
        scores = ScoreBaseline(**raw["scores"]) if raw.get("scores") else None
        return cls(
            features=features,
            n_rows=raw["n_rows"],
            n_stays=raw["n_stays"],
            scores=scores,
            created_at=raw["created_at"],
            format=raw["format"],
            source=raw.get("source", {}),
        )

    def save(self, path: str | Path) -> Path:
        """Write ``to_json()`` to ``path``."""
        target = Path(path)
        target.write_text(self.to_json())
        return target

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        """Read a reference written by :meth:`save`."""
        return cls.from_json(Path(path).read_text())


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """Inner edges at the reference's quantiles, deduplicated (lab values pile up on a few round numbers)."""
    qs = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(qs)
    # With searchsorted(side="right"), an edge equal to the minimum would leave its lower bin empty by design.
    edges = edges[edges > values.min()]
    return [float(e) for e in edges]


def feature_reference(name: str, column: str, column_values: np.ndarray, bins: int = DEFAULT_BINS) -> FeatureReference:
    """One feature's reference from its column over the stay-hour rows (NaN where not measured)."""
    n_rows = len(column_values)
    values = column_values[np.isfinite(column_values)]
    n = len(values)
    missing = 1.0 - n / n_rows if n_rows else 1.0
    if n == 0:
        return FeatureReference(
            name=name, column=column, n_values=0, missing_rate=missing, measurements_per_stay_hour=0
        )
    edges = _quantile_edges(values, bins)
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"), minlength=len(edges) + 1)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(values, size=min(SAMPLE_SIZE, n), replace=False))
    qs = np.quantile(values, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    return FeatureReference(
        name=name,
        column=column,
        n_values=int(n),
        missing_rate=float(missing),
        measurements_per_stay_hour=float(n / n_rows),
        bin_edges=edges,
        proportions=[float(c) for c in counts / n],
        sample=[float(v) for v in sample],
        mean=_finite(values.mean()),
        std=_finite(values.std()),
        quantiles={k: float(v) for k, v in zip(("p01", "p05", "p25", "p50", "p75", "p95", "p99"), qs, strict=True)},
    )


def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Exact AUROC (Mann-Whitney with midranks for ties); None when a class is absent."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=float)
    sorted_p = np.asarray(p)[order]
    # midranks: average rank within runs of equal scores
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    mid = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(mid, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float | None:
    """ECE over equal-width probability bins (weighted mean |observed rate - mean predicted|)."""
    if len(y) == 0:
        return None
    idx = np.minimum((np.asarray(p) * bins).astype(int), bins - 1)
    n = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=np.asarray(y, dtype=float), minlength=bins)
    used = n > 0
    return float(np.abs(sum_y[used] - sum_p[used]).sum() / len(y))


UNKNOWN = "unknown"
MIN_SUBGROUP_POSITIVE_STAYS = 20


def age_band(age: float | None) -> str:
    """The fairness age band of an age in years."""
    if age is None or not math.isfinite(age):
        return UNKNOWN
    if age < 50:
        return "<50"
    if age < 65:
        return "50-64"
    if age < 80:
        return "65-79"
    return "80+"


def subgroups_of(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Fairness attributes of each PhysioNet row: sex, age band, ICU unit (``unknown`` where not given)."""
    n = len(df)
    sex = np.full(n, UNKNOWN, dtype=object)
    if "Gender" in df.columns:
        g = df["Gender"].to_numpy(dtype=float)
        sex[g > 0.5] = "male"
        sex[g <= 0.5] = "female"
    age = np.full(n, UNKNOWN, dtype=object)
    if "Age" in df.columns:
        age[:] = [age_band(a) for a in df["Age"].to_numpy(dtype=float)]
    unit = np.full(n, UNKNOWN, dtype=object)
    if "Unit1" in df.columns:
        unit[df["Unit1"].to_numpy(dtype=float) == 1] = "MICU"
    if "Unit2" in df.columns:
        unit[df["Unit2"].to_numpy(dtype=float) == 1] = "SICU"
    return {"sex": sex, "age_band": age, "unit": unit}


def subgroup_metrics(
    y: np.ndarray,
    p: np.ndarray,
    alert: np.ndarray,
    values: np.ndarray,
    stays: np.ndarray | None,
    min_positives: int,
    min_positive_stays: int,
) -> dict[str, dict[str, float]]:
    """Per subgroup: counts, sensitivity and AUROC; groups under the count guards get counts only."""
    out: dict[str, dict[str, float]] = {}
    for grp in pd.unique(values):
        if grp == UNKNOWN:
            continue
        m = values == grp
        gy = y[m]
        pos = int(gy.sum())
        neg = int(len(gy) - pos)
        pos_stays = len(pd.unique(stays[m][gy])) if stays is not None else pos
        row: dict[str, float] = {"positives": pos, "negatives": neg, "positive_stays": pos_stays}
        if pos >= min_positives and neg >= min_positives and pos_stays >= min_positive_stays:
            row["sensitivity"] = float(alert[m][gy].mean())
            if stays is not None:
                row["sensitivity_se"] = clustered_se(alert[m][gy].astype(float), stays[m][gy])
            a = auroc(gy, p[m])
            if a is not None:
                row["auroc"] = a
        out[str(grp)] = row
    return out


def clustered_se(x: np.ndarray, clusters: np.ndarray) -> float:
    """Standard error of the mean of ``x`` when its items come in clusters (a stay's hours move together)."""
    codes, _ = pd.factorize(clusters)
    n_i = np.bincount(codes).astype(float)
    s_i = np.bincount(codes, weights=x)
    k = len(n_i)
    if k < 2:
        return float("inf")
    mean = s_i.sum() / n_i.sum()
    return float(np.sqrt(k / (k - 1) * ((s_i - mean * n_i) ** 2).sum()) / n_i.sum())


def disparities(per_attribute: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """``<metric>:<attribute>`` -> max/min over the subgroups that passed the guards (at least two)."""
    out: dict[str, float] = {}
    for attr, groups in per_attribute.items():
        for metric in ("sensitivity", "auroc"):
            vals = [g[metric] for g in groups.values() if metric in g]
            if len(vals) >= 2:
                out[f"{metric}:{attr}"] = max(vals) / max(min(vals), 0.01)
    return out


def build_reference(
    df: pd.DataFrame,
    scores: np.ndarray | None = None,
    threshold: float | None = None,
    *,
    bins: int = DEFAULT_BINS,
) -> Reference:
    """Build a model's training reference from PhysioNet-format stay-hour rows (and its scores on them).

    ``scores`` (one per row, same order) adds the score baseline: mean score, alert rate at ``threshold`` and,
    when the rows carry ``SepsisLabel``, the AUROC, calibration error and error rate of the thresholded alerts.
    """
    features: dict[str, FeatureReference] = {}
    for m in MEASUREMENTS:
        col = m.column if m.column in df.columns else m.name if m.name in df.columns else None
        if col is None:
            continue
        features[m.name] = feature_reference(m.name, m.column, df[col].to_numpy(dtype=float, na_value=np.nan), bins)
    n_stays = int(df["patient_id"].nunique()) if "patient_id" in df.columns else 0
    baseline = None
    if scores is not None:
        s = np.asarray(scores, dtype=float)
        if len(s) != len(df):
            raise ValueError(f"{len(s)} scores for {len(df)} rows")
        baseline = ScoreBaseline(n_scores=len(s), mean_score=float(s.mean()) if len(s) else 0.0, threshold=threshold)
        if threshold is not None:
            baseline.alert_rate = float((s >= threshold).mean())
        if LABEL_COLUMN in df.columns:
            y = df[LABEL_COLUMN].to_numpy(dtype=float) > 0.5
            baseline.auroc = auroc(y, s)
            baseline.ece = expected_calibration_error(y, s)
            if threshold is not None:
                baseline.error_rate = float(((s >= threshold) != y).mean())
                stays = df["patient_id"].to_numpy() if "patient_id" in df.columns else None
                groups = subgroups_of(df)
                baseline.subgroups = {
                    attr: subgroup_metrics(y, s, s >= threshold, values, stays, 100, MIN_SUBGROUP_POSITIVE_STAYS)
                    for attr, values in groups.items()
                    if not (values == UNKNOWN).all()
                }
                baseline.disparity = disparities(baseline.subgroups)
    return Reference(
        features=features,
        n_rows=len(df),
        n_stays=n_stays,
        scores=baseline,
        source={"bins": bins, "columns": "physionet2019"},
    )
