"""Statistics of the comparison.

AUROC (weighted, for the bootstrap), calibration, the challenge's utility, and the paired bootstrap over encounters.

The paired bootstrap resamples encounters with replacement (hours of one stay are not independent) and computes
both models on the same resample, so the CI is that of the difference. A resample is a vector of multiplicities,
one per encounter; every row of an encounter gets its multiplicity as a weight, so AUROC and utility are computed
once per resample in O(rows) after one sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vigil_scoring.utility import stay_utilities as ml_stay_utilities


def stay_utilities(
    enc: np.ndarray, label: np.ndarray, alerts: dict[str, np.ndarray], n_encounters: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per-encounter utility of each model's alerts, of the best predictions and of inaction.

    The challenge's utility as the model work implements it (:mod:`vigil_scoring.utility`): one implementation for
    offline evaluation and for shadow comparisons. Rows must be sorted by encounter then time, and ``enc`` must
    number the encounters 0..n-1 in that order; each encounter's rows are its sequence.
    """
    if len(enc) == 0:
        return {name: np.zeros(n_encounters) for name in alerts}, np.zeros(n_encounters), np.zeros(n_encounters)
    observed = {}
    best = inaction = np.zeros(n_encounters)
    for name, a in alerts.items():
        per_stay = ml_stay_utilities(enc, label.astype(bool), a.astype(bool))
        observed[name] = per_stay.observed
        best, inaction = per_stay.best, per_stay.inaction
    return observed, best, inaction


def normalized_utility(
    observed: np.ndarray, best: np.ndarray, inaction: np.ndarray, w: np.ndarray | None = None
) -> float:
    """(observed - inaction) / (best - inaction), summed over stays (weighted by multiplicity)."""
    w = np.ones_like(observed) if w is None else w
    denominator = float(np.dot(w, best - inaction))
    if denominator == 0:
        return float("nan")
    return float(np.dot(w, observed - inaction)) / denominator


@dataclass(frozen=True)
class RankedScores:
    """Scores grouped into tie groups once, so AUROC under any row weights is O(rows)."""

    group: np.ndarray
    n_groups: int
    y: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray, y: np.ndarray) -> RankedScores:
        """Rank the scores (ties share a group)."""
        _, inverse = np.unique(scores, return_inverse=True)
        return cls(group=inverse.ravel(), n_groups=int(inverse.max()) + 1 if len(inverse) else 0, y=y.astype(float))

    def auroc(self, w: np.ndarray | None = None) -> float:
        """Weighted Mann-Whitney AUROC (ties count one half); NaN when a class is absent."""
        w = np.ones_like(self.y) if w is None else w
        pos = np.bincount(self.group, weights=w * self.y, minlength=self.n_groups)
        neg = np.bincount(self.group, weights=w * (1.0 - self.y), minlength=self.n_groups)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos <= 0 or total_neg <= 0:
            return float("nan")
        below = np.cumsum(neg) - neg
        return float(np.dot(pos, below + 0.5 * neg) / (total_pos * total_neg))


def auroc(scores: np.ndarray, y: np.ndarray) -> float:
    """AUROC of scores against binary labels (NaN when a class is absent)."""
    return RankedScores.of(np.asarray(scores, float), np.asarray(y, float)).auroc()


def ece(probabilities: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins (NaN when there are no rows)."""
    p = np.asarray(probabilities, float)
    if len(p) == 0:
        return float("nan")
    index = np.clip((p * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=np.asarray(y, float), minlength=bins)
    filled = counts > 0
    return float(np.sum(np.abs(sum_p[filled] - sum_y[filled])) / len(p))


def calibration_curve(probabilities: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Reliability curve over equal-count bins (mean predicted probability, observed rate, count per bin).

    Equal-count bins, unlike the equal-width bins of :func:`ece`, stay informative when a rare outcome's scores
    crowd near 0.
    """
    p = np.asarray(probabilities, float)
    yy = np.asarray(y, float)
    if len(p) == 0:
        return []
    order = np.argsort(p, kind="stable")
    out = []
    for b, chunk in enumerate(np.array_split(order, min(bins, len(p)))):
        if len(chunk):
            out.append({"bin": b, "mean_p": float(p[chunk].mean()), "rate": float(yy[chunk].mean()), "n": len(chunk)})
    return out


def roc_points(scores: np.ndarray, y: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """A thinned ROC curve (false and true positive rates) for plots."""
    scores = np.asarray(scores, float)
    y = np.asarray(y, float)
    if len(scores) == 0 or y.min() == y.max():
        return {"fpr": [], "tpr": []}
    order = np.argsort(-scores, kind="stable")
    s, yy = scores[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(yy)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / yy.sum()]
    fpr = np.r_[0.0, fps / (len(yy) - yy.sum())]
    if len(tpr) > max_points:
        keep = np.unique(np.linspace(0, len(tpr) - 1, max_points).astype(int))
        tpr, fpr = tpr[keep], fpr[keep]
    return {"fpr": [round(float(v), 6) for v in fpr], "tpr": [round(float(v), 6) for v in tpr]}


def interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of finite bootstrap values (NaN, NaN when there are none)."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(finite, alpha)), float(np.quantile(finite, 1.0 - alpha))


def resamples(n_encounters: int, iterations: int, seed: int) -> np.ndarray:
    """Encounter multiplicities of each bootstrap resample, shape (iterations, n_encounters); seeded."""
    rng = np.random.default_rng(seed)
    draws = (
        rng.integers(0, n_encounters, size=(iterations, n_encounters))
        if n_encounters
        else np.zeros((iterations, 0), int)
    )
    out = np.zeros((iterations, n_encounters))
    for i in range(iterations):
        out[i] = np.bincount(draws[i], minlength=n_encounters)
    return out
