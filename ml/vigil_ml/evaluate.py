"""Evaluate a model package on PhysioNet-format rows, beside the bedside scores, and write JSON + HTML."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vigil_ml.clinical import CLINICAL_SCORES, STANDARD_CUTOFFS, clinical_scores
from vigil_ml.metrics import Cohort, calibration_curve, evaluate_score, subgroup_table
from vigil_scoring.features import offline_features
from vigil_scoring.model_package import ModelPackage


def predict_frame(package: ModelPackage, df: pd.DataFrame) -> np.ndarray:
    """Risk per row through the shared feature code and the package's ONNX session (the serving path)."""
    X = offline_features(df).to_numpy(dtype=np.float32)
    return package.predict(X)


def evaluate_package(
    package: ModelPackage,
    df: pd.DataFrame,
    *,
    n_boot: int = 200,
    seed: int = 0,
    extra_scores: dict[str, tuple[np.ndarray, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of the package and of qSOFA, SIRS, NEWS2, MEWS on ``df`` (sorted by patient, hour).

    Bedside scores alert at the thresholds the card records (chosen on the training run's validation split by the
    same utility rule as the model) or, failing that, at their usual cut-offs. Returns (report dict, plot data).
    """
    cohort = Cohort.from_frame(df)
    risk = predict_frame(package, df)
    thr = package.operating_threshold
    clin = clinical_scores(df)
    clin_thr = {**STANDARD_CUTOFFS, **package.card.get("clinical_thresholds", {})}
    scores: dict[str, dict[str, Any]] = {
        "model": evaluate_score(cohort, risk, thr, n_boot=n_boot, seed=seed),
    }
    for name, (s, t) in (extra_scores or {}).items():
        scores[name] = evaluate_score(cohort, s, t, n_boot=n_boot, seed=seed)
    for name in CLINICAL_SCORES:
        scores[name] = evaluate_score(
            cohort, clin[name].to_numpy(), float(clin_thr[name]), probabilistic=False, n_boot=n_boot, seed=seed
        )
    report = {
        "model": {"name": package.name, "version": package.version, "sha256": package.sha256},
        "feature_set_version": package.feature_set_version,
        "evaluated_at": datetime.now(UTC).isoformat(),
        "data": {
            "stays": int(cohort.n_stays),
            "septic_stays": int(cohort.septic.sum()),
            "rows": len(df),
            "positive_rows": int(cohort.y.sum()),
        },
        "bootstrap": {"replicates": n_boot, "seed": seed, "unit": "stay"},
        "operating_threshold": thr,
        "scores": scores,
        "subgroups": subgroup_table(df, risk, thr),
        "calibration_curve": calibration_curve(cohort, risk),
    }
    plots = {"y": cohort.y, "model": risk, **{k: clin[k].to_numpy() for k in CLINICAL_SCORES}}
    for name, (s, _) in (extra_scores or {}).items():
        plots[name] = s
    return report, plots


def write_report(report: dict[str, Any], plots: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``out``.json and ``out``.html (self-contained, PNG plots embedded)."""
    from vigil_ml.report import html_report

    out.parent.mkdir(parents=True, exist_ok=True)
    js = out.with_suffix(".json")
    js.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    html = out.with_suffix(".html")
    html.write_text(html_report(report, plots))
    return js, html
