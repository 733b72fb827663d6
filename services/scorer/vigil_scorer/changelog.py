"""The scorer's state changelog: a compacted topic keyed by encounter, one partition per observations partition.

An encounter's snapshot is written to the changelog partition with the same number as the observations partition
its events come from, so a process that is assigned observations partition ``p`` restores its states by reading
changelog partition ``p`` to its end. Evicted encounters get a tombstone (null value) so compaction forgets them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from vigil_common.kafka_security import KafkaConnection

log = logging.getLogger(__name__)


class KafkaSink:
    """One idempotent, acks=all producer for the scorer's outputs (scores and changelog records).

    A raw aiokafka producer rather than the FastStream publisher: the hot path publishes thousands of records a
    second and needs explicit partitions and null values (tombstones).
    """

    def __init__(self, kafka: KafkaConnection, *, client_id: str, linger_ms: int = 0) -> None:
        self.kafka = kafka
        self.client_id = client_id
        # Each batch sends all its records and then waits for them: nothing more comes while it waits, so lingering
        # would only add to every score's latency.
        self.linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None

    @property
    def producer(self) -> AIOKafkaProducer:
        """The started producer."""
        if self._producer is None:
            raise RuntimeError("KafkaSink not started")
        return self._producer

    async def start(self) -> None:
        """Connect (aiokafka wants its producer made inside the running loop)."""
        self._producer = AIOKafkaProducer(
            **self.kafka.client_kwargs(),
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            max_batch_size=256 * 1024,
        )
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send_all(self, topic: str, items: Sequence[tuple[bytes | None, bytes | None, int | None]]) -> None:
        """Send (key, value, partition) records and wait until the broker has acknowledged every one."""
        if not items:
            return
        futures = [
            await self.producer.send(topic, value, key=key, partition=partition) for key, value, partition in items
        ]
        await asyncio.gather(*futures)


async def read_changelog(
    kafka: KafkaConnection, topic: str, partitions: Iterable[int], *, timeout_s: float = 60.0
) -> dict[str, bytes | None]:
    """Read changelog partitions from the beginning to their current end; the last value per key wins."""
    tps = [TopicPartition(topic, p) for p in sorted(set(partitions))]
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
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
                raise TimeoutError("changelog restore did not reach the end offsets in time")
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
