"""Shadow's join restored from its changelog at start instead of rebuilt by re-reading the topics' retention.

The join (:class:`~vigil_shadow.join.JoinState`: live and shadow scores per encounter-hour, outcomes, subgroup
attributes) is fed by a reader of its own (:class:`JoinReader`) outside any consumer group: every instance holds
the whole join, since a comparison needs every encounter. Its checkpoints go to the ``shadow.state`` changelog
beside the feature states, under keys of their own:

- ``JOIN_KEY + encounter``: everything the join holds of one encounter (one record per encounter changed since the
  last checkpoint), on the changelog partition of the encounter's records (all the topics are keyed by encounter
  and co-partitioned);
- ``POSITIONS_KEY + p``: the reader's positions (next offset per topic partition) when that checkpoint was taken,
  written after the snapshots in the same acknowledged send.

Each instance writes the encounters and positions of the observations partitions it owns in the shadow group, so
every changelog partition has one writer at a time. On start a reader reads every partition of the changelog to
its end, installs the encounters and seeks each topic partition to the smallest position any partition's record
names: every snapshot covers at least up to that position, so the records replayed from there are ones the
snapshots may already hold, and the join's feeding is idempotent (the better score wins, outcomes and attributes
are set, not added). A changelog partition with no positions yet (a fresh deployment, or one never checkpointed)
makes the reader start from the beginning, as before. When an instance takes over a partition it rewrites every
encounter of it at its next checkpoint: its own join is complete, but what it changed there while another
instance owned the partition was not its to save.

Memory: the join itself (one entry per encounter-hour scored) and one chunk of records at a time, never the
retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.producer import AckedProducer
from vigil_runtime.reader import read_to_end
from vigil_runtime.tracing import Kind
from vigil_shadow import logscan
from vigil_shadow.join import JOIN_KEY, POSITIONS_KEY, JoinState

log = logging.getLogger(__name__)

Positions = dict[tuple[str, int], int]


async def _member() -> None:
    """Without a group to check against (tests of the join alone): always a member."""


class JoinLog:
    """Checkpoints and restores the join (call between the reader's batches)."""

    def __init__(
        self,
        kafka: KafkaConnection,
        *,
        join: JoinState,
        topic: str,
        sink: AckedProducer,
        kind: Kind,
        owned: Callable[[], set[int]],
        confirm_member: Callable[[], Awaitable[None]] = _member,
        interval_s: float = 1.0,
        restore_timeout_s: float = 60.0,
    ) -> None:
        self.kafka = kafka
        self.join = join
        self.topic = topic
        self.sink = sink
        self.kind = kind
        self.owned = owned
        """The observations partitions this instance owns in its group: the changelog partitions it writes."""
        self.confirm_member = confirm_member
        """Raises unless this instance is still a member of the group's generation (the feature changelog's check)."""
        self.interval_s = interval_s
        self.restore_timeout_s = restore_timeout_s
        self.positions: Positions = {}
        """Next offset to read per (topic, partition): where the join stands."""
        self.partition_of: dict[str, int] = {}
        self.unsaved: set[str] = set()
        self.saved_positions: dict[int, Positions] = {}
        """Per changelog partition, the positions its last record named (unchanged ones are not rewritten)."""
        self.writing_for: set[int] = set()
        self.last_checkpoint = time.monotonic()
        self.restored_encounters = 0
        self.restore_seconds = 0.0
        self.lock = asyncio.Lock()
        """One checkpoint at a time (the reader's periodic one, a revocation's, the stop's)."""

    # --- restore ------------------------------------------------------------------------------------------

    async def restore(self) -> Positions | None:
        """Read the changelog to its end, install the encounters; the positions to resume from (None: the start)."""
        t0 = time.perf_counter()
        partitions = await logscan.partitions_of(self.kafka, self.topic)
        values = await read_to_end(self.kafka, self.topic, partitions, timeout_s=self.restore_timeout_s)
        per_partition: dict[int, Positions] = {}
        restored = 0
        for key, value in values.items():
            if value is None:
                continue
            try:
                if key.startswith(JOIN_KEY):
                    self.join.restore_encounter(key[len(JOIN_KEY) :], value)
                    restored += 1
                elif key.startswith(POSITIONS_KEY):
                    per_partition[int(key[len(POSITIONS_KEY) :])] = {
                        (t, int(p)): int(o) for t, p, o in orjson.loads(value)
                    }
            except (ValueError, KeyError, TypeError) as error:  # one bad record must not stop the service
                log.error("unreadable join snapshot ignored", extra={"error_type": type(error).__name__})
        self.restored_encounters = restored
        self.restore_seconds = time.perf_counter() - t0
        if not partitions or set(per_partition) != set(partitions):
            log.info("join has no complete checkpoint: it is rebuilt from the topics", extra={"count": restored})
            return None
        start: Positions = {}
        for positions in per_partition.values():
            for where, offset in positions.items():
                start[where] = min(offset, start.get(where, offset))
        # A topic partition some record does not name was empty when that record was written: read it whole.
        named = [set(p) for p in per_partition.values()]
        for where in list(start):
            if not all(where in n for n in named):
                start[where] = 0
        log.info("join restored", extra={"count": restored, "seconds": round(self.restore_seconds, 3)})
        return start

    # --- what the reader reports --------------------------------------------------------------------------

    def applied(self, records: Iterable[ConsumerRecord[Any, Any]]) -> None:
        """Records fed to the join: the encounters they changed are unsaved, the positions move past them."""
        for record in records:
            where = (record.topic, record.partition)
            if record.offset + 1 > self.positions.get(where, 0):
                self.positions[where] = record.offset + 1
            if record.key:
                self.partition_of[record.key.decode(errors="replace")] = record.partition
        self.unsaved |= self.join.changed
        self.join.changed.clear()

    # --- checkpoints --------------------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether the interval has passed since the last checkpoint."""
        return time.monotonic() - self.last_checkpoint >= self.interval_s

    async def checkpoint(self) -> int:
        """Write the owned partitions' changed encounters, then their positions; returns how many records."""
        async with self.lock:
            return await self._checkpoint()

    async def _checkpoint(self) -> int:
        self.last_checkpoint = time.monotonic()
        owned = set(self.owned())
        gained = owned - self.writing_for
        if gained:  # taken over: rewrite the partition whole (see the module docstring)
            self.unsaved |= {e for e, p in self.partition_of.items() if p in gained}
        self.writing_for = owned
        chosen = [e for e in self.unsaved if self.partition_of.get(e) in owned and self.join.holds(e)]
        positions = dict(self.positions)
        records: list[tuple[bytes | None, bytes | None, int | None]] = [
            ((JOIN_KEY + e).encode(), self.join.encounter_snapshot(e), self.partition_of[e]) for e in chosen
        ]
        moved = [p for p in sorted(owned) if self.saved_positions.get(p) != positions]
        value = orjson.dumps([[t, p, o] for (t, p), o in sorted(positions.items())])
        records += [(f"{POSITIONS_KEY}{p}".encode(), value, p) for p in moved]
        if records:
            # A dropped member's late write would put an older join over its partition's new owner's (see
            # vigil_runtime.changelog): written only while still a member of the group's generation.
            await self.confirm_member()
        await self.sink.send_all(self.topic, records, kind=self.kind)
        self.unsaved.difference_update(chosen)
        for p in moved:
            self.saved_positions[p] = positions
        # Encounters of partitions owned elsewhere are that owner's to save; remembering them would only grow.
        self.unsaved = {e for e in self.unsaved if self.partition_of.get(e) in owned}
        return len(records)


class JoinReader:
    """Feeds the join from its topics: restored from the changelog first, then read from where it left off."""

    def __init__(
        self,
        kafka: KafkaConnection,
        topics: list[str],
        log_: JoinLog,
        feed: Callable[[tuple[ConsumerRecord[Any, Any], ...]], Awaitable[None]],
        *,
        max_records: int = 5000,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.log = log_
        self.feed = feed
        self.max_records = max_records
        self.targets: Positions | None = None
        """End offsets of the join's topics when reading began: the join is complete once it has read up to them."""
        self.started_from: Positions = {}
        self.records_read = 0
        """Records read since start (a restore from the changelog keeps this to what came after the checkpoint)."""

    @property
    def caught_up(self) -> bool:
        """True once the join has read up to where its topics ended when reading began."""
        if self.targets is None:
            return False
        seen = self.log.positions
        return all(seen.get(k, 0) >= end for k, end in self.targets.items())

    async def run(self) -> None:
        """Restore, then read for ever (cancelled at stop); a failure restarts the reading where it stood."""
        while True:
            try:
                start = await self.log.restore()
                break
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the broker not answering yet: a restore merges, so it is simply retried
                log.warning("join restore failed; retried", extra={"error_type": type(error).__name__})
                await asyncio.sleep(1.0)
        self.started_from = dict(start or {})
        self.log.positions = dict(self.started_from)
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the broker away, a topic not created yet: retried from the positions
                log.warning("join reading failed; retried", extra={"error_type": type(error).__name__})
                await asyncio.sleep(1.0)

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(
            **self.kafka.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="vigil-shadow-join",
        )
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in self.topics for p in await logscan.partitions_of(self.kafka, t)]
            consumer.assign(tps)
            for tp in tps:
                offset = self.log.positions.get((tp.topic, tp.partition), 0)
                if offset > 0:
                    consumer.seek(tp, offset)
                else:
                    await consumer.seek_to_beginning(tp)
            if self.targets is None:
                ends = await consumer.end_offsets(tps)
                self.targets = {(tp.topic, tp.partition): int(o) for tp, o in ends.items() if o > 0}
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=self.max_records)
                records = tuple(r for chunk in batch.values() for r in chunk)
                if records:
                    await self.feed(records)
                    self.log.applied(records)
                    self.records_read += len(records)
                if self.log.due():
                    try:
                        await self.log.checkpoint()
                    except Exception as error:  # kept unsaved: the next checkpoint retries
                        log.warning("join checkpoint failed; retried", extra={"error_type": type(error).__name__})
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
