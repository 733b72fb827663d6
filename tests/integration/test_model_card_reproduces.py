"""The default card's test-split figures are reproducible from the committed model and set A."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vigil_ml import data
from vigil_ml.metrics import Cohort, evaluate_score
from vigil_scoring.features import offline_features
from vigil_scoring.model_package import ModelPackage, default_package_path


def test_card_test_metrics_reproduce(shared_kit: Path) -> None:
    pkg = ModelPackage.load(default_package_path())
    seed = pkg.card["hyperparameters"]["random_state"]
    df = data.load(shared_kit / "data" / "physionet2019_setA.parquet")
    sample_ids = pd.read_parquet(data.SAMPLE_PATH, columns=["patient_id"])["patient_id"].unique()
    df = df[~df["patient_id"].isin(sample_ids)].reset_index(drop=True)
    split = data.split_patients(df, seed=seed)
    assert not set(split.train) & set(split.test) and not set(split.valid) & set(split.test)
    assert not set(sample_ids) & set(split.train)
    test = df[df["patient_id"].isin(split.test)].reset_index(drop=True)
    assert len(test) == pkg.card["training_data"]["split"]["test"]["rows"]
    risk = pkg.predict(offline_features(test).to_numpy(dtype=np.float32))
    got = evaluate_score(Cohort.from_frame(test), risk, pkg.operating_threshold, n_boot=0)
    card = pkg.card["metrics"]["scores"]["model"]
    for k in ("auroc", "auprc", "utility", "sensitivity", "specificity", "ppv"):
        assert got[k]["value"] == pytest.approx(card[k]["value"], abs=1e-9), k
