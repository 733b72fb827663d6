"""Feature and model speed: the streaming state against the offline path, ONNX against scikit-learn.

Run: ``.venv/bin/python bench/bench_model.py [--stays 100]`` (uses the bundled sample; ~1 minute).

1. Features: per ICU hour of the sample, the incremental state (apply that hour's events, then ``features()``)
   against the vectorised offline path; also ``features_many`` over a batch of encounters (what a scorer pays
   per batch). Ratio = streaming cost per row / offline cost per row.
2. Scoring: the default package's ONNX session per row in batches of 1, 64 and 1024 rows; the baseline is
   scikit-learn's ``predict_proba`` of a HistGradientBoosting model of the same size fitted here.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta

import numpy as np
import pandas as pd

from vigil_contracts.events import ObservationRecorded
from vigil_ml.data import SAMPLE_PATH
from vigil_scoring.features import EncounterState, features_many, offline_features
from vigil_scoring.model_package import ModelPackage, default_package_path
from vigil_scoring.physionet import ICU_EPOCH, stay_events


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stays", type=int, default=100)
    args = ap.parse_args()
    df = pd.read_parquet(SAMPLE_PATH)
    ids = sorted(df["patient_id"].unique())[: args.stays]
    df = df[df["patient_id"].isin(ids)].reset_index(drop=True)
    rows = len(df)

    t0 = time.perf_counter()
    X = offline_features(df).to_numpy()
    offline_s = time.perf_counter() - t0

    stays = [(str(pid), stay) for pid, stay in df.groupby("patient_id", sort=False)]
    events = {pid: stay_events(stay, encounter=pid, patient=pid) for pid, stay in stays}
    apply_s = feat_s = 0.0
    states = []
    for pid, stay in stays:
        by_hour: dict[int, list] = {}
        for e in events[pid]:
            at = e.observed_at if isinstance(e, ObservationRecorded) else ICU_EPOCH
            by_hour.setdefault(int((at - ICU_EPOCH) / timedelta(hours=1)), []).append(e)
        s = EncounterState()
        for h in stay["hour"].to_numpy():
            t = time.perf_counter()
            for e in by_hour.get(int(h), []):
                s.apply(e)
            apply_s += time.perf_counter() - t
            t = time.perf_counter()
            s.features(at_hour=int(h))
            feat_s += time.perf_counter() - t
        states.append(s)
    n_events = sum(len(v) for v in events.values())
    t0 = time.perf_counter()
    for _ in range(5):
        features_many(states)
    many_s = (time.perf_counter() - t0) / 5

    pkg = ModelPackage.load(default_package_path())
    from sklearn.ensemble import HistGradientBoostingClassifier

    y = df["SepsisLabel"].to_numpy()
    n_iter = int(pkg.card.get("hyperparameters", {}).get("n_iter", 300))
    skl = HistGradientBoostingClassifier(max_iter=n_iter, max_leaf_nodes=31, early_stopping=False, random_state=0)
    skl.fit(X, y)
    scoring = {}
    for batch in (1, 64, 1024):
        xb = X[:batch].astype(np.float32)
        reps = max(3, 2000 // batch)
        t0 = time.perf_counter()
        for _ in range(reps):
            pkg.predict(xb)
        onnx_us = (time.perf_counter() - t0) / reps / batch * 1e6
        t0 = time.perf_counter()
        for _ in range(max(3, reps // 10)):
            skl.predict_proba(xb)
        skl_us = (time.perf_counter() - t0) / max(3, reps // 10) / batch * 1e6
        scoring[f"batch_{batch}"] = {
            "onnx_us_per_row": round(onnx_us, 2),
            "sklearn_us_per_row": round(skl_us, 2),
            "speedup": round(skl_us / onnx_us, 1),
        }
    print(
        json.dumps(
            {
                "rows": rows,
                "events": n_events,
                "offline_us_per_row": round(offline_s / rows * 1e6, 2),
                "stream_apply_us_per_event": round(apply_s / n_events * 1e6, 2),
                "stream_features_us_per_call": round(feat_s / rows * 1e6, 1),
                "stream_over_offline_ratio": round((apply_s + feat_s) / offline_s, 1),
                "features_many_us_per_encounter": round(many_s / len(states) * 1e6, 1),
                "scoring": scoring,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
