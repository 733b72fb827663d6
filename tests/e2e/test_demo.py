"""The main job, shortened: `vigil demo` tells the whole story, loses nothing, and its figures are the offline ones.

It runs the real stack (native broker, five service processes) on the bundled sample of real stays, then checks
the summary it writes, renders its report in headless Chromium, and recomputes each model's figures from
`vigil model predict` run as a separate command on the same stays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.browser import render
from vigil import simulate as sim
from vigil.demo import _bedside_view
from vigil_scoring.model_package import default_package_path
from vigil_scoring.physionet import MEASUREMENT_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
STAYS = 40
# Several worktrees on one machine run e2e side by side by shifting every port with VIGIL_TEST_E2E_PORT_OFFSET.
_OFFSET = int(os.environ.get("VIGIL_TEST_E2E_PORT_OFFSET", "0"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("demo")
    cmd = [
        sys.executable,
        "-m",
        "vigil.cli",
        "demo",
        "--stays",
        str(STAYS),
        "--json",
        str(out / "summary.json"),
        "--report",
        str(out / "report.html"),
        "--kafka-port",
        str(29192 + _OFFSET),
        "--port-base",
        str(18101 + _OFFSET),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=dict(os.environ), check=False)
    (out / "demo.log").write_text(done.stdout + done.stderr)
    assert (out / "summary.json").exists(), done.stderr[-4000:]
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    summary["_exit"] = done.returncode
    summary["_dir"] = str(out)
    summary["_log"] = (done.stdout + done.stderr)[-6000:]
    return summary


@pytest.mark.slow
def test_the_demo_succeeds_and_accounts_for_every_entry(demo: dict[str, Any]) -> None:
    assert demo["_exit"] == 0, demo["_log"]
    acc, counts = demo["accounting"], demo["counts"]
    assert acc["zero_loss"] is True
    assert acc["stay_hours_without_live_score"] == 0
    # Every FHIR entry sent got its own outcome from ingest: published, accepted without a reading, or rejected.
    assert sum(acc["ingest_entry_outcomes"].values()) == acc["fhir_entries_sent"]
    assert counts["canonical_observations"] > 0
    assert counts["live_scores_unique"] >= counts["stay_hours_with_data"]
    assert counts["default_model_scores"] == 0, "every live score came from the registry's production model"
    assert sum(counts["outcomes"].values()) == demo["stays"]


@pytest.mark.slow
def test_the_lifecycle_is_governed_by_the_registry(demo: dict[str, Any]) -> None:
    actions = [(e["action"], e["version"]) for e in demo["lifecycle"]]
    assert actions[:3] == [("registered", actions[0][1]), ("stage_changed", actions[0][1]), ("promoted", actions[0][1])]
    assert actions[0][1] != demo["promotion"]["candidate"], "the first production model is not the candidate"
    criteria = demo["promotion"]["eligibility"]["criteria"]
    assert {c["name"] for c in criteria} >= {"auroc_diff_ci_low", "calibration_error", "alert_rate_ratio"}, demo["_log"]
    if demo["promotion"]["promoted"]:
        assert ("promoted", demo["promotion"]["candidate"]) in actions
        assert all(c["passed"] is not False for c in criteria)
        assert demo["rollback_drill"]["rolled_back"] is True
        assert demo["rollback_drill"]["scorer_switched"] is True
    else:
        assert any(c["passed"] is False for c in criteria), "a refusal names the failing criterion"
        assert demo["rollback_drill"]["alert_recorded"] is True


@pytest.mark.slow
def test_figures_equal_vigil_model_predict_on_the_same_stays(demo: dict[str, Any], tmp_path: Path) -> None:
    from vigil_ml.metrics import Cohort, evaluate_score

    sample = pd.read_parquet(sim.SAMPLE)
    checked = 0
    for label, fig in demo["models"].items():
        if fig["agree"] is None:
            continue  # stays sent with an injected drift: their inputs differ from the rows by design
        assert fig["agree"] is True, label
        version = label.split("v")[-1]
        rows = sample[sample["patient_id"].isin(fig["patient_ids"])].sort_values(["patient_id", "hour"])
        rows = rows.reset_index(drop=True)
        data, preds = tmp_path / f"{version}.parquet", tmp_path / f"{version}-pred.parquet"
        rows.to_parquet(data)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "vigil.cli",
                "model",
                "predict",
                "--model",
                str(default_package_path(version)),
                "--data",
                str(data),
                "--out",
                str(preds),
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
            timeout=300,
        )
        risk = pd.read_parquet(preds)["risk"].to_numpy()
        has_data = (rows[list(MEASUREMENT_COLUMNS)].notna().any(axis=1) | (rows["hour"] == 0)).to_numpy()
        enc = {p: p for p in rows["patient_id"]}
        offline = {
            (p, int(h)): float(r)
            for p, h, r, d in zip(rows["patient_id"], rows["hour"], risk, has_data, strict=True)
            if d
        }
        bedside = _bedside_view(rows, enc, offline)
        got = evaluate_score(Cohort.from_frame(rows), bedside, fig["threshold"], n_boot=0)
        assert got["auroc"]["value"] == pytest.approx(fig["streamed"]["auroc"], abs=1e-9)
        assert got["utility"]["value"] == pytest.approx(fig["streamed"]["utility"], abs=1e-9)
        assert int((bedside >= fig["threshold"]).sum()) == fig["alerts_streamed"]
        assert np.isfinite(got["auroc"]["value"])
        checked += 1
    assert checked >= 2, "both the live and the shadow model were checked"


@pytest.mark.slow
@pytest.mark.browser
def test_the_report_reads_in_a_browser(demo: dict[str, Any]) -> None:
    report = Path(demo["_dir"]) / "report.html"
    shot = Path(demo["_dir"]) / "report.png"
    dom = render(report.as_uri(), screenshot=shot)
    assert "Vigil demo: a clinical model's life" in dom
    assert "zero loss: yes" in dom
    assert "Promotion decision and its evidence" in dom
    assert shot.stat().st_size > 20_000
