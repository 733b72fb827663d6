"""The foundation against the real broker: every contract round-trips, bad records go to the dead-letter topic."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faststream import AckPolicy
from faststream.kafka import KafkaMessage

from tests import factories
from vigil_contracts import events as ev
from vigil_contracts.headers import CORRELATION_ID, TRACEPARENT
from vigil_contracts.topics import Topic
from vigil_runtime.kafka import (
    DeadLetters,
    Parsed,
    encode,
    ensure_topics,
    make_broker,
    process_batch,
    raw_batch_decoder,
)
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.producer import BATCH_OFF_LOOP, BATCH_ON_LOOP, AckedProducer
from vigil_runtime.settings import VigilSettings


async def consume(
    kafka: KafkaConnection, topic: str, n: int, timeout: float = 30.0, group: str | None = None
) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, **kafka.client_kwargs(), auto_offset_reset="earliest", group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < n and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


async def test_every_contract_round_trips_through_the_broker(settings_env: dict[str, Any]) -> None:
    settings = VigilSettings(**settings_env)
    created = await ensure_topics(settings)
    assert settings.topics.observations in created
    producer = AckedProducer(settings.kafka, client_id="test")
    await producer.start()
    events = [f() for f in factories.ALL.values()]
    try:
        await producer.publish_all(settings.topics.name(Topic.ALERTS), events)
    finally:
        await producer.stop()
    records = await consume(settings.kafka, settings.topics.name(Topic.ALERTS), len(events))
    received = [ev.any_event_adapter.validate_json(r.value) for r in records]
    assert sorted(e.event_id for e in received) == sorted(e.event_id for e in events)
    by_id = {e.event_id: e for e in received}
    for sent, record in zip(events, records, strict=False):
        assert by_id[sent.event_id] == sent
    assert all(r.key == by_id[ev.any_event_adapter.validate_json(r.value).event_id].key.encode() for r in records)


async def test_a_large_publish_sends_the_records_the_per_record_path_sends(settings_env: dict[str, Any]) -> None:
    """Batches built off the loop (from ``BATCH_OFF_LOOP`` events) and on it (from ``BATCH_ON_LOOP``) hold the
    records the per-record path sends: same partition, order and headers."""
    settings = VigilSettings(**settings_env)
    await ensure_topics(settings)
    topics = settings.topics
    batched_topic, per_record_topic = topics.observations, topics.name(Topic.ALERTS)
    on_loop_topic = topics.name(Topic.COMPARISONS)
    events: list[ev.Event] = [
        factories.observation(
            encounter=f"enc-{i % 97}",
            value=float(i),
            source=factories.source(resource_id=f"obs-{i}"),
            observed_at=factories.T0 + timedelta(seconds=i),
        )
        for i in range(BATCH_OFF_LOOP + 500)
    ]
    events += [
        factories.encounter(event_id=ev.deterministic_id("enc", f"enc-{i}", "1"), key=f"enc-{i}") for i in range(97)
    ]
    producer = AckedProducer(settings.kafka, client_id="test-batched")
    await producer.start()
    try:
        await producer.publish_all(batched_topic, events)  # one call: batches built off the loop
        for at in range(0, len(events), 1000):  # between the thresholds: batches built on the loop
            await producer.publish_all(on_loop_topic, events[at : at + 1000])
        step = BATCH_ON_LOOP - 1
        for at in range(0, len(events), step):  # under both thresholds: the per-record path
            await producer.publish_all(per_record_topic, events[at : at + step])
    finally:
        await producer.stop()
    batched = await consume(settings.kafka, batched_topic, len(events))
    on_loop = await consume(settings.kafka, on_loop_topic, len(events))
    per_record = await consume(settings.kafka, per_record_topic, len(events))

    def seen(records: list[Any]) -> dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]]:
        by_partition: dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]] = {}
        for r in records:  # the correlation id and traceparent differ per publish call; type and version do not
            kind = [(k, v) for k, v in r.headers if k not in (CORRELATION_ID, TRACEPARENT)]
            by_partition.setdefault(r.partition, []).append((r.key, r.value, kind))
        return by_partition

    assert len(batched) == len(on_loop) == len(per_record) == len(events)
    assert seen(batched) == seen(per_record)  # each partition: the same records, in the same order
    assert seen(on_loop) == seen(per_record)
    assert len(seen(batched)) == settings.partitions
    assert {k for r in [*batched, *on_loop] for k, _ in r.headers} >= {CORRELATION_ID, TRACEPARENT}


async def test_topics_have_configured_partitions_and_compaction(settings_env: dict[str, Any]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    settings = VigilSettings(**{**settings_env, "partitions": 4})
    await ensure_topics(settings)
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs())
    await admin.start()
    try:
        names = [settings.topics.observations, settings.topics.scorer_state]
        described = await admin.describe_topics(names)
        for _ in range(50):  # creation is asynchronous: a new topic's partitions can take a moment to be described
            if all(len(t["partitions"]) == 4 for t in described):
                break
            await asyncio.sleep(0.1)
            described = await admin.describe_topics(names)
        assert all(len(t["partitions"]) == 4 for t in described), described
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topics.scorer_state)])
        resource = configs[0].to_object()["resources"][0]
        entries = {c["config_names"]: c["config_value"] for c in resource["config_entries"]}
        assert entries["cleanup.policy"] == "compact"
    finally:
        await admin.close()


@pytest.mark.parametrize("bad", [b"{not json", b'{"type": "observation.recorded"}', b"\xff\xfe binary"])
async def test_malformed_record_is_dead_lettered_and_consumption_goes_on(
    settings_env: dict[str, Any], bad: bytes
) -> None:
    settings = VigilSettings(**settings_env)
    await ensure_topics(settings)
    topics = settings.topics
    broker = make_broker(settings, client_id="test-dlq")
    publisher = AckedProducer(settings.kafka, client_id="test-dlq-out")
    dead_letters = DeadLetters(publisher, topics.dead_letter, service="test")
    seen: list[str] = []

    async def handle(items: list[Parsed[Any]]) -> list[Any]:
        seen.extend(p.event.event_id for p in items)
        return []

    @broker.subscriber(
        topics.observations,
        group_id="g-test",
        batch=True,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_batch_decoder,
        max_records=100,
    )
    async def on_batch(body: list[bytes], message: KafkaMessage) -> None:
        await process_batch(message, ev.canonical_event_adapter, handle, dead_letters)

    good_before = factories.observation(value=80.0, source=factories.source(resource_id="a"))
    good_after = factories.observation(value=81.0, source=factories.source(resource_id="b"))
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
    await producer.start()
    try:
        for value in (encode(good_before), bad, encode(good_after)):
            await producer.send_and_wait(topics.observations, value, key=b"enc-1")
    finally:
        await producer.stop()

    await publisher.start()
    await broker.start()
    try:
        for _ in range(100):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.2)
    finally:
        await broker.stop()
        await publisher.stop()
    assert seen == [good_before.event_id, good_after.event_id]
    letters = await consume(settings.kafka, topics.dead_letter, 1)
    assert len(letters) == 1
    letter = ev.DeadLettered.model_validate_json(letters[0].value)
    assert letter.source_topic == topics.observations
    assert letter.source_offset == 1
    assert letter.service == "test"
    assert letter.error
    # Minimum necessary: the letter points at the record (topic, partition, offset) instead of copying it.
    assert bad.decode("utf-8", "replace") not in letter.model_dump_json()
