"""Statistical validation: metrics with stay-level bootstrap CIs, and subgroup tables.

Discrimination, the challenge's utility, operating-point, timing and calibration metrics with stay-level
(cluster) bootstrap 95% confidence intervals, and subgroup tables with disparity ratios.

Rows must be grouped by stay in time order. Bootstrap replicates resample stays with replacement (rows of a stay
are not independent); a replicate is a vector of stay multiplicities, so row-level metrics become weighted ones
computed without re-sorting (one sort per score).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vigil_scoring.utility import DT_OPTIMAL, best_predictions, row_utilities

CALIBRATION_BINS = 10


@dataclass
class Cohort:
    """Stay structure and labels of a frame of PhysioNet rows (grouped by stay, in time order)."""

    stay: np.ndarray
    """Stay index (0..S-1) of each row."""
    y: np.ndarray
    pos: np.ndarray
    """Row position within its stay (the challenge's time index)."""
    starts: np.ndarray
    lengths: np.ndarray
    septic: np.ndarray
    """Per stay: ever labelled septic."""
    t_sepsis: np.ndarray
    """Per stay: first labelled position + 6 (the challenge's t_sepsis); inf when never septic."""
    best_u: np.ndarray
    inaction_u: np.ndarray

    @property
    def n_stays(self) -> int:
        """Number of stays."""
        return len(self.starts)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> Cohort:
        """Build from rows with patient_id, hour, SepsisLabel (grouped by patient, sorted by hour)."""
        codes = pd.factorize(df["patient_id"], sort=False)[0]
        new = np.r_[True, np.diff(codes) != 0]
        if int(new.sum()) != len(np.unique(codes)):
            raise ValueError("rows must be grouped by stay (sorted by patient_id, hour)")
        stay = np.cumsum(new) - 1
        starts = np.flatnonzero(new)
        lengths = np.diff(np.r_[starts, len(codes)])
        pos = np.arange(len(codes)) - starts[stay]
        y = df["SepsisLabel"].to_numpy().astype(bool)
        first = np.full(len(starts), np.inf)
        np.minimum.at(first, stay[y], pos[y].astype(float))
        best = best_predictions(codes, y)
        zeros = np.zeros(len(y), dtype=bool)
        return cls(
            stay=stay,
            y=y,
            pos=pos,
            starts=starts,
            lengths=lengths,
            septic=np.isfinite(first),
            t_sepsis=first - DT_OPTIMAL,
            best_u=np.add.reduceat(row_utilities(codes, y, best), starts),
            inaction_u=np.add.reduceat(row_utilities(codes, y, zeros), starts),
        )


def _ranked(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending order of the scores and the index (in that order) of the last row of each tie group."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    return order, ends


def _auc_ap(y_sorted: np.ndarray, w_sorted: np.ndarray, ends: np.ndarray) -> tuple[float, float]:
    """Weighted AUROC (ties count one half) and average precision, from rows sorted by descending score."""
    tp = np.cumsum(w_sorted * y_sorted)[ends]
    fp = np.cumsum(w_sorted * ~y_sorted)[ends]
    p, n = tp[-1], fp[-1]
    if p == 0 or n == 0:
        return float("nan"), float("nan")
    tpr = np.r_[0.0, tp / p]
    fpr = np.r_[0.0, fp / n]
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    precision = tp / np.maximum(tp + fp, 1e-300)
    ap = float(np.sum(np.diff(np.r_[0.0, tp]) / p * precision))
    return auroc, ap


def _calibration(p: np.ndarray, y: np.ndarray, w: np.ndarray, edges: np.ndarray) -> tuple[float, float, float]:
    """ECE over fixed probability bins, and calibration intercept and slope (logistic fit of y on logit p)."""
    b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    wsum = np.bincount(b, weights=w, minlength=len(edges) - 1)
    psum = np.bincount(b, weights=w * p, minlength=len(edges) - 1)
    ysum = np.bincount(b, weights=w * y, minlength=len(edges) - 1)
    tot = wsum.sum()
    nz = wsum > 0
    ece = float(np.sum(np.abs(psum[nz] - ysum[nz])) / tot) if tot > 0 else float("nan")
    x = np.log(np.clip(p, 1e-7, 1 - 1e-7) / (1 - np.clip(p, 1e-7, 1 - 1e-7)))
    a, s = 0.0, 1.0
    for _ in range(25):  # Newton-Raphson on the weighted log-likelihood of (a, s)
        eta = a + s * x
        mu = 1 / (1 + np.exp(-np.clip(eta, -500, 500)))
        r = w * (y - mu)
        v = w * mu * (1 - mu)
        g = np.array([r.sum(), (r * x).sum()])
        h = np.array([[v.sum(), (v * x).sum()], [(v * x).sum(), (v * x * x).sum()]])
        try:
            step = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            return ece, float("nan"), float("nan")
        a, s = a + step[0], s + step[1]
        if np.max(np.abs(step)) < 1e-8:
            break
    return ece, float(a), float(s)


@dataclass
class _StayStats:
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray
    onsets: np.ndarray
    observed_u: np.ndarray
    detected: np.ndarray
    lead: np.ndarray
    any_alert: np.ndarray


def _stay_stats(c: Cohort, alert: np.ndarray) -> _StayStats:
    def per(x: np.ndarray) -> np.ndarray:
        return np.add.reduceat(x.astype(float), c.starts)

    prev = np.r_[False, alert[:-1]]
    onset = alert & ((c.pos == 0) | ~prev)
    first_alert = np.full(c.n_stays, np.inf)
    np.minimum.at(first_alert, c.stay[alert], c.pos[alert].astype(float))
    detected = c.septic & (first_alert <= c.t_sepsis)
    codes = c.stay
    return _StayStats(
        tp=per(alert & c.y),
        fp=per(alert & ~c.y),
        fn=per(~alert & c.y),
        tn=per(~alert & ~c.y),
        onsets=per(onset),
        observed_u=np.add.reduceat(row_utilities(codes, c.y, alert), c.starts),
        detected=detected,
        lead=np.where(detected, c.t_sepsis - np.where(detected, first_alert, 0.0), np.nan),
        any_alert=np.isfinite(first_alert),
    )


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def _point(c: Cohort, st: _StayStats, m: np.ndarray, auroc: float, auprc: float, cal: tuple[float, float, float]):
    """Metrics for stay multiplicities m (1 for the point estimate)."""
    tp, fp, fn, tn = (float(np.dot(m, x)) for x in (st.tp, st.fp, st.fn, st.tn))
    rows = float(np.dot(m, c.lengths))
    septic_n = float(np.dot(m, c.septic))
    lead_vals = np.repeat(st.lead[st.detected], m[st.detected].astype(int))
    denom_u = float(np.dot(m, c.best_u) - np.dot(m, c.inaction_u))
    non_septic = float(np.dot(m, ~c.septic))
    return {
        "auroc": auroc,
        "auprc": auprc,
        "utility": _ratio(float(np.dot(m, st.observed_u) - np.dot(m, c.inaction_u)), denom_u),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "stay_detection_rate": _ratio(float(np.dot(m, st.detected)), septic_n),
        "stay_false_alarm_rate": _ratio(float(np.dot(m, st.any_alert & ~c.septic)), non_septic),
        "alerts_per_100_patient_days": _ratio(float(np.dot(m, st.onsets)) * 100.0, rows / 24.0),
        "median_lead_time_hours": float(np.median(lead_vals)) if len(lead_vals) else float("nan"),
        "ece": cal[0],
        "calibration_intercept": cal[1],
        "calibration_slope": cal[2],
    }


METRIC_NAMES: tuple[str, ...] = (
    "auroc",
    "auprc",
    "utility",
    "sensitivity",
    "specificity",
    "ppv",
    "stay_detection_rate",
    "stay_false_alarm_rate",
    "alerts_per_100_patient_days",
    "median_lead_time_hours",
    "ece",
    "calibration_intercept",
    "calibration_slope",
)


def evaluate_score(
    cohort: Cohort,
    scores: np.ndarray,
    threshold: float,
    *,
    probabilistic: bool = True,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of one score at its threshold (alert = score >= threshold), each {value, ci: [lo, hi]}.

    Calibration metrics are computed only for probabilities (``probabilistic``); bedside scores get None.
    """
    scores = np.asarray(scores, dtype=np.float64)
    alert = scores >= threshold
    st = _stay_stats(cohort, alert)
    order, ends = _ranked(scores)
    y_sorted = cohort.y[order]
    stay_sorted = cohort.stay[order]
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, CALIBRATION_BINS + 1))) if probabilistic else None
    if edges is not None and len(edges) < 2:
        edges = np.array([0.0, 1.0])
    nan3 = (float("nan"), float("nan"), float("nan"))

    def one(m: np.ndarray) -> dict[str, float]:
        w_rows = m[stay_sorted]
        auroc, auprc = _auc_ap(y_sorted, w_rows, ends)
        cal = _calibration(scores, cohort.y.astype(float), m[cohort.stay], edges) if edges is not None else nan3
        return _point(cohort, st, m, auroc, auprc, cal)

    point = one(np.ones(cohort.n_stays))
    rng = np.random.default_rng(seed)
    reps = [
        one(np.bincount(rng.integers(0, cohort.n_stays, cohort.n_stays), minlength=cohort.n_stays).astype(float))
        for _ in range(n_boot)
    ]
    out: dict[str, Any] = {"threshold": float(threshold)}
    for k in METRIC_NAMES:
        if not probabilistic and k in ("ece", "calibration_intercept", "calibration_slope"):
            out[k] = None
            continue
        vals = np.array([r[k] for r in reps], dtype=float)
        vals = vals[np.isfinite(vals)]
        ci = [float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))] if len(vals) >= 10 else None
        out[k] = {"value": point[k], "ci": ci}
    return out


def calibration_curve(cohort: Cohort, p: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, list[float]]:
    """Mean predicted vs observed rate per quantile bin of the probabilities (for the reliability plot)."""
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    cnt = np.bincount(b, minlength=len(edges) - 1)
    keep = cnt > 0
    mean_p = np.bincount(b, weights=p, minlength=len(edges) - 1)[keep] / cnt[keep]
    obs = np.bincount(b, weights=cohort.y.astype(float), minlength=len(edges) - 1)[keep] / cnt[keep]
    return {"mean_predicted": mean_p.tolist(), "observed": obs.tolist(), "count": cnt[keep].tolist()}


LOW_PREVALENCE_SEPTIC_WEIGHT = 0.5
"""Weight of septic stays in the 'lower-prevalence site' half of the robust threshold rule."""


def alert_hour_rate(scores: np.ndarray, threshold: float) -> float:
    """Fraction of hours (rows) that alert at ``threshold`` (alert = score >= threshold)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.mean(scores >= threshold)) if len(scores) else float("nan")


def lowest_threshold_within(scores: np.ndarray, max_alert_rate: float) -> float:
    """The lowest threshold at which at most ``max_alert_rate`` of the rows alert (ties counted in full)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(max_alert_rate * len(s) + 1e-9))
    if allowed >= len(s):
        return float(s[-1])
    # Just above the (allowed+1)-th highest score: every row tied with it stays below the threshold.
    return float(np.nextafter(s[allowed], np.inf))


def choose_threshold(
    cohort: Cohort,
    scores: np.ndarray,
    *,
    candidates: int = 300,
    robust: bool = True,
    max_alert_rate: float | None = None,
) -> tuple[float, float]:
    """The operating threshold from a validation split, and the normalised utility there.

    Plain rule (``robust=False``): the threshold that maximises the challenge's normalised utility. Robust rule
    (default): maximise the mean of that utility and the utility at half the sepsis prevalence (septic stays
    weighted 1/2, exactly the expected value of dropping half of them). The utility's optimum moves up when
    prevalence falls (false alarms weigh more), and a new site usually has a different, often lower, prevalence
    (the Challenge's second hospital: 5.7% of stays against 8.8%); the utility curve is flat near its optimum, so
    the robust threshold costs little at the training site and protects a site with fewer septic patients.

    ``max_alert_rate`` (an alert budget): only thresholds at which at most this fraction of the validation hours
    alert are candidates, so a replacement model holds the alarm burden of the model it replaces and has to earn
    its place by catching more within it. The lowest threshold within the budget is always a candidate.
    """
    scores = np.asarray(scores, dtype=np.float64)
    grid = np.unique(np.quantile(scores, np.linspace(0.5, 0.999, candidates)))
    if max_alert_rate is not None:
        floor = lowest_threshold_within(scores, max_alert_rate)
        # The floor goes last: on a tie (same alerts) the unconstrained rule's own grid point is kept.
        grid = np.r_[grid[grid >= floor], [floor] if floor not in grid else []]
    w_low = np.where(cohort.septic, LOW_PREVALENCE_SEPTIC_WEIGHT, 1.0)

    def norm(u: np.ndarray, w: np.ndarray) -> float:
        denom = float(np.dot(w, cohort.best_u) - np.dot(w, cohort.inaction_u))
        return float((np.dot(w, u) - np.dot(w, cohort.inaction_u)) / denom) if denom else float("nan")

    ones = np.ones(cohort.n_stays)
    best_t, best_obj, best_u = float(grid[-1]), -np.inf, float("nan")
    for t in grid:
        per_stay = np.add.reduceat(row_utilities(cohort.stay, cohort.y, scores >= t), cohort.starts)
        u_all = norm(per_stay, ones)
        obj = (u_all + norm(per_stay, w_low)) / 2 if robust else u_all
        if obj > best_obj:
            best_t, best_obj, best_u = float(t), obj, u_all
    return best_t, best_u


def threshold_at_specificity(cohort: Cohort, scores: np.ndarray, specificity: float) -> float:
    """The lowest threshold whose row-level specificity reaches ``specificity``."""
    neg = np.sort(np.asarray(scores, dtype=np.float64)[~cohort.y])
    if not len(neg):
        return float("inf")
    return float(np.nextafter(neg[min(len(neg) - 1, int(np.ceil(specificity * len(neg))) - 1)], np.inf))


AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("18-44", 0, 45),
    ("45-64", 45, 65),
    ("65-79", 65, 80),
    ("80+", 80, 200),
)
SUBGROUP_METRICS: tuple[str, ...] = (
    "auroc",
    "utility",
    "sensitivity",
    "specificity",
    "ppv",
    "alerts_per_100_patient_days",
)


def stay_groups(df: pd.DataFrame) -> dict[str, pd.Series]:
    """Per-row subgroup labels: sex, age band, ICU unit (from each stay's first row)."""
    first = df.groupby("patient_id", sort=False).transform("first") if len(df) else df
    sex = np.where(first["Gender"] == 1, "male", np.where(first["Gender"] == 0, "female", "unknown"))
    age = np.full(len(df), "unknown", dtype=object)
    for name, lo, hi in AGE_BANDS:
        age[(first["Age"] >= lo) & (first["Age"] < hi)] = name
    unit = np.full(len(df), "unknown", dtype=object)
    if "Unit1" in df and "Unit2" in df:
        u1 = df.groupby("patient_id", sort=False)["Unit1"].transform("max").to_numpy()
        u2 = df.groupby("patient_id", sort=False)["Unit2"].transform("max").to_numpy()
        unit[u1 == 1] = "MICU"
        unit[(u2 == 1) & (u1 != 1)] = "SICU"
    return {
        "sex": pd.Series(sex, index=df.index),
        "age_band": pd.Series(age, index=df.index),
        "icu_unit": pd.Series(unit, index=df.index),
    }


def subgroup_table(df: pd.DataFrame, scores: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """Point metrics per subgroup and their disparity ratios (subgroup / whole cohort)."""
    overall = evaluate_score(Cohort.from_frame(df), scores, threshold, n_boot=0)
    rows: list[dict[str, Any]] = []
    for attr, labels in stay_groups(df).items():
        for group in sorted(labels.unique()):
            mask = (labels == group).to_numpy()
            sub = df.loc[mask]
            c = Cohort.from_frame(sub)
            ev = evaluate_score(c, scores[mask], threshold, n_boot=0)
            row: dict[str, Any] = {
                "attribute": attr,
                "group": group,
                "stays": int(c.n_stays),
                "septic_stays": int(c.septic.sum()),
                "rows": len(sub),
            }
            for k in SUBGROUP_METRICS:
                v = ev[k]["value"]
                row[k] = v
                base = overall[k]["value"]
                row[f"{k}_ratio"] = float(v / base) if base and np.isfinite(v) and np.isfinite(base) else None
            rows.append(row)
    return rows


def paired_gain(
    cohort: Cohort,
    scores: np.ndarray,
    threshold: float,
    ref_scores: np.ndarray,
    ref_threshold: float,
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Gain of a score over a reference score on the same stays, with a paired stay bootstrap.

    Both scores are evaluated on the same resample of stays in every replicate, so the stays' shared difficulty
    cancels and the interval is that of the difference (much narrower than comparing two unpaired intervals).
    For AUROC and normalised utility (each score at its own threshold): the point gain, the 95% interval, the
    one-sided p-value that the score is better (``p_one_sided``: share of replicates with a gain <= 0) and the one
    that it is worse (``p_one_sided_worse``: share of replicates with a gain >= 0).
    """
    a = np.asarray(scores, dtype=np.float64)
    b = np.asarray(ref_scores, dtype=np.float64)
    parts = []
    for s, t in ((a, threshold), (b, ref_threshold)):
        order, ends = _ranked(s)
        parts.append((cohort.y[order], cohort.stay[order], ends, _stay_stats(cohort, s >= t)))
    denom_rows = (cohort.best_u, cohort.inaction_u)

    def gains(m: np.ndarray) -> tuple[float, float]:
        out = []
        for y_sorted, stay_sorted, ends, st in parts:
            auroc, _ = _auc_ap(y_sorted, m[stay_sorted], ends)
            den = float(np.dot(m, denom_rows[0]) - np.dot(m, denom_rows[1]))
            util = _ratio(float(np.dot(m, st.observed_u) - np.dot(m, denom_rows[1])), den)
            out.append((auroc, util))
        return out[0][0] - out[1][0], out[0][1] - out[1][1]

    point = gains(np.ones(cohort.n_stays))
    rng = np.random.default_rng(seed)
    reps = np.array(
        [
            gains(np.bincount(rng.integers(0, cohort.n_stays, cohort.n_stays), minlength=cohort.n_stays).astype(float))
            for _ in range(n_boot)
        ]
    )
    result: dict[str, dict[str, Any]] = {}
    for i, k in enumerate(("auroc", "utility")):
        vals = reps[:, i][np.isfinite(reps[:, i])]
        result[k] = {
            "gain": float(point[i]),
            "ci": [float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))] if len(vals) else None,
            "p_one_sided": float(np.mean(vals <= 0)) if len(vals) else float("nan"),
            "p_one_sided_worse": float(np.mean(vals >= 0)) if len(vals) else float("nan"),
        }
    return result
