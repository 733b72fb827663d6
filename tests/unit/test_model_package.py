"""The committed default packages load, verify and score; tampering is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vigil_ml.data import SAMPLE_PATH
from vigil_ml.onnx_export import onnx_proba
from vigil_scoring.features import FEATURE_COLUMNS, FEATURE_SET_VERSION, offline_features
from vigil_scoring.model_package import ModelPackage, ModelPackageError, default_package_path, sha256_of_dir


@pytest.mark.parametrize("version", ["1", "2", "3", "4"])
def test_default_packages_load_and_score(version: str) -> None:
    pkg = ModelPackage.load(default_package_path(version))
    assert pkg.name == "sepsis" and pkg.version == version
    assert pkg.feature_set_version == FEATURE_SET_VERSION and pkg.columns == FEATURE_COLUMNS
    assert 0 < pkg.thresholds["operating"] <= pkg.thresholds["high"] < 1
    assert (pkg.path / "card.md").stat().st_size > 0 and pkg.card["version"] == version
    assert "Reyna" in json.dumps(pkg.card)
    import pandas as pd

    df = pd.read_parquet(SAMPLE_PATH).head(400)
    X = offline_features(df).to_numpy()
    p = pkg.predict(X)
    assert p.shape == (400,) and p.dtype == np.float64 and np.all((p >= 0) & (p <= 1))
    np.testing.assert_array_equal(p, onnx_proba(pkg.path / "model.onnx", X))
    assert pkg.risk_level(0.0) == "low" and pkg.risk_level(1.0) == "high"
    assert pkg.alert(pkg.thresholds["operating"]) and not pkg.alert(pkg.thresholds["operating"] / 2)
    assert (pkg.path / "model.onnx").stat().st_size < 5_000_000


def test_versions_differ() -> None:
    digests = {ModelPackage.load(default_package_path(v)).sha256 for v in ("1", "2", "3", "4")}
    assert len(digests) == 4


def test_tampering_is_refused(tmp_path: Path) -> None:
    src = default_package_path()
    dst = tmp_path / "pkg"
    shutil.copytree(src, dst)
    digest = sha256_of_dir(dst)
    ModelPackage.load(dst, expected_sha256=digest)
    ModelPackage.load(dst, expected_sha256=ModelPackage.load(dst).sha256)
    with pytest.raises(ModelPackageError):
        ModelPackage.load(dst, expected_sha256="0" * 64)
    card = dst / "card.json"
    card.write_text(card.read_text().replace("sepsis", "sepsys", 1))
    with pytest.raises(ModelPackageError, match=r"card\.json"):
        ModelPackage.load(dst)
    shutil.copy(src / "card.json", card)
    with (dst / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelPackageError, match="sha256"):
        ModelPackage.load(dst)


def test_schema_mismatch_is_refused(tmp_path: Path) -> None:
    dst = tmp_path / "pkg"
    shutil.copytree(default_package_path(), dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["input_schema"]["columns"] = m["input_schema"]["columns"][::-1]
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelPackageError, match="FEATURE_COLUMNS"):
        ModelPackage.load(dst)
