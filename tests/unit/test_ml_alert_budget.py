"""The alert budget: a replacement model's threshold is the best one within the alarm burden of the model it
replaces; without a budget the threshold rule is unchanged; a training run records the budget in params and card."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from vigil_ml.data import SAMPLE_PATH
from vigil_ml.metrics import Cohort, alert_hour_rate, choose_threshold, lowest_threshold_within
from vigil_ml.train import TrainConfig, train
from vigil_scoring.model_package import ModelPackage, default_package_path


def synthetic(seed: int = 0, stays: int = 120) -> tuple[Cohort, np.ndarray]:
    """Stays of 20-60 hours, 15% septic; scores rise towards onset, so low thresholds alert a lot."""
    rng = np.random.default_rng(seed)
    frames, scores = [], []
    for i in range(stays):
        n = int(rng.integers(20, 60))
        label = np.zeros(n, dtype=int)
        if rng.random() < 0.15:
            label[int(rng.integers(5, n - 2)) :] = 1
        frames.append(pd.DataFrame({"patient_id": f"p{i:04d}", "hour": np.arange(n), "SepsisLabel": label}))
        scores.append(np.clip(rng.normal(0.05, 0.03, n) + 0.15 * label * rng.random(n), 0, 1))
    return Cohort.from_frame(pd.concat(frames, ignore_index=True)), np.concatenate(scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_chosen_threshold_keeps_within_the_budget(seed: int) -> None:
    cohort, scores = synthetic(seed)
    free, _ = choose_threshold(cohort, scores)
    budget = alert_hour_rate(scores, free) / 2  # a binding budget: half the unconstrained alert rate
    t, u = choose_threshold(cohort, scores, max_alert_rate=budget)
    assert alert_hour_rate(scores, t) <= budget
    assert t > free
    assert np.isfinite(u)


def test_a_budget_that_does_not_bind_changes_nothing() -> None:
    cohort, scores = synthetic(3)
    plain = choose_threshold(cohort, scores)
    assert choose_threshold(cohort, scores, max_alert_rate=None) == plain
    assert choose_threshold(cohort, scores, max_alert_rate=1.0) == plain
    assert choose_threshold(cohort, scores, max_alert_rate=alert_hour_rate(scores, plain[0])) == plain
    assert choose_threshold(cohort, scores, robust=False, max_alert_rate=1.0) == choose_threshold(
        cohort, scores, robust=False
    )


def test_the_lowest_threshold_within_a_budget_counts_ties_in_full() -> None:
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.2, 0.1, 0.1, 0.0, 0.0, 0.0])
    # Two alerts allowed: the three tied 0.5 scores cannot all alert, so only 0.9 does.
    t = lowest_threshold_within(scores, 0.2)
    assert alert_hour_rate(scores, t) == pytest.approx(0.1)
    assert 0.5 < t <= 0.9
    t4 = lowest_threshold_within(scores, 0.4)
    assert alert_hour_rate(scores, t4) == pytest.approx(0.4) and 0.2 < t4 <= 0.5
    assert alert_hour_rate(scores, lowest_threshold_within(scores, 1.0)) == 1.0


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory: pytest.TempPathFactory):
    cfg = TrainConfig(version="9", hold_out_sample=False, n_boot=5, seed=3)
    cfg.hgb.update(max_iter=15, min_samples_leaf=50)
    cfg.alert_budget_of = str(default_package_path("2"))
    return train(SAMPLE_PATH, tmp_path_factory.mktemp("budget"), cfg)


def test_a_training_run_records_and_keeps_its_budget(budget_run) -> None:
    params = json.loads((budget_run.run_dir / "params.json").read_text())
    budget = params["alert_budget"]
    reference = ModelPackage.load(default_package_path("2"))
    assert budget["reference"] == {"name": "sepsis", "version": "2", "sha256": reference.sha256}
    assert budget["reference_threshold"] == reference.operating_threshold
    assert 0 < budget["alert_rate"] <= budget["reference_alert_rate"]
    assert budget["validation_hours"] == params["split"]["valid"]["rows"]
    card = ModelPackage.load(budget_run.package_dir).card["operating_threshold"]
    assert card["alert_budget"] == budget
    assert card["value"] == budget_run.metrics["operating_threshold"]
    assert "Alert budget: this model replaces sepsis version 2" in card["rule"]
    assert "Alert budget" in (budget_run.package_dir / "card.md").read_text()


def test_the_budget_is_measured_on_this_runs_validation_rows(budget_run) -> None:
    """The reference's alert rate is recomputed from its own scores on the run's validation hours."""
    from vigil_ml import data
    from vigil_scoring.features import offline_features

    params = json.loads((budget_run.run_dir / "params.json").read_text())
    df = data.load(SAMPLE_PATH)
    split = data.split_patients(df, seed=3, valid=0.15, test=0.15)
    valid = df.loc[df["patient_id"].isin(split.valid)].reset_index(drop=True)
    reference = ModelPackage.load(default_package_path("2"))
    ref_scores = reference.predict(offline_features(valid).to_numpy(dtype=np.float32))
    expected = alert_hour_rate(ref_scores, reference.operating_threshold)
    assert params["alert_budget"]["reference_alert_rate"] == pytest.approx(expected, abs=1e-12)
    ours = ModelPackage.load(budget_run.package_dir)
    own = ours.predict(offline_features(valid).to_numpy(dtype=np.float32))
    assert alert_hour_rate(own, ours.operating_threshold) <= expected
