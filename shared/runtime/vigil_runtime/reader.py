"""Read a keyed topic's partitions to their current end: the latest value per key (a compacted topic's view).

The scorer restores its encounter states this way from its changelog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_to_end(
    bootstrap: str, topic: str, partitions: Iterable[int], *, timeout_s: float = 60.0
) -> dict[str, bytes | None]:
    """Read partitions from the beginning to their current end; the last value per key wins (a compacted view)."""
    tps = [TopicPartition(topic, p) for p in sorted(set(partitions))]
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_uncommitted",
    )
    await consumer.start()
    out: dict[str, bytes | None] = {}
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        if not pending:
            return out
        await consumer.seek_to_beginning(*pending)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while pending:
            if loop.time() > deadline:
                raise TimeoutError("reading did not reach the end offsets in time")
            batch = await consumer.getmany(*pending, timeout_ms=200, max_records=10_000)
            for records in batch.values():
                for record in records:
                    if record.key is not None:
                        out[record.key.decode()] = record.value
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return out
