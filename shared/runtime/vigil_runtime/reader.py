"""Read a topic's partitions from the beginning to their current end.

:func:`read_to_end` keeps the latest value per key (a compacted topic's view: the scorer restores its encounter
states this way from its changelog); :func:`scan_to_end` hands every record over, in partition order (an
analyst's replay of a range: ``vigil dataset build`` materialises training rows from the canonical topics).
Both connect with the caller's :class:`KafkaConnection` (its principal and security settings).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
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


async def scan_to_end(
    kafka: KafkaConnection,
    topic: str,
    partitions: Iterable[int] | None = None,
    *,
    timeout_s: float = 60.0,
) -> AsyncIterator[Record]:
    """Every record of the partitions (default: all of the topic's) up to the end offsets seen at the start.

    Records appended after the start are not waited for: a scan is a snapshot of the range, not a subscription.
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
        tps = [TopicPartition(topic, p) for p in sorted(set(partitions))]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        if not pending:
            return
        await consumer.seek_to_beginning(*pending)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while pending:
            if loop.time() > deadline:
                raise TimeoutError("reading did not reach the end offsets in time")
            batch = await consumer.getmany(*pending, timeout_ms=200, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield Record(tp.partition, record.offset, record.key, record.value, record.timestamp)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()


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
