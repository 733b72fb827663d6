"""Read a topic's partitions from the beginning to their current end.

:func:`scan_chunks` is the one topic reader: a range of offsets per partition, handed over a chunk at a time (shadow's
replay, ``vigil dataset build``). :func:`read_to_end` keeps the latest value per key (a compacted topic's view: the
scorer, shadow and drift restore their states this way from their changelogs); :func:`scan_to_end` hands every
record over, in partition order.
Both connect with the caller's :class:`KafkaConnection` (its principal and security settings).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from vigil_runtime.kafka_security import KafkaConnection


@dataclass(frozen=True, slots=True)
class Record:
    """One record as read: where it sits, its key, value and broker timestamp (epoch milliseconds)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


async def scan_chunks(
    kafka: KafkaConnection,
    topic: str,
    partitions: Iterable[int] | None = None,
    *,
    start: Mapping[int, int] | None = None,
    stop: Mapping[int, int] | None = None,
    max_records: int = 10_000,
    timeout_s: float | None = 60.0,
) -> AsyncIterator[list[Record]]:
    """The records of a range, a chunk (at most ``max_records``) at a time, in partition order.

    The range is per partition ``[start, stop)``: ``start`` defaults to the beginning, ``stop`` to the end offsets
    seen at the start (records appended later are not waited for: a scan is a snapshot of the range, not a
    subscription). Partitions default to all of the topic's; with ``stop`` given, partitions it does not name are
    not read. Nothing joins a group or commits. Memory is one chunk, whatever the range: callers that process each
    chunk before asking for the next read any retention in bounded memory.
    """
    # Without given partitions the consumer is created subscribed to the topic: starting it then waits for the
    # topic's metadata, which names the partitions; the subscription is dropped for a manual assignment.
    consumer = AIOKafkaConsumer(
        *([topic] if partitions is None else []),
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_uncommitted",
    )
    await consumer.start()
    try:
        if partitions is None:
            partitions = consumer.partitions_for_topic(topic) or set()
            consumer.unsubscribe()
        chosen = sorted(set(partitions))
        if stop is not None:
            chosen = [p for p in chosen if p in stop]
        tps = [TopicPartition(topic, p) for p in chosen]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        limit = {tp: min(int(ends[tp]), int(stop[tp.partition])) if stop is not None else int(ends[tp]) for tp in tps}
        first = {tp: int((start or {}).get(tp.partition) or 0) for tp in tps}
        pending = {tp for tp in tps if limit[tp] > first[tp]}
        for tp in pending:
            if first[tp] > 0:
                consumer.seek(tp, first[tp])
            else:
                await consumer.seek_to_beginning(tp)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s if timeout_s is not None else None
        while pending:
            if deadline is not None and loop.time() > deadline:
                raise TimeoutError("reading did not reach the end offsets in time")
            batch = await consumer.getmany(*pending, timeout_ms=200, max_records=max_records)
            out = [
                Record(tp.partition, r.offset, r.key, r.value, r.timestamp)
                for tp, records in batch.items()
                for r in records
                if r.offset < limit[tp]
            ]
            for tp in list(pending):
                if await consumer.position(tp) >= limit[tp]:
                    pending.discard(tp)
            if out:
                yield out
    finally:
        await consumer.stop()


async def scan_to_end(
    kafka: KafkaConnection,
    topic: str,
    partitions: Iterable[int] | None = None,
    *,
    timeout_s: float = 60.0,
) -> AsyncIterator[Record]:
    """Every record of the partitions (default: all of the topic's) up to the end offsets seen at the start."""
    async for chunk in scan_chunks(kafka, topic, partitions, timeout_s=timeout_s):
        for record in chunk:
            yield record


async def read_to_end(
    kafka: KafkaConnection, topic: str, partitions: Iterable[int], *, timeout_s: float = 60.0
) -> dict[str, bytes | None]:
    """Read partitions from the beginning to their current end; the last value per key wins (a compacted view)."""
    parts = list(partitions)
    out: dict[str, bytes | None] = {}
    if not parts:
        return out
    async for record in scan_to_end(kafka, topic, parts, timeout_s=timeout_s):
        if record.key is not None:
            out[record.key.decode()] = record.value
    return out
