"""Follow one observation on the real broker: a FHIR POST's trace id and correlation id reach its scores' headers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from bench.support import package_path
from tests.factories import AUTH
from vigil_contracts import headers as h
from vigil_ingest.app import create_app as create_ingest
from vigil_ingest.settings import Settings as IngestSettings
from vigil_runtime.kafka import ensure_topics
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.tracing import trace_id_of
from vigil_scorer.app import create_app as create_scorer
from vigil_scorer.settings import Settings as ScorerSettings

TESTDATA = Path(__file__).resolve().parents[1] / "testdata" / "fhir"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def first_records(kafka: KafkaConnection, topic: str, timeout: float = 60.0) -> list[Any]:
    """The records of ``topic`` from its start, once at least one has arrived."""
    consumer = AIOKafkaConsumer(topic, **kafka.client_kwargs(), auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            records = [r for records in batch.values() for r in records]
            if records:
                return records
        raise AssertionError(f"nothing on {topic} within {timeout} s")
    finally:
        await consumer.stop()


async def wait_ready(client: httpx.AsyncClient, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (await client.get("/ready")).status_code != 200:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError((await client.get("/ready")).json())
        await asyncio.sleep(0.2)


async def test_the_posts_trace_id_and_correlation_id_are_on_the_resulting_scores(
    settings_env: dict[str, Any], tmp_path: Path
) -> None:
    ingest_settings = IngestSettings(**settings_env, consume_raw_topic=False)
    scorer_settings = ScorerSettings(
        **settings_env,
        group_id=f"scorer-{tmp_path.name}",
        registry_url="http://127.0.0.1:9",  # nothing listens
        # Development mode: with no registry only the bundled default model can score (refused outside development).
        development=True,
        default_model_path=package_path("1"),
        model_cache_dir=tmp_path / "models",
    )
    await ensure_topics(ingest_settings)
    ingest, scorer = create_ingest(ingest_settings), create_scorer(scorer_settings)
    bundle = (TESTDATA / "icu-bundle.json").read_bytes()
    async with (
        ingest.router.lifespan_context(ingest),
        scorer.router.lifespan_context(scorer),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=ingest), base_url="http://ingest", headers=AUTH) as http,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=scorer), base_url="http://scorer", headers=AUTH) as probe,
    ):
        await wait_ready(http)
        await wait_ready(probe)
        answer = await http.post(
            "/fhir",
            content=bundle,
            headers={"content-type": "application/fhir+json", "traceparent": TRACEPARENT, "X-Correlation-ID": "t-1"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Correlation-ID"] == "t-1"
        scores = await first_records(scorer_settings.kafka, scorer_settings.topics.scores_live)
    observations = await first_records(ingest_settings.kafka, ingest_settings.topics.observations)

    for records, event_types in (
        (observations, {"observation.recorded", "encounter.recorded"}),
        (scores, {"risk.scored"}),
    ):
        for record in records:
            headers = dict(record.headers)
            assert [name for name, _ in record.headers] == list(h.HEADER_NAMES)
            assert headers[h.EVENT_TYPE].decode() in event_types
            assert headers[h.SCHEMA_VERSION] == b"1"
            assert headers[h.CORRELATION_ID] == b"t-1"
            assert trace_id_of(headers[h.TRACEPARENT]) == TRACE_ID
