"""Feature groups and training with groups masked: the package keeps the full input and ignores the masked
columns, in scikit-learn and in the served ONNX graph alike (the transfer study's default model relies on it)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vigil_ml.cli import app
from vigil_ml.data import SAMPLE_PATH
from vigil_ml.train import TrainConfig, mask_columns, train
from vigil_scoring.features import FEATURE_COLUMNS, FEATURE_GROUPS, group_columns, offline_features
from vigil_scoring.model_package import ModelPackage

pytestmark = pytest.mark.unit


def test_groups_partition_the_feature_columns() -> None:
    cols = [c for g in FEATURE_GROUPS.values() for c in g]
    assert sorted(cols) == sorted(FEATURE_COLUMNS) and len(cols) == len(set(cols))
    assert set(FEATURE_GROUPS["measurement"]) >= {"heart_rate_hours_since", "heart_rate_count_24h", "lactate_count"}
    assert "lactate_last" in FEATURE_GROUPS["lab_last"] and "age" in FEATURE_GROUPS["context"]
    assert group_columns(["context", "derived"]) == tuple(
        c for c in FEATURE_COLUMNS if c in {*FEATURE_GROUPS["context"], *FEATURE_GROUPS["derived"]}
    )
    with pytest.raises(ValueError, match="unknown feature groups"):
        group_columns(["nonsense"])


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory: pytest.TempPathFactory):
    cfg = TrainConfig(version="9", hold_out_sample=False, n_boot=5, seed=3, drop_feature_groups=("measurement",))
    cfg.hgb.update(max_iter=15, min_samples_leaf=50)
    return train(SAMPLE_PATH, tmp_path_factory.mktemp("masked"), cfg)


def test_masked_package_keeps_the_input_and_ignores_masked_columns(masked_run) -> None:
    pkg = ModelPackage.load(masked_run.package_dir)
    assert pkg.columns == FEATURE_COLUMNS  # serving and the scorer feed it unchanged
    assert pkg.card["features_masked"]["groups"] == ["measurement"]
    assert pkg.card["features_masked"]["columns"] == list(FEATURE_GROUPS["measurement"])
    assert "Masked feature groups: measurement" in (pkg.path / "card.md").read_text()
    params = json.loads((masked_run.run_dir / "params.json").read_text())
    assert params["config"]["drop_feature_groups"] == ["measurement"]
    X = offline_features(pd.read_parquet(SAMPLE_PATH)).to_numpy(dtype=np.float32)
    masked = mask_columns(["measurement"])
    # The served ONNX graph gives the same risk whatever the masked columns hold: real values, NaN or noise.
    noisy = X.copy()
    noisy[:, masked] = np.random.default_rng(0).normal(50, 30, size=(len(X), len(masked)))
    blank = X.copy()
    blank[:, masked] = np.nan
    risk = pkg.predict(X)
    assert risk.std() > 0  # a model that learned something, not a constant
    np.testing.assert_array_equal(pkg.predict(noisy), risk)
    np.testing.assert_array_equal(pkg.predict(blank), risk)
    # ...while the unmasked columns do move it (the rows' other features shuffled, the masked ones kept).
    kept = [i for i in range(len(FEATURE_COLUMNS)) if i not in set(masked)]
    moved = X.copy()
    moved[:, kept] = X[np.random.default_rng(1).permutation(len(X))][:, kept]
    assert not np.array_equal(pkg.predict(moved), risk)


def test_cli_refuses_an_unknown_group(tmp_path) -> None:
    res = CliRunner().invoke(
        app, ["train", "--data", str(SAMPLE_PATH), "--out", str(tmp_path), "--drop-feature-groups", "habits"]
    )
    assert res.exit_code != 0 and "unknown groups" in res.output
