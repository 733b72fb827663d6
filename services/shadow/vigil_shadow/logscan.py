"""Reading topics directly, outside any consumer group: state rebuild at start, and replay.

Nothing here joins a consumer group or commits an offset (``group_id=None``, manual assignment), so reading
never moves a live consumer group's position.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from vigil_runtime.kafka_security import KafkaConnection


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
    kafka: KafkaConnection, topic: str, until: dict[int, int] | None = None, *, chunk: int = 5000
) -> AsyncIterator[list[ConsumerRecord[Any, Any]]]:
    """Records of ``topic`` from the beginning up to ``until[partition]`` (exclusive).

    With ``until`` None, up to the current end; partitions missing from a given ``until`` are not read.
    """
    partitions = await partitions_of(kafka, topic)
    if not partitions or (until is not None and not any(until.get(p, 0) > 0 for p in partitions)):
        return  # nothing to read (and a consumer stopped without an assignment can raise in aiokafka 0.14)
    consumer = await _consumer(kafka)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        if until is None:
            ends = await consumer.end_offsets(tps)
            stop = {tp.partition: ends[tp] for tp in tps}
        else:
            stop = {p: o for p, o in until.items() if p in partitions}
        tps = [tp for tp in tps if stop.get(tp.partition, 0) > 0]
        if not tps:
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps}
        for tp in list(remaining):
            if await consumer.position(tp) >= stop[tp.partition]:
                remaining.discard(tp)
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=chunk)
            out: list[ConsumerRecord[Any, Any]] = []
            for tp, records in batch.items():
                limit = stop[tp.partition]
                out.extend(r for r in records if r.offset < limit)
                if records and records[-1].offset >= limit - 1:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= stop[tp.partition]:
                    remaining.discard(tp)
            if out:
                yield out
    finally:
        await consumer.stop()


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
