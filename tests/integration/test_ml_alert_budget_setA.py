"""Version 3 on set A: its card's test figures reproduce, its alert budget holds against version 2 on the same
validation hours, and its drift reference is the one rebuilt from its own validation split."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vigil_ml import data
from vigil_ml.drift_reference import validation_rows
from vigil_ml.metrics import Cohort, alert_hour_rate, evaluate_score
from vigil_scoring.features import offline_features
from vigil_scoring.model_package import ModelPackage, default_package_path
from vigil_scoring.reference import Reference, build_reference


@pytest.fixture(scope="module")
def set_a(shared_kit: Path) -> Path:
    return shared_kit / "data" / "physionet2019_setA.parquet"


@pytest.fixture(scope="module")
def v3() -> ModelPackage:
    return ModelPackage.load(default_package_path("3"))


@pytest.fixture(scope="module")
def valid(v3: ModelPackage, set_a: Path) -> pd.DataFrame:
    return validation_rows(v3.path, set_a)


def test_v3_is_trained_on_v2s_patients_with_v1s_hyperparameters(v3: ModelPackage) -> None:
    v1, v2 = (ModelPackage.load(default_package_path(v)).card for v in ("1", "2"))
    assert v3.card["training_data"]["split"] == v2["training_data"]["split"]
    hp = {k: v for k, v in v3.card["hyperparameters"].items() if k != "random_state"}
    assert hp == {k: v for k, v in v1["hyperparameters"].items() if k != "random_state"}
    assert v3.card["hyperparameters"]["random_state"] == 11


def test_v3_keeps_within_v2s_alert_budget_on_the_same_validation_hours(v3: ModelPackage, valid: pd.DataFrame) -> None:
    budget = v3.card["operating_threshold"]["alert_budget"]
    v2 = ModelPackage.load(default_package_path("2"))
    assert budget["reference"] == {"name": "sepsis", "version": "2", "sha256": v2.sha256}
    X = offline_features(valid).to_numpy(dtype=np.float32)
    v2_rate = alert_hour_rate(v2.predict(X), v2.operating_threshold)
    v3_rate = alert_hour_rate(v3.predict(X), v3.operating_threshold)
    assert budget["validation_hours"] == len(valid)
    assert budget["reference_alert_rate"] == pytest.approx(v2_rate, abs=1e-12)
    assert budget["alert_rate"] == pytest.approx(v3_rate, abs=1e-12)
    assert v3_rate <= v2_rate


def test_v3_card_test_metrics_reproduce(v3: ModelPackage, set_a: Path) -> None:
    df = data.load(set_a)
    sample_ids = pd.read_parquet(data.SAMPLE_PATH, columns=["patient_id"])["patient_id"].unique()
    df = df[~df["patient_id"].isin(sample_ids)].reset_index(drop=True)
    split = data.split_patients(df, seed=v3.card["hyperparameters"]["random_state"])
    test = df[df["patient_id"].isin(split.test)].reset_index(drop=True)
    assert len(test) == v3.card["training_data"]["split"]["test"]["rows"]
    risk = v3.predict(offline_features(test).to_numpy(dtype=np.float32))
    got = evaluate_score(Cohort.from_frame(test), risk, v3.operating_threshold, n_boot=0)
    card = v3.card["metrics"]["scores"]["model"]
    for k in ("auroc", "auprc", "utility", "sensitivity", "specificity", "ppv", "alerts_per_100_patient_days"):
        assert got[k]["value"] == pytest.approx(card[k]["value"], abs=1e-9), k


def test_v3_drift_reference_is_rebuilt_from_its_validation_split(v3: ModelPackage, valid: pd.DataFrame) -> None:
    committed = asdict(Reference.load(v3.path / "reference.json"))
    scores = v3.predict(offline_features(valid).to_numpy(dtype=np.float32))
    rebuilt = asdict(Reference.from_json(build_reference(valid, scores, v3.operating_threshold).to_json()))
    for ref in (committed, rebuilt):
        ref.pop("created_at")
    assert json.dumps(committed, sort_keys=True) == json.dumps(rebuilt, sort_keys=True)
