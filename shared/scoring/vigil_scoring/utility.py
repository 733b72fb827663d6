"""The PhysioNet/CinC Challenge 2019 utility score, as its evaluate_sepsis_score.py defines it.

Per stay with sepsis, t_sepsis = (first row labelled 1) - dt_optimal, counted in rows of the stay. A positive
prediction at row t earns, for t <= t_sepsis + dt_optimal, max(m1 (t - t_sepsis) + b1, u_fp) (rising linearly
from 0 at dt_early to max_u_tp at dt_optimal; earlier alarms cost u_fp), then falls linearly to 0 at dt_late; a
missed row after t_sepsis + dt_optimal costs down to min_u_fn at dt_late; rows after t_sepsis + dt_late count 0.
A positive on a stay without sepsis costs u_fp per row. The cohort's utility is normalised between the inaction
policy (never alarm: 0) and the best policy (alarm exactly from t_sepsis + dt_early to t_sepsis + dt_late): 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DT_EARLY, DT_OPTIMAL, DT_LATE = -12, -6, 3
MAX_U_TP, MIN_U_FN, U_FP, U_TN = 1.0, -2.0, -0.05, 0.0


def _slopes() -> tuple[float, float, float, float, float, float]:
    m1 = MAX_U_TP / (DT_OPTIMAL - DT_EARLY)
    b1 = -m1 * DT_EARLY
    m2 = -MAX_U_TP / (DT_LATE - DT_OPTIMAL)
    b2 = -m2 * DT_LATE
    m3 = MIN_U_FN / (DT_LATE - DT_OPTIMAL)
    b3 = -m3 * DT_OPTIMAL
    return m1, b1, m2, b2, m3, b3


def stay_positions(stay_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row position within each stay (0-based) and each stay's start row, for rows grouped by stay."""
    n = len(stay_codes)
    new = np.r_[True, stay_codes[1:] != stay_codes[:-1]] if n else np.zeros(0, bool)
    starts = np.flatnonzero(new)
    start_of_row = starts[np.cumsum(new) - 1] if n else np.zeros(0, int)
    return np.arange(n) - start_of_row, starts


def row_utilities(stay_codes: np.ndarray, labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Utility of each row (rows grouped by stay, in time order): the challenge's per-row u[t]."""
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(predictions).astype(bool)
    t, starts = stay_positions(stay_codes)
    stay_index = np.cumsum(np.r_[True, stay_codes[1:] != stay_codes[:-1]]) - 1 if len(t) else np.zeros(0, int)
    n_stays = len(starts)
    # First labelled row per stay (position), +inf when the stay never has sepsis.
    first = np.full(n_stays, np.inf)
    pos_rows = np.flatnonzero(labels)
    np.minimum.at(first, stay_index[pos_rows], t[pos_rows].astype(float))
    septic = np.isfinite(first)[stay_index]
    t_sepsis = (first - DT_OPTIMAL)[stay_index]
    m1, b1, m2, b2, m3, b3 = _slopes()
    u = np.zeros(len(t))
    d = t - np.where(septic, t_sepsis, 0.0)
    in_horizon = ~septic | (d <= DT_LATE)
    early = d <= DT_OPTIMAL
    tp = septic & pred & in_horizon
    u[tp & early] = np.maximum(m1 * d[tp & early] + b1, U_FP)
    u[tp & ~early] = m2 * d[tp & ~early] + b2
    u[~septic & pred] = U_FP
    fn_late = septic & ~pred & in_horizon & ~early
    u[fn_late] = m3 * d[fn_late] + b3
    u[~septic & ~pred] = U_TN
    return u


def best_predictions(stay_codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The best policy: alarm from t_sepsis + dt_early to t_sepsis + dt_late on septic stays, never otherwise."""
    labels = np.asarray(labels).astype(bool)
    t, starts = stay_positions(stay_codes)
    stay_index = np.cumsum(np.r_[True, stay_codes[1:] != stay_codes[:-1]]) - 1 if len(t) else np.zeros(0, int)
    first = np.full(len(starts), np.inf)
    pos_rows = np.flatnonzero(labels)
    np.minimum.at(first, stay_index[pos_rows], t[pos_rows].astype(float))
    ts = (first - DT_OPTIMAL)[stay_index]
    result: np.ndarray = np.isfinite(ts) & (t >= ts + DT_EARLY) & (t <= ts + DT_LATE)
    return result


@dataclass(frozen=True)
class StayUtilities:
    """Per-stay observed, best and inaction utilities (sums over the stay's rows): bootstrap by resampling stays."""

    observed: np.ndarray
    best: np.ndarray
    inaction: np.ndarray

    def normalized(self, idx: np.ndarray | None = None) -> float:
        """The normalised utility of all stays (or of the stays at ``idx``, repeats allowed)."""
        o, b, i = (
            (self.observed, self.best, self.inaction)
            if idx is None
            else (
                self.observed[idx],
                self.best[idx],
                self.inaction[idx],
            )
        )
        denom = float(b.sum() - i.sum())
        return float((o.sum() - i.sum()) / denom) if denom != 0 else float("nan")


def stay_utilities(stay_codes: np.ndarray, labels: np.ndarray, predictions: np.ndarray) -> StayUtilities:
    """Observed, best and inaction utility per stay (rows grouped by stay, in time order)."""
    _, starts = stay_positions(stay_codes)

    def per_stay(u: np.ndarray) -> np.ndarray:
        return np.add.reduceat(u, starts) if len(u) else np.zeros(0)

    zeros = np.zeros(len(labels), dtype=bool)
    return StayUtilities(
        observed=per_stay(row_utilities(stay_codes, labels, predictions)),
        best=per_stay(row_utilities(stay_codes, labels, best_predictions(stay_codes, labels))),
        inaction=per_stay(row_utilities(stay_codes, labels, zeros)),
    )


def normalized_utility(stay_codes: np.ndarray, labels: np.ndarray, predictions: np.ndarray) -> float:
    """The challenge's normalised utility score of binary predictions (rows grouped by stay, in time order)."""
    return stay_utilities(stay_codes, labels, predictions).normalized()
