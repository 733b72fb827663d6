"""Each model's figures from the scores that went through Kafka, beside the same computation offline.

Figures are computed on the PhysioNet rows of the stays a model scored ("bedside view": a stay-hour without new
data shows the latest score, as a bedside display would); the same computation over ``vigil model predict``'s
offline predictions for the same rows is reported beside them, and the two must agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vigil_scoring.model_package import ModelPackage
from vigil_scoring.physionet import MEASUREMENT_COLUMNS


def _bedside_view(rows: pd.DataFrame, encounter_of: dict[str, str], scores: dict[tuple[str, int], float]) -> np.ndarray:
    """One probability per row: the latest score at or before the row's hour (0 before the first score)."""
    out = np.zeros(len(rows))
    last: dict[str, float] = {}
    for i, (pid, hour) in enumerate(zip(rows["patient_id"].astype(str), rows["hour"].astype(int), strict=True)):
        enc = encounter_of[pid]
        s = scores.get((enc, hour))
        if s is not None:
            last[enc] = s
        out[i] = last.get(enc, 0.0)
    return out


def model_figures(
    rows: pd.DataFrame, encounter_of: dict[str, str], streamed: dict[tuple[str, int], float], package: ModelPackage
) -> dict[str, Any]:
    """AUROC, utility and alerts from the streamed scores and, beside them, from the offline predictions."""
    from vigil_ml.evaluate import predict_frame
    from vigil_ml.metrics import Cohort, evaluate_score

    cohort = Cohort.from_frame(rows)
    threshold = float(package.thresholds["operating"])
    streamed_rows = _bedside_view(rows, encounter_of, streamed)
    offline = predict_frame(package, rows)
    # A stream scores the hours in which something arrived: a measurement, or hour 0 (age and sex at admission).
    has_data = (rows[list(MEASUREMENT_COLUMNS)].notna().any(axis=1) | (rows["hour"] == 0)).to_numpy()
    offline_scores = {
        (encounter_of[str(p)], int(h)): float(s)
        for p, h, s, d in zip(rows["patient_id"], rows["hour"], offline, has_data, strict=True)
        if d
    }
    offline_rows = _bedside_view(rows, encounter_of, offline_scores)
    fig_stream = evaluate_score(cohort, streamed_rows, threshold, n_boot=0)
    fig_offline = evaluate_score(cohort, offline_rows, threshold, n_boot=0)
    fig_all = evaluate_score(cohort, offline, threshold, n_boot=0)
    keys = ("auroc", "utility", "sensitivity", "ppv", "alerts_per_100_patient_days")

    def pick(f: dict[str, Any]) -> dict[str, Any]:
        return {k: (f[k]["value"] if isinstance(f.get(k), dict) else f.get(k)) for k in keys if k in f}

    common = [k for k in streamed if k in offline_scores]
    diff = max((abs(streamed[k] - offline_scores[k]) for k in common), default=0.0)
    return {
        "patient_ids": sorted(set(rows["patient_id"].astype(str))),
        "stays": int(cohort.n_stays),
        "rows": len(rows),
        "threshold": threshold,
        "alerts_streamed": int((streamed_rows >= threshold).sum()),
        "alerts_offline": int((offline_rows >= threshold).sum()),
        "streamed": pick(fig_stream),
        "offline_same_rows": pick(fig_offline),
        "offline_all_rows": pick(fig_all),
        "max_abs_score_difference": diff,
        "agree": diff < 1e-5
        and all(_same(fig_stream[k], fig_offline[k]) for k in ("auroc", "utility") if k in fig_stream),
    }


def _same(a: Any, b: Any) -> bool:
    va = a["value"] if isinstance(a, dict) else a
    vb = b["value"] if isinstance(b, dict) else b
    return bool(va == vb or (va is not None and vb is not None and abs(va - vb) < 1e-9))
