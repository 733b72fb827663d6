"""Minimum necessary on topics: a Synthea bundle with one rejected reading, sent on the raw topic, leaves no name,
address or identifier value on any topic Vigil writes (the dead letter names the record, it does not copy it)."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from fastapi.testclient import TestClient

from tests.conftest import ready_within
from vigil_contracts.events import DeadLettered
from vigil_ingest.app import create_app
from vigil_ingest.settings import Settings
from vigil_runtime.kafka_security import KafkaConnection

SYNTHEA = "fhir/synthea/smart-generated-sample-data-r4/Bill_Reinger_0bfeda65-c8ac-4dd7-a46c-d69e665996d4.json"


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value (keys too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def personal_values(patient: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(values no string may contain, values no string may equal) of a Patient resource."""
    contained: set[str] = set()
    for name in patient.get("name", []):
        contained.update([name.get("family", ""), *name.get("given", [])])
    for address in patient.get("address", []):
        contained.update([*address.get("line", []), address.get("city", "")])
    for telecom in patient.get("telecom", []):
        contained.add(telecom.get("value", ""))
    for identifier in patient.get("identifier", []):
        # Synthea's own identifier and its MRN are the resource id itself, which canonical events carry as the
        # patient reference by design (docs/architecture.md); SSN, licence and passport numbers must not travel.
        if identifier.get("value") != patient.get("id"):
            contained.add(identifier["value"])
    equal = {a.get("postalCode", "") for a in patient.get("address", [])} | {patient.get("birthDate", "")}
    return {c for c in contained if len(c) >= 3}, {e for e in equal if e}


async def read_topic(kafka: KafkaConnection, topic: str) -> list[tuple[bytes | None, bytes]]:
    consumer = AIOKafkaConsumer(topic, **kafka.client_kwargs(), auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[tuple[bytes | None, bytes]] = []
    try:
        for _ in range(10):
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out.extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return out


async def topics_with(kafka: KafkaConnection, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(prefix))
    finally:
        await admin.close()


def test_a_synthea_bundle_with_a_rejected_reading_leaves_no_personal_data_on_any_topic(
    settings_env: dict[str, Any], shared_kit: Path
) -> None:
    path = shared_kit / SYNTHEA
    if not path.exists():
        pytest.skip(f"{path} is absent from the kit")
    bundle = json.loads(path.read_text())
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    contained, equal = personal_values(patient)
    assert "Reinger" in contained and "999-43-7348" in contained  # the name and the SSN are what we look for
    bundle = copy.deepcopy(bundle)
    temperature = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and any(c.get("code") == "8331-1" for c in e["resource"]["code"]["coding"])
    )
    temperature["valueQuantity"]["value"] = 99.0  # degrees Celsius: outside the plausible range, rejected
    settings = Settings(**settings_env)

    async def produce() -> None:
        producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
        await producer.start()
        try:
            await producer.send_and_wait(settings.topics.fhir_raw, orjson.dumps(bundle), key=b"synthea")
        finally:
            await producer.stop()

    bootstrap = settings.kafka
    with TestClient(create_app(settings)) as client:
        assert ready_within(client).status_code == 200
        asyncio.run(produce())
        letters: list[DeadLettered] = []
        for _ in range(60):
            letters = [
                DeadLettered.model_validate_json(v)
                for _, v in asyncio.run(read_topic(bootstrap, settings.topics.dead_letter))
            ]
            if letters:
                break
    (letter,) = letters
    assert letter.source_topic == settings.topics.fhir_raw and letter.source_offset == 0
    assert f"Observation/{temperature['id']}" in letter.resource_ids
    assert temperature["id"] in letter.error

    # Every topic of this stack but the raw one (where the EHR itself put the bundle, under its own ACL).
    checked = 0
    for topic in asyncio.run(topics_with(bootstrap, settings.topic_prefix)):
        if topic == settings.topics.fhir_raw:
            continue
        for key, value in asyncio.run(read_topic(bootstrap, topic)):
            texts = list(strings(json.loads(value))) + ([key.decode()] if key else [])
            leaked = [c for c in contained if any(c in t for t in texts)] + [e for e in equal if e in texts]
            assert not leaked, (topic, leaked)
            checked += 1
    assert checked > 10  # the canonical events and the dead letter were all read
