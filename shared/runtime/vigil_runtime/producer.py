"""The one producer adapter: every send waits for the broker's acknowledgement (acks=all, idempotent).

Every service publishes through it, hot paths and cold ones alike (events, scores, the scorer's changelog, dead
letters, alerts, comparisons, the registry's lifecycle events), so what a record carries on the wire is decided
in one place.
Each record carries Vigil's headers (``vigil_contracts.headers``), set here through
``vigil_runtime.tracing.sending``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer, TopicPartition

from vigil_contracts.events import Event
from vigil_runtime.kafka import encode
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.replication import PRODUCER_ACKS
from vigil_runtime.tracing import Kind, kind_of, sending

YIELD_EVERY = 256
"""Records sent between two yields to the event loop. aiokafka's ``send`` returns without yielding while its buffer
has room, so a large Bundle's events were encoded and sent in one stretch of the loop (encoding alone took 1.9 s
for 36,000 events on the loaded test machine), ``/health`` waiting behind it; yielding every few hundred records
lets it answer in between."""


class AckedProducer:
    """One idempotent, acks=all producer; every send waits until the broker has acknowledged all its records.

    A raw aiokafka producer rather than FastStream's publisher: the hot paths (ingest's events, the scorer's scores
    and changelog) publish thousands of records a second, and the scorer needs explicit partitions and null values
    (tombstones). Measured on the 2-core machine: FastStream's publish path ~12k events/s, this ~40k/s. The cold
    paths use it too (one adapter, not two); it implements :class:`vigil_runtime.kafka.EventPublisher`.

    Its owner starts it before the service's broker (``ServiceRuntime.on_start``) and stops it after.
    """

    def __init__(self, kafka: KafkaConnection, *, client_id: str, linger_ms: int = 0) -> None:
        self.kafka = kafka
        self.client_id = client_id
        # A caller that sends all its records and then waits for them gains nothing from lingering (nothing more
        # comes while it waits): 0 by default; ingest's concurrent HTTP requests share batches with a little.
        self.linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None

    @property
    def producer(self) -> AIOKafkaProducer:
        """The started producer."""
        if self._producer is None:
            raise RuntimeError("AckedProducer not started")
        return self._producer

    @property
    def started(self) -> bool:
        """Whether the producer is connected (a readiness check)."""
        return self._producer is not None

    async def writable(self, topic: str, *, timeout: float = 2.0) -> bool:
        """Whether a write to ``topic`` can be acknowledged now (a readiness check).

        The cluster answers this producer's metadata request, every partition of the topic has a leader, and this
        producer can reach each leader: started is not enough, a started producer keeps buffering while the
        broker is away.
        """
        if self._producer is None:
            return False
        client = self._producer.client

        async def check() -> bool:
            cluster = await client.fetch_all_metadata()
            partitions = cluster.partitions_for_topic(topic)
            if not partitions:
                return False
            leaders = {cluster.leader_for_partition(TopicPartition(topic, p)) for p in partitions}
            if None in leaders or -1 in leaders:
                return False
            return all([await client.ready(leader) for leader in leaders])

        try:
            return await asyncio.wait_for(check(), timeout)
        except Exception:  # unreachable, timed out, unauthorised: not writable
            return False

    async def start(self) -> None:
        """Connect (aiokafka wants its producer made inside the running loop)."""
        self._producer = AIOKafkaProducer(
            **self.kafka.client_kwargs(),
            client_id=self.client_id,
            acks=PRODUCER_ACKS,
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

    async def send_all(
        self, topic: str, items: Sequence[tuple[bytes | None, bytes | None, int | None]], *, kind: Kind | None
    ) -> None:
        """Send pre-encoded (key, value, partition) records of one ``kind`` and wait until all are acknowledged.

        ``kind`` None: records that are not Vigil events (raw FHIR), sent with the correlation and trace headers only.
        """
        if not items:
            return
        send = self.producer.send
        with sending(topic) as out:
            futures = []
            for i, (key, value, partition) in enumerate(items):
                if i and i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                futures.append(await send(topic, value, key=key, partition=partition, headers=out.headers(kind, key)))
            await asyncio.gather(*futures)

    async def publish_all(self, topic: str, events: Sequence[Event]) -> None:
        """Send every event keyed by its ``key``; returns once all are acknowledged."""
        if not events:
            return
        send = self.producer.send
        with sending(topic) as out:
            futures = []
            for i, ev in enumerate(events):
                if i and i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                key = ev.key_bytes()
                futures.append(await send(topic, encode(ev), key=key, headers=out.headers(kind_of(type(ev)), key)))
            await asyncio.gather(*futures)
