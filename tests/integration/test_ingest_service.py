"""Ingest against the real broker: a posted or streamed bundle gives exactly its canonical events; bad input gives
an OperationOutcome or a dead letter and nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi.testclient import TestClient

from tests.conftest import ready_within
from tests.factories import AUTH
from vigil_contracts.events import DeadLettered, canonical_event_adapter
from vigil_ingest.app import create_app
from vigil_ingest.mapping import Mapper
from vigil_ingest.settings import Settings
from vigil_runtime.kafka_security import KafkaConnection

TESTDATA = Path(__file__).resolve().parents[1] / "testdata" / "fhir"
FHIR = {"content-type": "application/fhir+json"}


async def drain(
    kafka: KafkaConnection, topic: str, *, expect: int, settle: float = 2.0, timeout: float = 30.0
) -> list[Any]:
    """Read a topic from the start until ``expect`` records arrived, then ``settle`` more seconds for extras."""
    consumer = AIOKafkaConsumer(topic, **kafka.client_kwargs(), auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settle_until: float | None = None
        while loop.time() < deadline:
            if len(out) >= expect and settle_until is None:
                settle_until = loop.time() + settle
            if settle_until is not None and loop.time() > settle_until:
                break
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


def expected_events(payload: bytes) -> list[Any]:
    return Mapper().map_bytes(payload).events


def test_posted_bundle_yields_exactly_its_events(settings_env: dict[str, Any]) -> None:
    settings = Settings(**settings_env, consume_raw_topic=False)
    bundle = (TESTDATA / "icu-bundle.json").read_bytes()
    expected = expected_events(bundle)
    with TestClient(create_app(settings), headers=AUTH) as client:
        assert client.get("/ready").status_code == 200
        r = client.post("/fhir", content=bundle, headers=FHIR)
        assert r.status_code == 200
        assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201", "201", "200", "201"]
        # malformed input: an OperationOutcome and nothing published
        bad = client.post("/fhir/Observation", content=b'{"resourceType": "Observation", ', headers=FHIR)
        assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
        rejected = client.post("/fhir/Observation", content=b'{"resourceType": "Observation"}', headers=FHIR)
        assert rejected.status_code in (200, 422) and rejected.json()["resourceType"] == "OperationOutcome"
        # the same bundle again: 200s, nothing new on the topic
        again = client.post("/fhir", content=bundle, headers=FHIR)
        assert all(e["response"]["status"].startswith("200") for e in again.json()["entry"])
    records = asyncio.run(drain(settings.kafka, settings.topics.observations, expect=len(expected)))
    got = [canonical_event_adapter.validate_json(r.value) for r in records]
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in expected)
    by_id = {e.event_id: e for e in expected}
    for record, event in zip(records, got, strict=True):
        assert record.key == event.key.encode()
        assert event.model_dump(exclude={"occurred_at"}) == by_id[event.event_id].model_dump(exclude={"occurred_at"})


def test_raw_topic_bundle_and_dead_letters(settings_env: dict[str, Any]) -> None:
    settings = Settings(**settings_env)
    bundle = (TESTDATA / "icu-bundle.json").read_bytes()
    expected = expected_events(bundle)
    no_time = orjson.dumps(
        {
            "resourceType": "Observation",
            "id": "no-time",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "valueQuantity": {"value": 80, "unit": "/min"},
        }
    )
    bad = [b"{not json", b"[1, 2, 3]", no_time]

    async def produce() -> None:
        producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
        await producer.start()
        try:
            for value in (bad[0], bundle, bad[1], bad[2]):
                await producer.send_and_wait(settings.topics.fhir_raw, value, key=b"integration")
        finally:
            await producer.stop()

    with TestClient(create_app(settings), headers=AUTH) as client:
        assert ready_within(client).status_code == 200
        asyncio.run(produce())
        records = asyncio.run(drain(settings.kafka, settings.topics.observations, expect=len(expected)))
        letters = asyncio.run(drain(settings.kafka, settings.topics.dead_letter, expect=3))
    assert sorted(canonical_event_adapter.validate_json(r.value).event_id for r in records) == sorted(
        e.event_id for e in expected
    )
    parked = sorted((DeadLettered.model_validate_json(r.value) for r in letters), key=lambda d: d.source_offset or 0)
    assert [d.source_offset for d in parked] == [0, 2, 3]
    assert all(b.decode() not in d.model_dump_json() for d, b in zip(parked, bad, strict=True))  # no payloads
    assert parked[2].resource_ids == ["Observation/no-time"]
    assert "Invalid JSON" in parked[0].error or "invalid" in parked[0].error.lower()
    assert parked[1].error == "Input should be an object"
    assert parked[2].error == "Observation/no-time: no effective time and no issued time"
    assert all(d.service == "ingest" and d.source_topic == settings.topics.fhir_raw for d in parked)
