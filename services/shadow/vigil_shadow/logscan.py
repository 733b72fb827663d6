"""Reading topics directly, outside any consumer group: replay, the join's targets, offsets by time.

Nothing here joins a consumer group or commits an offset (``group_id=None``, manual assignment), so reading
never moves a live consumer group's position.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.reader import Record, scan_chunks


async def committed_offsets(kafka: KafkaConnection, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (empty when the group never committed)."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), client_id="vigil-shadow-admin")
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic and meta.offset >= 0}


async def partitions_of(kafka: KafkaConnection, topic: str) -> list[int]:
    """The topic's partition numbers (empty when the topic does not exist)."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), client_id="vigil-shadow-admin")
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = [t for t in described if t.get("topic") == topic and not t.get("error_code")]
    return sorted(int(p["partition"]) for t in found for p in t.get("partitions", []))


async def _consumer(kafka: KafkaConnection) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="vigil-shadow-scan",
    )
    await consumer.start()
    return consumer


async def read_until(
    kafka: KafkaConnection,
    topic: str,
    until: dict[int, int] | None = None,
    *,
    start: dict[int, int] | None = None,
    chunk: int = 5000,
) -> AsyncIterator[list[Record]]:
    """Records of ``topic`` from ``start`` (default: the beginning) up to ``until[partition]`` (exclusive).

    With ``until`` None, up to the current end; partitions missing from a given ``until`` are not read. A chunk at
    a time (:func:`vigil_runtime.reader.scan_chunks`, the one topic reader): memory is one chunk.
    """
    partitions = await partitions_of(kafka, topic)
    if not partitions:
        return  # a topic not created yet has nothing to read (and waiting for its metadata would time out)
    async for records in scan_chunks(
        kafka, topic, partitions, start=start, stop=until, max_records=chunk, timeout_s=None
    ):
        yield records


async def end_offsets(kafka: KafkaConnection, topics: list[str]) -> dict[tuple[str, int], int]:
    """The current end offset of every partition of the topics (only partitions holding records)."""
    wanted = [TopicPartition(t, p) for t in topics for p in await partitions_of(kafka, t)]
    if not wanted:
        return {}
    consumer = await _consumer(kafka)
    try:
        ends = await consumer.end_offsets(wanted)
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): int(o) for tp, o in ends.items() if o > 0}


async def offsets_for_times(kafka: KafkaConnection, topic: str, at: datetime) -> dict[int, int | None]:
    """Per partition, the first offset whose record timestamp (broker arrival time) is at or after ``at``."""
    partitions = await partitions_of(kafka, topic)
    consumer = await _consumer(kafka)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        found = await consumer.offsets_for_times({tp: int(at.timestamp() * 1000) for tp in tps})
        return {tp.partition: (v.offset if v is not None else None) for tp, v in found.items()}
    finally:
        await consumer.stop()
