"""The training pipeline end to end on the bundled sample (tiny models): reproducible, ONNX parity, a package the
registry can take; ``vigil model predict`` is the ONNX session; ``vigil model evaluate`` writes JSON and HTML."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vigil_ml.cli import app
from vigil_ml.data import SAMPLE_PATH
from vigil_ml.onnx_export import onnx_proba
from vigil_ml.train import TrainConfig, train
from vigil_scoring.features import FEATURE_COLUMNS, offline_features
from vigil_scoring.model_package import ModelPackage, default_package_path

runner = CliRunner()


def tiny(version: str = "9") -> TrainConfig:
    cfg = TrainConfig(version=version, hold_out_sample=False, n_boot=5, seed=3)
    cfg.hgb.update(max_iter=15, min_samples_leaf=50)
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    return train(SAMPLE_PATH, tmp_path_factory.mktemp("run1"), tiny())


def test_run_records_params_metrics_and_no_patient_ids(run) -> None:
    params = json.loads((run.run_dir / "params.json").read_text())
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert params["feature_set_version"] and len(params["data"]["sha256"]) == 64
    assert params["config"]["seed"] == 3 and params["features"] == list(FEATURE_COLUMNS)
    assert set(metrics["scores"]) == {"model", "logistic_regression", "qsofa", "sirs", "news2", "mews"}
    ids = pd.read_parquet(SAMPLE_PATH, columns=["patient_id"])["patient_id"].unique()
    for f in [*run.run_dir.rglob("*.json"), *run.run_dir.rglob("*.md"), run.run_dir / "report.html"]:
        text = f.read_text()
        assert not any(pid in text for pid in ids), f"patient id in {f.name}"
    assert (run.run_dir / "report.html").read_text().count("data:image/png;base64,") >= 3


def test_split_is_by_patient(run) -> None:
    params = json.loads((run.run_dir / "params.json").read_text())
    split = params["split"]
    assert sum(split[k]["stays"] for k in split) == 300
    assert len({split[k]["ids_sha256"] for k in split}) == 3


def test_training_is_reproducible(run, tmp_path: Path) -> None:
    again = train(SAMPLE_PATH, tmp_path / "run2", tiny())
    a = ModelPackage.load(run.package_dir)
    b = ModelPackage.load(again.package_dir)
    assert a.sha256 == b.sha256
    assert again.metrics["scores"]["model"]["auroc"] == run.metrics["scores"]["model"]["auroc"]


def test_export_parity_and_package(run) -> None:
    assert run.parity_max_abs_diff < 1e-5
    pkg = ModelPackage.load(run.package_dir)
    assert pkg.version == "9" and pkg.columns == FEATURE_COLUMNS
    assert set(json.loads((pkg.path / "manifest.json").read_text())["files"]) >= {
        "model.onnx",
        "card.json",
        "card.md",
        "reference.json",
    }
    assert pkg.card["onnx"]["parity_max_abs_diff"] < 1e-5
    # The package carries the drift service's reference, built from held-out rows and the model's scores.
    from vigil_scoring.reference import Reference

    reference = Reference.load(pkg.path / "reference.json")
    assert reference.to_json()
    for key in ("intended_use", "training_data", "features", "metrics", "calibration", "operating_threshold"):
        assert key in pkg.card
    assert {"attribute", "group", "auroc_ratio"} <= set(pkg.card["subgroups"][0])


@pytest.mark.parametrize("model", [None, "run"])
def test_predict_cli_is_the_onnx_session(run, model: str | None, tmp_path: Path) -> None:
    df = pd.read_parquet(SAMPLE_PATH)
    df = df[df["patient_id"].isin(sorted(df["patient_id"].unique())[:40])].reset_index(drop=True)
    src = tmp_path / "in.parquet"
    df.to_parquet(src)
    out = tmp_path / "out.parquet"
    args = ["predict", "--data", str(src), "--out", str(out)]
    pkg_dir = default_package_path() if model is None else run.package_dir
    if model is not None:
        args += ["--model", str(pkg_dir)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    got = pd.read_parquet(out)
    assert list(got.columns) == ["patient_id", "hour", "risk", "alert"] and len(got) == len(df)
    assert (got["patient_id"] == df["patient_id"]).all() and (got["hour"] == df["hour"]).all()
    expected = onnx_proba(pkg_dir / "model.onnx", offline_features(df).to_numpy())
    np.testing.assert_array_equal(got["risk"].to_numpy(), expected)
    thr = ModelPackage.load(pkg_dir).operating_threshold
    np.testing.assert_array_equal(got["alert"].to_numpy(), (expected >= thr).astype(np.int8))


def test_evaluate_cli_writes_json_and_html(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    res = runner.invoke(app, ["evaluate", "--data", str(SAMPLE_PATH), "--out", str(out), "--n-boot", "20"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["data"]["stays"] == 300
    for name in ("model", "qsofa", "sirs", "news2", "mews"):
        assert report["scores"][name]["auroc"]["ci"] is not None
    html = out.with_suffix(".html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "Subgroups" in html
