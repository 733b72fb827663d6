"""The simulator through a front that drops one answer of the real ingest (ingest took the bundle, the sender never
heard): the bundle is resent, ingest deduplicates it, and the accounting is exact: every planned entry has its
outcome, and the observations topic holds exactly the events of the planned bundles, each once."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
import pytest
import uvicorn

from tests.factories import TEST_TOKEN
from tests.integration.test_ingest_service import drain
from tests.mock_ingest import Behaviour, MockIngest
from vigil import simulate as sim
from vigil_contracts.events import canonical_event_adapter
from vigil_ingest.app import create_app
from vigil_ingest.mapping import Mapper
from vigil_ingest.settings import Settings
from vigil_scoring.physionet import ICU_EPOCH


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_a_lost_acknowledgement_is_resent_and_deduplicated_with_exact_accounting(
    settings_env: dict[str, Any],
) -> None:
    settings = Settings(**settings_env, consume_raw_topic=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None))
    serving = asyncio.create_task(server.serve())
    front: MockIngest | None = None
    try:
        while not server.started:
            assert not serving.done(), "ingest did not start"
            await asyncio.sleep(0.1)

        def lose_the_sixth_answer(n: int) -> Behaviour:
            return "forward-then-drop" if n == 6 else "forward"

        front = MockIngest(lose_the_sixth_answer, upstream=f"http://127.0.0.1:{port}")
        url = await front.start()
        plan = sim.load_stays(None, stays=3, seed=5, arrival_hours=2.0, id_prefix="fault")
        report = sim.SimulationReport()
        items = sim.timeline(plan, drifts=[], outcome_delay_hours=6.0, start=ICU_EPOCH, report=report)
        sender = sim.HttpSender(url, report, token=TEST_TOKEN, retry=sim.RetryPolicy(attempts=3, backoff_s=0.05))
        outcomes: list[Any] = []

        async def publish_outcome(outcome: Any) -> Any:
            outcomes.append(outcome)
            return asyncio.sleep(0)

        await asyncio.wait_for(
            sim.run_timeline(items, sender=sender, publish_outcome=publish_outcome, report=report), timeout=120
        )
    finally:
        if front is not None:
            await front.stop()
        server.should_exit = True
        await serving

    assert report.transport_errors == {"RemoteProtocolError": 1} and report.retries == 1
    assert max(front.seen.values()) == 2 and sum(front.seen.values()) == report.bundles_planned + 1
    assert report.bundles_acknowledged == report.bundles_planned == report.bundles_posted
    assert report.entries_planned == report.entries_sent == report.entries_acknowledged
    assert report.entries_unacknowledged == 0
    # The resent bundle's entries were already published: ingest answers them 200 (duplicate), not 201 again.
    assert report.entry_outcomes["200"] > 0 and set(report.entry_outcomes) <= {"200", "201"}
    bundles = [item.payload for item in items if item.kind == "bundle"]
    mapper = Mapper()  # one mapper over the feed in order, as ingest saw it
    expected = {e.event_id for b in bundles for e in mapper.map_bytes(orjson.dumps(b)).events}
    records = await drain(settings.kafka, settings.topics.observations, expect=len(expected))
    got = [canonical_event_adapter.validate_json(r.value).event_id for r in records]
    assert sorted(got) == sorted(expected), "every planned event on the topic exactly once"
