"""Adaptation never fits on a stay it validates on; its package carries the lineage and the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from vigil_ml import adapt as adapt_mod
from vigil_ml.adapt import AdaptConfig, LeakError, adapt, temporal_split
from vigil_ml.data import SAMPLE_PATH
from vigil_scoring.model_package import ModelPackage, default_package_path


def small_config() -> AdaptConfig:
    cfg = AdaptConfig(name="sepsis", version="site-1", min_local_septic=10, min_stacked_septic=5, n_boot=20)
    cfg.local_hgb.update(max_iter=10)
    cfg.hgb.update(max_iter=10)
    return cfg


def test_candidates_are_fitted_on_earlier_stays_only_and_picked_on_the_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = pd.read_parquet(SAMPLE_PATH)
    # Admission times that run against the stay ids, so the split must follow time, not id order.
    ids = sorted(local["patient_id"].unique())
    admitted = {
        pid: pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(hours=len(ids) - i) for i, pid in enumerate(ids)
    }
    local["icu_admitted_at"] = local["patient_id"].map(admitted)
    seen: list[set[str]] = []
    real_fit = adapt_mod._fit

    def spy(model: Any, X: np.ndarray, y: np.ndarray, *, ids: np.ndarray, held: set[str], w: Any = None) -> Any:
        seen.append(set(map(str, ids)))
        return real_fit(model, X, y, ids=ids, held=held, w=w)

    monkeypatch.setattr(adapt_mod, "_fit", spy)
    manifest = tmp_path / "dataset" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"content_sha256": "ab" * 32, "window": {"from": None, "to": None}}))
    res = adapt(default_package_path(), local, tmp_path / "run", config=small_config(), manifest_path=manifest)

    latest = set(ids[: len(res.selection_ids)])  # the lowest ids were admitted last
    assert res.selection_ids == latest
    assert seen, "no candidate was fitted"
    for fitted in seen:
        assert fitted <= res.fit_ids and not fitted & res.selection_ids
    assert {"recalibrated", "stacked", "local"} <= set(res.candidates)

    pkg = ModelPackage.load(res.package_dir)
    card = pkg.card
    assert card["lineage"]["base"]["sha256"] == ModelPackage.load(default_package_path()).sha256
    assert card["lineage"]["dataset"]["content_sha256"] == "ab" * 32
    assert len(card["lineage"]["dataset"]["manifest_sha256"]) == 64
    assert card["local_data"]["selection"]["stays"] == len(res.selection_ids)
    assert card["validation"]["base"]["auroc"]["ci"] is not None
    assert card["validation"]["chosen"] == res.chosen
    # The package scores what its card says: the chosen candidate's validation threshold is the operating one.
    assert pkg.operating_threshold == pytest.approx(res.candidates[res.chosen]["threshold"])
    for pid in ids:
        assert pid not in (res.package_dir / "card.json").read_text()


def test_a_fit_on_a_held_out_stay_is_refused() -> None:
    from vigil_ml.train import build_hgb

    X = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(LeakError):
        adapt_mod._fit(
            build_hgb(0, {"max_iter": 1}), X, np.array([0, 1, 0, 1]), ids=np.array(["a", "a", "b", "b"]), held={"b"}
        )


def test_the_split_holds_out_the_latest_stays_by_admission_or_by_id() -> None:
    df = pd.DataFrame({"patient_id": ["p3", "p1", "p2", "p4"], "hour": 0})
    fit, sel = temporal_split(df, 0.25)
    assert sel == {"p4"} and fit == {"p1", "p2", "p3"}
    df["icu_admitted_at"] = pd.to_datetime(["2026-01-04", "2026-01-03", "2026-01-02", "2026-01-01"], utc=True)
    fit, sel = temporal_split(df, 0.25)
    assert sel == {"p3"}
