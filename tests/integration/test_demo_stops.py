"""The demo against an ingest that keeps failing: its streaming step stops within its deadline, the stop names the
stay (by the simulator's handle), the bundle and the error, and the summary and report it still writes never
claim zero loss.

The ingest is a mock on a real socket (tests/mock_ingest.py); the topics are on the real test broker.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from tests.mock_ingest import Behaviour, MockIngest
from vigil.demo import Deadlines, Demo, DemoOptions
from vigil.demo.clients import kafka_options
from vigil.demo.observe import TopicWatcher
from vigil.demo.steps import DemoContext, PlanCohort, Step, StreamPhase
from vigil.kafka_local import LocalCluster


class ReadTopics(Step):
    """Stands in for StartStack: only the topic reader, on the test broker (no services run)."""

    phase = "reading the topics"

    async def run(self, ctx: DemoContext) -> None:
        # The secured broker creates no topic on first use: the run's topics and ACLs, as StartStack's up() does.
        await asyncio.to_thread(ctx.stack.cluster.provision, ctx.topics, partitions=1)
        watcher = TopicWatcher(kafka_options(ctx.stack), ctx.topics)
        await watcher.start()
        ctx.watcher = watcher


async def run_demo_against(
    behaviour: object,
    kafka_cluster: LocalCluster,
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    deadlines: Deadlines,
) -> tuple[dict[str, object], str, str]:
    broker_secrets = kafka_cluster.secrets.directory.parent  # read before VIGIL_HOME moves
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path / "home"))
    # The demo's home is the test's, its secrets the test broker's (the CA and the principals' passwords).
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "secrets").symlink_to(broker_secrets)
    ingest = MockIngest(behaviour)  # type: ignore[arg-type]
    url = await ingest.start()
    options = DemoOptions(
        stays=6,
        json_out=tmp_path / "summary.json",
        report_out=tmp_path / "report.html",
        keep=True,  # nothing of a stack to stop: the broker is the test session's
        kafka_port=int(kafka_bootstrap.split(",")[0].rsplit(":", 1)[1]),
        port_base=int(url.rsplit(":", 1)[1]),  # the stack's ingest URL is the mock's
        deadlines=deadlines,
    )
    out = io.StringIO()
    demo = Demo(options, Console(file=out, width=200), steps=(ReadTopics(), PlanCohort(), StreamPhase(shadow=True)))
    try:
        summary = await asyncio.wait_for(demo.run(), timeout=120)
    finally:
        await ingest.stop()
    return summary, out.getvalue(), (tmp_path / "report.html").read_text()


@pytest.mark.slow
async def test_an_ingest_that_keeps_failing_stops_the_demo_naming_the_error(
    kafka_cluster: LocalCluster, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(n: int) -> Behaviour:
        return "ok" if n <= 3 else "drop"

    summary, console, page = await run_demo_against(
        broken, kafka_cluster, kafka_bootstrap, tmp_path, monkeypatch, Deadlines()
    )
    failed = str(summary["failed"])
    assert failed.startswith("streaming (production + shadow): streaming to ingest stopped: sending stay #")
    assert "Bundle/" in failed and "RemoteProtocolError" in failed and "after 5 attempts" in failed
    accounting = summary["accounting"]
    assert isinstance(accounting, dict)
    assert accounting["zero_loss"] is False
    assert accounting["fhir_entries_without_outcome"] > 0
    assert accounting["transport_errors"] == {"RemoteProtocolError": accounting["send_retries"] + 1}
    assert sum(accounting["ingest_entry_outcomes"].values()) < accounting["fhir_entries_planned"]
    assert "the demo stopped while streaming" in console and "zero loss" in console and "NO" in console
    assert json.loads((tmp_path / "summary.json").read_text())["failed"] == failed
    assert "zero loss: NO" in page and "Stopped: streaming" in page


@pytest.mark.slow
async def test_an_ingest_that_never_answers_stops_the_demo_at_the_streaming_deadline(
    kafka_cluster: LocalCluster, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def silent(n: int) -> Behaviour:
        return "hang"

    summary, _, _ = await run_demo_against(
        silent, kafka_cluster, kafka_bootstrap, tmp_path, monkeypatch, Deadlines(stream_s=3)
    )
    assert "the simulation did not finish within 3s: 0 of" in str(summary["failed"])
    accounting = summary["accounting"]
    assert isinstance(accounting, dict)
    assert accounting["zero_loss"] is False
    assert accounting["fhir_entries_without_outcome"] == accounting["fhir_entries_planned"] > 0
