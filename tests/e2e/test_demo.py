"""The main job, shortened: `vigil demo` tells the whole story, loses nothing, and its figures are the offline ones.

It runs the real stack (native broker, five service processes) on the bundled sample of real stays, then checks
the summary it writes, renders its report in headless Chromium, and recomputes each model's figures from
`vigil model predict` run as a separate command on the same stays. A real Prometheus (Debian's package) scrapes
the stack all along, with the alert rules of deploy/prometheus; afterwards every query of the Grafana dashboard
and of the alert rules returns data through Prometheus' HTTP API.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import yaml

from tests.browser import render
from vigil import simulate as sim
from vigil.demo import _bedside_view
from vigil_scoring.model_package import default_package_path
from vigil_scoring.physionet import MEASUREMENT_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
STAYS = 40
# Several worktrees on one machine run e2e side by side by shifting every port with VIGIL_TEST_E2E_PORT_OFFSET.
_OFFSET = int(os.environ.get("VIGIL_TEST_E2E_PORT_OFFSET", "0"))
KAFKA_PORT = 29192 + _OFFSET
PORT_BASE = 18101 + _OFFSET
# Its own stack and broker, never the session broker: lane B of `make test` (scripts/test.sh), beside lane A.
pytestmark = pytest.mark.own_cluster
PROMETHEUS_PORT = 19190 + _OFFSET
SERVICES = ("ingest", "scorer", "shadow", "drift", "registry")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """A Prometheus scraping the demo's stack every second with the project's alert rules (None if not installed)."""
    binary = shutil.which("prometheus")
    if binary is None:
        yield None
        return
    home = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ROOT / "deploy" / "prometheus" / "alerts.yml")]
    config["scrape_configs"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{PORT_BASE + i}" for i in range(len(SERVICES))]}
    ]
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (home / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{PROMETHEUS_PORT}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, prometheus: str | None) -> Iterator[dict[str, Any]]:
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
        str(KAFKA_PORT),
        "--port-base",
        str(PORT_BASE),
        "--keep",  # for Prometheus' queries after the story; stopped at the end of the module
    ]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=dict(os.environ), check=False
        )
        (out / "demo.log").write_text(done.stdout + done.stderr)
        assert (out / "summary.json").exists(), done.stderr[-4000:]
        summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
        summary["_exit"] = done.returncode
        summary["_dir"] = str(out)
        summary["_log"] = (done.stdout + done.stderr)[-6000:]
        yield summary
    finally:
        subprocess.run(
            [sys.executable, "-m", "vigil.cli", "down", "--kafka-port", str(KAFKA_PORT), "--port-base", str(PORT_BASE)],
            cwd=ROOT,
            capture_output=True,
            timeout=180,
            check=False,
        )


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
def test_the_sites_own_outcomes_become_a_shadow_candidate_staged_by_the_adapt_principal(demo: dict[str, Any]) -> None:
    ad = demo["adaptation"]
    # Every streamed stay's outcome came back from the topics as a labelled stay of the dataset.
    assert ad["dataset"]["labelled_stays"] == demo["stays"], ad
    assert len(ad["dataset"]["content_sha256"]) == 64
    assert ad["fit_stays"] + ad["selection_stays"] == demo["stays"]
    assert ad["stage"] == "shadow"
    v = ad["version"]
    steps = [(e["action"], e["to"], e["actor"]) for e in demo["lifecycle"] if e["version"] == v]
    assert ("registered", "registered", "svc-adapt") in steps and ("stage_changed", "shadow", "svc-adapt") in steps
    # A demo-sized sample cannot show a gain, and the summary says so.
    assert "cannot show" in ad["what_it_shows"]
    if ad["selection_stays"] < 200:
        assert ad["chosen"] == "recalibrated"


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


def _comparison_stripped(expr: str) -> str:
    """An alert rule's expression without its final threshold: the series it judges (data even when not firing)."""
    return re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[-\d.e]+\s*$", "", expr.strip())


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=30)
    body = r.json()
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def _exercise_refusals_and_dead_letters(demo: dict[str, Any]) -> None:
    """What a healthy demo does not do: a malformed POST (400), an implausible reading (422 entry) and a record
    that does not parse on the observations topic (parked by every consumer), so their panels have data too."""
    from vigil.stack import Stack

    stack = Stack(kafka_port=KAFKA_PORT, port_base=PORT_BASE)  # the demo's stack: its secrets, its broker
    ingest = f"http://127.0.0.1:{PORT_BASE}"
    # As the EHR (the simulator's token): refusals for what is sent, not for who sends it.
    fhir = {"content-type": "application/fhir+json", "authorization": f"Bearer {stack.token('simulator')}"}
    assert httpx.post(ingest, content=b"{not json", headers=fhir).status_code == 400
    stay = sim.load_stays(None, stays=1, seed=99, id_prefix="prom")[0]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            sim._entry(r)
            for r in (
                sim.patient_resource(stay),
                sim.encounter_resource(stay, finished=False),
                sim.observation_resource(stay, "HR", 0, 4000.0),
            )
        ],
    }
    r = httpx.post(ingest, content=orjson.dumps(bundle), headers=fhir)
    assert r.status_code < 300 and "422" in r.text, r.text[:500]

    async def park() -> None:
        from aiokafka import AIOKafkaProducer

        # As the administrator: no principal of the stack may write garbage to the observations topic.
        producer = AIOKafkaProducer(**stack.cluster.connection().client_kwargs(), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(f"{demo['topic_prefix']}observations", b"not an event", key=b"prom")
        finally:
            await producer.stop()

    import asyncio

    asyncio.run(park())


@pytest.mark.slow
def test_prometheus_answers_every_dashboard_and_alert_query(demo: dict[str, Any], prometheus: str | None) -> None:
    if prometheus is None:
        pytest.skip("prometheus is missing: `bash scripts/install-system-deps.sh` installs Debian's prometheus package")
    assert demo["_exit"] == 0, demo["_log"]
    _exercise_refusals_and_dead_letters(demo)
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "vigil.json").read_text())
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    queries = {f"panel {p['title']!r} {t['refId']}": t["expr"] for p in dashboard["panels"] for t in p["targets"]}
    queries |= {f"alert {r['alert']}": _comparison_stripped(r["expr"]) for g in rules["groups"] for r in g["rules"]}
    # Prometheus scrapes every second and evaluates the rules every second: a few seconds for the last records.
    empty: dict[str, str] = dict(queries)
    deadline = time.monotonic() + 60
    while empty and time.monotonic() < deadline:
        empty = {name: expr for name, expr in empty.items() if not _query(prometheus, expr)}
        if empty:
            time.sleep(2)
    assert not empty, f"queries without data: {json.dumps(empty, indent=1)}"
    up = _query(prometheus, 'up{job="vigil"}')
    assert sorted(float(s["value"][1]) for s in up) == [1.0] * len(SERVICES)


@pytest.mark.slow
def test_keep_leaves_the_console_up_with_a_reviewers_sign_in(demo: dict[str, Any]) -> None:
    kept = demo["kept"]
    assert kept["console"] == f"http://127.0.0.1:{PORT_BASE + 4}/ui"
    assert kept["stop"] == f"vigil down --kafka-port {KAFKA_PORT} --port-base {PORT_BASE}"
    token = Path(kept["reviewer"]["token_file"]).read_text().strip()
    assert token not in demo["_log"], "the token's file is printed, never the token"
    assert kept["console"] in demo["_log"] and kept["reviewer"]["token_file"] in demo["_log"]
    # The stack is still up: the reviewer signs in to the console with the token from that file.
    with httpx.Client(base_url=kept["console"].removesuffix("/ui"), follow_redirects=False, timeout=30) as client:
        page = client.get("/ui/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert page.status_code == 200 and csrf is not None
        signed_in = client.post("/ui/signin", data={"token": token, "csrf": csrf.group(1), "next": "/ui/models"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/models"
        assert "dr-alice" in client.get("/ui/models").text
