"""The challenge's utility and the bootstrap metrics, checked against independent implementations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from vigil_ml.metrics import Cohort, _auc_ap, _ranked, choose_threshold, evaluate_score
from vigil_scoring.utility import normalized_utility, row_utilities


def loop_utility(labels: np.ndarray, pred: np.ndarray) -> float:
    """The challenge's per-stay utility written as a plain loop from its definition (dt -12, -6, 3)."""
    septic = bool(labels.any())
    ts = int(np.argmax(labels)) + 6 if septic else None
    total = 0.0
    for t, p in enumerate(pred):
        if not septic:
            total += -0.05 if p else 0.0
            continue
        assert ts is not None
        if t > ts + 3:
            continue
        if p:
            total += max((t - ts + 12) / 6, -0.05) if t <= ts - 6 else 1 - (t - ts + 6) / 9
        elif t > ts - 6:
            total += -2 * (t - ts + 6) / 9
    return total


def test_reference_example() -> None:
    # The worked example in the challenge's evaluation script: labels 0,0,0,0,1,1 and predictions 0,0,1,1,1,1.
    labels = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 1])
    u = row_utilities(np.zeros(6, dtype=int), labels, pred).sum()
    assert u == pytest.approx(3.388888888888889, abs=1e-12)
    assert loop_utility(labels, pred) == pytest.approx(u, abs=1e-12)


def test_row_utilities_match_loop_on_random_stays() -> None:
    rng = np.random.default_rng(0)
    codes, labels, preds = [], [], []
    for k in range(300):
        n = int(rng.integers(5, 80))
        lab = np.zeros(n, dtype=int)
        if rng.random() < 0.4:
            lab[int(rng.integers(0, n)) :] = 1
        codes.append(np.full(n, k))
        labels.append(lab)
        preds.append((rng.random(n) < rng.random()).astype(int))
    c, y, p = np.concatenate(codes), np.concatenate(labels), np.concatenate(preds)
    u = row_utilities(c, y, p)
    for k in range(300):
        assert u[c == k].sum() == pytest.approx(loop_utility(labels[k], preds[k]), abs=1e-9)
    # Normalisation: the best policy scores 1, never alerting 0.
    best = [np.zeros(len(lab)) for lab in labels]
    for b, lab in zip(best, labels, strict=True):
        if lab.any():
            ts = int(np.argmax(lab)) + 6
            b[max(0, ts - 12) : min(ts + 4, len(lab))] = 1
    assert normalized_utility(c, y, np.concatenate(best)) == pytest.approx(1.0)
    assert normalized_utility(c, y, np.zeros(len(y))) == pytest.approx(0.0)


def test_weighted_auc_and_ap_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(5000) < 0.1
    s = np.round(rng.random(5000) + y * 0.5, 2)  # ties on purpose
    order, ends = _ranked(s)
    auc, ap = _auc_ap(y[order], np.ones(len(y))[order], ends)
    assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert ap == pytest.approx(average_precision_score(y, s), abs=1e-12)
    # Integer weights equal repeating rows.
    w = rng.integers(0, 3, 5000).astype(float)
    auc_w, ap_w = _auc_ap(y[order], w[order], ends)
    rep = np.repeat(np.arange(5000), w.astype(int))
    assert auc_w == pytest.approx(roc_auc_score(y[rep], s[rep]), abs=1e-12)
    assert ap_w == pytest.approx(average_precision_score(y[rep], s[rep]), abs=1e-12)


def toy_frame(rng: np.random.Generator, stays: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    rows = []
    for k in range(stays):
        n = int(rng.integers(10, 60))
        lab = np.zeros(n, dtype=int)
        if k % 5 == 0:
            lab[int(rng.integers(0, n)) :] = 1
        rows.append(pd.DataFrame({"patient_id": f"p{k:04d}", "hour": np.arange(n), "SepsisLabel": lab}))
    df = pd.concat(rows, ignore_index=True)
    score = np.clip(df["SepsisLabel"] * 0.3 + rng.random(len(df)) * 0.7, 0, 1).to_numpy()
    return df, score


def test_evaluate_score_has_cis_around_point_estimates() -> None:
    df, score = toy_frame(np.random.default_rng(2))
    c = Cohort.from_frame(df)
    thr, u = choose_threshold(c, score)
    res = evaluate_score(c, score, thr, n_boot=50, seed=0)
    assert res["utility"]["value"] == pytest.approx(u)
    assert res["auroc"]["value"] == pytest.approx(roc_auc_score(df["SepsisLabel"], score))
    for k in ("auroc", "utility", "sensitivity", "ppv", "ece"):
        lo, hi = res[k]["ci"]
        assert lo <= res[k]["value"] <= hi
    assert res["alerts_per_100_patient_days"]["value"] > 0
    assert res["median_lead_time_hours"]["value"] >= 0
