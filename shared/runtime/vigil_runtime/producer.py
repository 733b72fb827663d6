"""The one producer adapter: every send waits for the broker's acknowledgement (acks=all, idempotent).

Every service publishes through it, hot paths and cold ones alike (events, scores, the scorer's changelog, dead
letters, alerts, comparisons, the registry's lifecycle events), so what a record carries on the wire is decided
in one place.
Each record carries Vigil's headers (``vigil_contracts.headers``), set here through
``vigil_runtime.tracing.sending``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from vigil_contracts.events import Event
from vigil_runtime.kafka import encode
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.replication import PRODUCER_ACKS
from vigil_runtime.tracing import Kind, Sending, kind_of, sending

YIELD_AFTER_S = 0.005
"""Longest stretch of sending between two yields to the event loop. aiokafka's ``send`` returns without yielding
while its buffer has room, so a large Bundle's events were encoded and sent in one stretch of the loop (encoding
alone took 1.9 s for 36,000 events on the loaded test machine), ``/health`` waiting behind it. A fixed count (256
records) still left stretches of ~0.14 s where encoding was slow (py-spy on a 15 MB Bundle): the bound is on time,
checked per record (a clock read costs well under a microsecond)."""

BATCH_OFF_LOOP = 2_000
"""From this many events, :meth:`AckedProducer.publish_all` builds the record batches in a worker thread and hands
the producer whole batches. Sent one by one, a 15 MB Bundle's 34,000 events kept the loop busy for seconds
(encoding, partitioning, appending, one acknowledgement future each: py-spy, issue 15 item 2), so ``/health``
waited behind a stretch of that work at every poll; now the loop submits some seventy batches. Fewer events take
the per-record path, where a thread hop would cost more than the work."""

BATCH_ON_LOOP = 64
"""From this many events (and below :data:`BATCH_OFF_LOOP`), :meth:`AckedProducer.publish_all` builds the record
batches itself on the loop and hands the producer whole batches: aiokafka's ``send`` costs one metadata wait,
one partitioner call, one accumulator append and one acknowledgement future per record, which for a Bundle of a
few hundred readings or a scorer batch's scores was a tenth of the request's CPU (py-spy of ingest's HTTP
benchmark). Fewer events keep the per-record path, which shares batches with concurrent requests."""

ACK_CHUNK = 1024
"""Acknowledgements awaited per ``gather``: one gather over 34,000 futures attaches (and later runs) all their
callbacks in one stretch of the loop; chunks of a thousand keep each stretch to about a millisecond."""


class AckedProducer:
    """One idempotent, acks=all producer; every send waits until the broker has acknowledged all its records.

    A raw aiokafka producer rather than FastStream's publisher: the hot paths (ingest's events, the scorer's scores
    and changelog) publish thousands of records a second, and the scorer needs explicit partitions and null values
    (tombstones). Measured on the 2-core machine: FastStream's publish path ~12k events/s, this ~40k/s. The cold
    paths use it too (one adapter, not two); it implements :class:`vigil_runtime.kafka.EventPublisher`.

    Its owner starts it before the service's broker (``ServiceRuntime.on_start``) and stops it after.
    """

    def __init__(
        self, kafka: KafkaConnection, *, client_id: str, linger_ms: int = 0, yield_after_s: float = YIELD_AFTER_S
    ) -> None:
        self.kafka = kafka
        self.client_id = client_id
        # A caller that sends all its records and then waits for them gains nothing from lingering (nothing more
        # comes while it waits): 0 by default; ingest's concurrent HTTP requests share batches with a little.
        self.linger_ms = linger_ms
        # A service that must answer HTTP while it publishes a large request (ingest's /health) takes shorter
        # stretches: each request it answers meanwhile waits for one or two of them.
        self.yield_after_s = yield_after_s
        # Kept to partition records built outside ``send`` (large publishes) exactly as ``send`` would.
        self._partitioner = DefaultPartitioner()
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
            partitioner=self._partitioner,
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
        clock = time.perf_counter
        step = self.yield_after_s
        until = clock() + step
        with sending(topic) as out:
            futures = []
            for key, value, partition in items:
                if clock() >= until:
                    await asyncio.sleep(0)
                    until = clock() + step
                futures.append(await send(topic, value, key=key, partition=partition, headers=out.headers(kind, key)))
            await _acknowledged(futures)

    async def publish_all(self, topic: str, events: Sequence[Event]) -> None:
        """Send every event keyed by its ``key``; returns once all are acknowledged."""
        if not events:
            return
        if len(events) >= BATCH_OFF_LOOP:
            await self._publish_batched(topic, events)
            return
        if len(events) >= BATCH_ON_LOOP:
            await self._publish_batched_on_loop(topic, events)
            return
        send = self.producer.send
        clock = time.perf_counter
        step = self.yield_after_s
        until = clock() + step
        with sending(topic) as out:
            futures = []
            for ev in events:
                if clock() >= until:
                    await asyncio.sleep(0)
                    until = clock() + step
                key = ev.key_bytes()
                futures.append(await send(topic, encode(ev), key=key, headers=out.headers(kind_of(type(ev)), key)))
            await _acknowledged(futures)

    async def _publish_batched(self, topic: str, events: Sequence[Event]) -> None:
        """Many events: batches built (encoded, partitioned, headed) in a worker thread, submitted whole.

        The same records as :meth:`send` would make: same partitioner over the same partition list, same headers
        (the thread runs in a copy of this context, so each key's origin is found). Batches of one partition are
        submitted in order and the producer queues one at a time per partition, so order within a partition holds.
        """
        producer = self.producer
        partitions = list(await producer.partitions_for(topic))  # the list ``send`` hands the partitioner
        with sending(topic) as out:
            batches = await asyncio.to_thread(self._batches, events, partitions, out)
            futures = [await producer.send_batch(batch, topic, partition=partition) for partition, batch in batches]
            await _acknowledged(futures)

    async def _publish_batched_on_loop(self, topic: str, events: Sequence[Event]) -> None:
        """Tens to hundreds of events: the same batches as :meth:`_publish_batched`, built on the loop.

        A thread hop costs more than building a few hundred records; the build still yields to the loop every
        ``yield_after_s``, as the per-record path does.
        """
        producer = self.producer
        partitions = list(await producer.partitions_for(topic))
        clock = time.perf_counter
        step = self.yield_after_s
        with sending(topic) as out:
            builder = _Batches(self, partitions, out)
            until = clock() + step
            for ev in events:
                if clock() >= until:
                    await asyncio.sleep(0)
                    until = clock() + step
                builder.add(ev)
            futures = [await producer.send_batch(batch, topic, partition=p) for p, batch in builder.done()]
            await _acknowledged(futures)

    def _batches(self, events: Sequence[Event], partitions: list[int], out: Sending) -> list[tuple[int, BatchBuilder]]:
        builder = _Batches(self, partitions, out)
        for ev in events:
            builder.add(ev)
        return builder.done()


class _Batches:
    """Record batches per partition, built as ``send`` would build them (same partitioner, headers, encoding)."""

    def __init__(self, owner: AckedProducer, partitions: list[int], out: Sending) -> None:
        self.producer = owner.producer
        self.partitioner = owner._partitioner
        self.partitions = partitions
        self.out = out
        self.open: dict[int, BatchBuilder] = {}
        self.full: list[tuple[int, BatchBuilder]] = []

    def add(self, ev: Event) -> None:
        key = ev.key_bytes()
        value = encode(ev)
        headers = self.out.headers(kind_of(type(ev)), key)
        partition = self.partitioner(key, self.partitions, self.partitions)
        batch = self.open.get(partition)
        if batch is None:
            batch = self.open[partition] = self.producer.create_batch()
        if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:  # full
            self.full.append((partition, batch))
            batch = self.open[partition] = self.producer.create_batch()
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                raise ValueError(f"a record of {len(value)} bytes does not fit in an empty batch")

    def done(self) -> list[tuple[int, BatchBuilder]]:
        """Every batch, the full ones first: per partition in the order their records were added."""
        return [*self.full, *self.open.items()]


def _retrieve(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failure already raised for an earlier chunk is not logged again


async def _acknowledged(futures: list[asyncio.Future[object]]) -> None:
    """Wait for every future (a chunk at a time); the first failure raises, as one ``gather`` would."""
    for at in range(0, len(futures), ACK_CHUNK):
        try:
            await asyncio.gather(*futures[at : at + ACK_CHUNK])
        except asyncio.CancelledError:
            for rest in futures[at + ACK_CHUNK :]:
                rest.cancel()  # as one gather cancelled would: all of them
            raise
        except BaseException:
            for rest in futures[at + ACK_CHUNK :]:
                rest.add_done_callback(_retrieve)
            raise
