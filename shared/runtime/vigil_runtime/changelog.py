"""Keyed state that follows its partitions: snapshots to a compacted changelog, offsets committed after them.

The pattern the scorer established (``vigil_scorer.checkpointer``), for any service whose state is a map of keys
(encounters) living on the partitions of its input topic:

1. a batch is applied to the in-memory state and its outputs acknowledged; its offsets are remembered, not
   committed, and the keys it changed are marked unsaved;
2. every ``interval_s`` (and before partitions are given up in a rebalance, and at a clean stop) a checkpoint
   publishes the snapshots of the unsaved keys to the changelog, each to the changelog partition numbered like
   the input partition it lives on, and waits for the broker's acknowledgement;
3. only then are the remembered offsets committed.

On assignment the owner of input partition p reads changelog partition p to its end (the compacted view: the last
value per key) before any record of p is applied, instead of re-reading the input topic's retention. That read runs
beside the rebalance listener, not in it: aiokafka calls the listener before it resumes the group's heartbeats, so
a read that outlasted the session (10 s) cost the membership, and the rejoin read again (in the chaos suite a
changelog read took 30 s at a scenario's start, cause not found, and the member was dropped every 31 s).
A crash before 2 restores older snapshots and replays from older offsets; a crash between 2 and 3 restores newer
snapshots whose last applied offsets make the replayed records duplicates. A failed batch is handled like a crash
of its partitions: their states are dropped, restored again and the partitions rewound to their committed
offsets.

Only a member of the group's current generation writes snapshots. A member the coordinator has dropped (its
session expired while its loop was busy, say) learns it only at its next heartbeat or commit, while another member
already owns its partitions and writes their snapshots; a late snapshot from the dropped member would put older
state over newer, and the next owner would restore it and resume after the newer commit, without the readings in
between (seen in the chaos suite's scale-out: a stay lost twelve hours of history). Each checkpoint that writes
snapshots therefore first re-commits offsets already committed (:func:`confirm_membership`: a no-op for the group,
and the one request the broker fences by generation) and writes nothing if that fails. At a clean stop the
partitions are handed over while still a member (:meth:`Changelog.hand_over`, before the consumer leaves), not
written after leaving.

Snapshots are bytes produced by the state itself (JSON, never pickle: a topic write must not become code
execution on restore). The scorer keeps its own checkpointer, which captures snapshots a slice per batch to keep
its latency flat under load; this one captures a checkpoint at once, which suits shadow's smaller budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError

from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.producer import AckedProducer
from vigil_runtime.reader import read_to_end
from vigil_runtime.tracing import Kind

log = logging.getLogger(__name__)


class KeyedState(Protocol):
    """What the changelog needs of a state: per-key snapshots and restores, and forgetting whole partitions."""

    def snapshot(self, key: str) -> bytes | None:
        """The changelog value of ``key`` (None when it is not held any more)."""
        ...

    def restore(self, key: str, value: bytes | None) -> None:
        """Install ``key``'s state from its changelog value (a tombstone forgets it)."""
        ...

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget every key living on ``partitions``."""
        ...


class RecordedState(KeyedState, Protocol):
    """A state whose one key is written as several records, reassembled once a restore has read them all.

    For a value too big for one message (drift's detectors).
    """

    def records(self, key: str) -> list[tuple[str, bytes | None]]:
        """The changelog records (key, value) that save ``key``."""
        ...

    def restored(self) -> None:
        """Every record of a restore has been handed to :meth:`restore`."""
        ...


def _no_consumer() -> Any:
    return None


async def confirm_membership(
    consumer: Any, committed: Mapping[TopicPartition, int], owned: Iterable[TopicPartition]
) -> None:
    """Raise :class:`CommitFailedError` unless ``consumer`` is still a member of its group's current generation.

    Re-commits offsets the group has already committed: nothing moves, but the broker refuses a commit from a member
    it dropped or from an older generation. ``committed`` are the offsets this process knows it committed; without
    any, the group's committed offsets of ``owned`` are read first. With nothing committed at all (a new group's
    first checkpoint) there is nothing to re-commit, and the check is skipped.
    """
    offsets = dict(committed)
    if not offsets:
        for tp in owned:
            offset = await consumer.committed(tp)
            if offset is not None:
                offsets[tp] = offset
                break  # one partition proves the membership: the broker checks member and generation, not partitions
    if offsets:
        try:
            await consumer.commit(offsets)
        except IllegalStateError as error:  # mid-rejoin (no assignment): not an owner either
            raise CommitFailedError(f"not assigned: {error}") from error


class Restores:
    """The restores started at assignments, run beside the rebalance listener (see the module docstring).

    Kept referenced until done, cancelled when the partitions are revoked or handed over (the next assignment
    restores again), and awaited where the states are needed at once (tests).
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, restore: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(restore, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Changelog:
    """Checkpoints and restores one service's keyed state; call its methods under :attr:`lock`."""

    def __init__(
        self,
        kafka: KafkaConnection,
        *,
        topic: str,
        source_topic: str | Sequence[str],
        state: KeyedState,
        sink: AckedProducer,
        kind: Kind,
        interval_s: float = 1.0,
        restore_timeout_s: float = 60.0,
        consumer_of: Callable[[], Any] = _no_consumer,
        changelog_partitions: Callable[[set[int]], set[int]] | None = None,
        whole: bool = False,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        """The compacted changelog topic (as many partitions as the source topic)."""
        self.source_topics = (source_topic,) if isinstance(source_topic, str) else tuple(source_topic)
        """The input topics (co-partitioned: partition p of each is owned together) the state lives on."""
        self.source_topic = self.source_topics[0]
        self.changelog_partitions = changelog_partitions or (lambda parts: parts)
        """Which changelog partitions hold the states of given source partitions (default: the same numbers)."""
        self.whole = whole
        """One state for all the owned partitions (drift's detectors): every checkpoint saves it, and a failed
        batch rewinds every owned partition to the last checkpoint, not only the batch's."""
        self.state = state
        self.sink = sink
        self.kind = kind
        """The event-type and schema-version headers of this changelog's records."""
        self.interval_s = interval_s
        self.restore_timeout_s = restore_timeout_s
        self.consumer_of = consumer_of
        """The group consumer of the source topic (commits and rewinds), once the broker has started."""
        self.lock = asyncio.Lock()
        """Held around every batch, checkpoint and rebalance, so each happens between batches."""
        self._commit_lock = asyncio.Lock()
        """Orders this process's commits, each with the offsets known when it is its turn. A membership check
        re-commits the offsets known to be committed; taken before waiting for its turn (aiokafka serialises commits
        too), a check from outside :attr:`lock` (shadow's join checkpoint) re-committed older offsets after a
        checkpoint's newer ones and moved the group's position back: shadow then never showed itself at the end of
        its input (the chaos suite's controller scenario, 30 Nov 2026)."""
        self.assigned = asyncio.Event()
        """Set once the first assignment is taken (and while no rebalance is under way); the restore may still run."""
        self.restores = Restores()
        """The background restores started by :meth:`on_assigned`."""
        self.owned: set[int] = set()
        self.needs_restore: set[int] = set()
        """Owned partitions whose states are still to be read back before their next record is applied."""
        self.unsaved: dict[str, int | None] = {}
        """Keys changed since the last checkpoint, with their partition."""
        self.consumed: dict[tuple[str, int], int] = {}
        """Per (topic, owned partition), the offset after the last record applied (the next checkpoint's commit)."""
        self.committed: dict[tuple[str, int], int] = {}
        self.last_checkpoint = time.monotonic()
        self.failures = 0
        """Checkpoints failed in a row."""
        self.restored_keys = 0
        self.restore_seconds = 0.0
        """Time the last restore took (start-up cost: reading the compacted changelog)."""
        self.closing = False
        """Set by :meth:`hand_over`: no partition is taken on again, nothing more is applied."""
        self.fenced = 0
        """Checkpoints not written because this process was no longer a member of the group's generation."""

    @property
    def ready(self) -> bool:
        """True once every owned partition's state is restored."""
        return self.assigned.is_set() and not self.needs_restore

    # --- what a batch reports ---------------------------------------------------------------------------

    def advanced(self, partition: int, offset: int, topic: str | None = None) -> None:
        """A record of ``partition`` at ``offset`` was applied: the next checkpoint commits past it."""
        where = (topic or self.source_topic, partition)
        if offset + 1 > self.consumed.get(where, -1):
            self.consumed[where] = offset + 1

    def changed(self, keys: Mapping[str, int | None]) -> None:
        """Keys a batch changed (saved by the next checkpoint)."""
        self.unsaved.update(keys)

    def pending(self) -> bool:
        """Whether a checkpoint has anything to write or commit."""
        return bool(self.unsaved or any(self.committed.get(p) != o for p, o in self.consumed.items()))

    # --- checkpoints ------------------------------------------------------------------------------------

    async def checkpoint(self, partitions: set[int] | None = None) -> int:
        """Write the unsaved snapshots (of ``partitions``, default all), wait for the acks, then commit.

        Returns how many snapshots were written. On failure the keys stay unsaved and nothing is committed.
        """
        if self.closing:  # handed over: what this process holds now is no longer its to save
            return 0
        chosen = {k: p for k, p in self.unsaved.items() if partitions is None or self.whole or p in partitions}
        offsets = {
            (t, p): o
            for (t, p), o in self.consumed.items()
            if (partitions is None or p in partitions) and p in self.owned and self.committed.get((t, p)) != o
        }
        if partitions is None:
            self.last_checkpoint = time.monotonic()
        snapshots: list[tuple[bytes, bytes | None, int | None]] = []
        records = getattr(self.state, "records", None)
        for key, partition in chosen.items():
            if records is not None:
                snapshots.extend((k.encode(), v, partition) for k, v in records(key))
                continue
            value = self.state.snapshot(key)
            if value is not None:  # gone since (evicted): nothing to save
                snapshots.append((key.encode(), value, partition))
        consumer = self.consumer_of()
        try:
            if snapshots:
                await self.confirm_member()
            await self.sink.send_all(self.topic, snapshots, kind=self.kind)
            if offsets and consumer is not None:
                async with self._commit_lock:
                    await consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
                    self.committed.update(offsets)
            else:
                # No group consumer (not started yet, or a bare state): nothing to commit through. Or no offsets
                # to commit (snapshots alone): the update is empty.
                self.committed.update(offsets)
        except BaseException:
            self.failures += 1
            raise
        self.failures = 0
        for key in chosen:
            if self.unsaved.get(key) == chosen[key]:
                del self.unsaved[key]
        return len(snapshots)

    async def confirm_member(self) -> None:
        """Raise :class:`CommitFailedError` unless still a member of the group's generation (before writing state)."""
        consumer = self.consumer_of()
        if consumer is None:
            return
        try:
            async with self._commit_lock:  # the known offsets as of this turn, never older (see _commit_lock)
                await confirm_membership(consumer, self._known_commits(), self._owned_partitions())
        except CommitFailedError:
            self.fenced += 1
            log.warning("state not written: no longer a member of the group's generation")
            raise

    def _known_commits(self) -> dict[TopicPartition, int]:
        return {TopicPartition(t, p): o for (t, p), o in self.committed.items() if p in self.owned}

    def _owned_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.source_topics for p in sorted(self.owned)]

    async def step(self) -> None:
        """After a batch: checkpoint when one is due."""
        if time.monotonic() - self.last_checkpoint >= self.interval_s and self.pending():
            await self.checkpoint()

    async def loop(self) -> None:
        """Checkpoint when the stream goes quiet, so the last batches do not wait for the next one."""
        while True:
            await asyncio.sleep(max(self.interval_s, 0.1))
            if time.monotonic() - self.last_checkpoint < self.interval_s:
                continue
            try:
                async with self.lock:
                    if self.pending():
                        await self.checkpoint()
            except Exception as error:  # retried next period; offsets stay uncommitted meanwhile
                log.warning("checkpoint failed; retried", extra={"error_type": type(error).__name__})

    async def tombstone(self, evicted: list[tuple[str, int | None]]) -> None:
        """Forget evicted keys in the changelog too (compaction then drops them)."""
        for key, _ in evicted:
            self.unsaved.pop(key, None)
        await self.sink.send_all(self.topic, [(k.encode(), None, p) for k, p in evicted], kind=self.kind)

    # --- partitions -------------------------------------------------------------------------------------

    async def restore(self, partitions: Iterable[int]) -> int:
        """Read the partitions' states back from the changelog; returns how many keys were restored."""
        parts = set(partitions)
        if self.whole:  # one state: restoring it restores every partition still waiting
            parts |= self.needs_restore
        t0 = time.perf_counter()
        # The owner of source partition p reads changelog partition p: snapshots are written there.
        values = await read_to_end(
            self.kafka, self.topic, self.changelog_partitions(parts), timeout_s=self.restore_timeout_s
        )
        self.state.drop_partitions(parts)
        restored = 0
        for key, value in values.items():
            try:
                self.state.restore(key, value)
            except (ValueError, KeyError, TypeError) as error:  # one bad snapshot must not stop the partition
                log.error("unreadable changelog snapshot ignored", extra={"error_type": type(error).__name__})
                continue
            restored += value is not None
        finish = getattr(self.state, "restored", None)
        if finish is not None:
            finish()
        self.needs_restore -= parts
        self.restored_keys += restored
        self.restore_seconds = time.perf_counter() - t0
        log.info(
            "states restored",
            # duration_ms: an allowed log field (vigil_runtime.logging); "seconds" was silently dropped.
            extra={"count": restored, "duration_ms": round(self.restore_seconds * 1000, 1)},
        )
        return restored

    async def restore_pending(self, partitions: set[int]) -> None:
        """Before a batch: restore those of ``partitions`` whose restore is still due."""
        due = self.needs_restore & partitions
        if due:
            await self.restore(due)

    async def on_assigned(self, partitions: set[int]) -> None:
        """Take the assigned partitions and start restoring them; none of their records is applied before.

        Returns without waiting for the restore (see the module docstring: the group's heartbeats wait for this
        callback). The restore runs in the background under :attr:`lock`; a batch that comes first restores what
        is still due itself (:meth:`restore_pending`), and :attr:`ready` stays false until it is done.
        """
        try:
            async with self.lock:
                if self.closing:  # handed over: the consumer is leaving, the partitions' next owner restores them
                    return
                self.owned = set(partitions)
                self.needs_restore |= partitions
                self._forget_progress(partitions, committed=True)
        finally:
            self.assigned.set()
        if partitions:
            self.restores.start(self._restore_owned(), name=f"restore {self.topic}")

    async def _restore_owned(self) -> None:
        """The background restore of an assignment: whatever owned partition is still due when the lock is free."""
        async with self.lock:
            due = self.needs_restore & self.owned
            if self.closing or not due:  # revoked, handed over, or restored by a batch meanwhile
                return
            try:
                await self.restore(due)
            except Exception as error:  # retried before the partitions' next batch (they stay in needs_restore)
                log.error("state restore failed; retried", extra={"error_type": type(error).__name__})

    async def on_revoked(self, partitions: set[int]) -> None:
        """Save what was applied of partitions about to be revoked, so their new owner restores instead of replays."""
        self.assigned.clear()
        self.restores.cancel()  # the group waits for this member's rejoin; the next assignment restores again
        async with self.lock:
            try:
                await self.checkpoint(partitions & self.owned - self.needs_restore)
            except Exception as error:  # the new owner then replays from the last commit
                log.error("checkpoint before revocation failed", extra={"error_type": type(error).__name__})
            self.forget(partitions)
            self.state.drop_partitions(partitions)
            self.owned -= partitions
            self.needs_restore -= partitions

    async def hand_over(self) -> None:
        """At a clean stop, before the consumer leaves its group: save everything, then let the partitions go.

        Written while still a member (see the module docstring), so the next owner restores this process's last
        states and resumes from its last commit. Batches still delivered afterwards are not applied (nothing is owned
        any more) and their offsets stay uncommitted: the next owner applies them.
        """
        self.assigned.clear()
        self.restores.cancel()  # leaving: a restore still under way is of no use
        async with self.lock:
            try:
                await self.checkpoint(self.owned - self.needs_restore)
            except Exception as error:  # the next owner replays from the last commit
                log.warning("checkpoint at hand-over failed", extra={"error_type": type(error).__name__})
            self.closing = True
            self.forget(self.owned)
            self.state.drop_partitions(self.owned)
            self.owned = set()
            self.needs_restore = set()
        self.assigned.set()  # a batch waiting for the assignment finds nothing owned and applies nothing

    def forget(self, partitions: set[int]) -> None:
        """Drop the partitions' unsaved keys and progress."""
        for key in [k for k, p in self.unsaved.items() if p in partitions]:
            del self.unsaved[key]
        self._forget_progress(partitions, committed=True)

    def _forget_progress(self, partitions: set[int], *, committed: bool) -> None:
        for where in [w for w in self.consumed if w[1] in partitions]:
            del self.consumed[where]
        if committed:
            for where in [w for w in self.committed if w[1] in partitions]:
                del self.committed[where]

    async def rewind(self, partitions: set[int]) -> None:
        """After a failed batch: drop the partitions' states, restore them before the retry, rewind the offsets.

        The states may be ahead of the changelog; the partitions go back to their committed offsets (under
        :attr:`lock`).
        """
        if self.whole:
            partitions = partitions | self.owned
        self.state.drop_partitions(partitions)
        self.needs_restore |= partitions & self.owned
        for key in [k for k, p in self.unsaved.items() if p in partitions]:
            del self.unsaved[key]
        self._forget_progress(partitions, committed=False)
        consumer = self.consumer_of()
        if consumer is None:
            return
        for tp in [TopicPartition(t, p) for t in self.source_topics for p in sorted(partitions)]:
            try:
                offset = self.committed.get((tp.topic, tp.partition))
                if offset is None:
                    offset = await consumer.committed(tp)
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
            except Exception as error:  # revoked meanwhile: the new owner starts from the commit
                log.info("rewind skipped", extra={"partition": tp.partition, "error_type": type(error).__name__})


class ChangelogRebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Moves state with the partitions: checkpoint and drop on revocation, restore on assignment."""

    def __init__(self, changelog: Changelog) -> None:
        self.changelog = changelog

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Called by aiokafka before a rebalance."""
        topics = self.changelog.source_topics
        await self.changelog.on_revoked({tp.partition for tp in revoked if tp.topic in topics})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """Called by aiokafka after a rebalance."""
        topics = self.changelog.source_topics
        await self.changelog.on_assigned({tp.partition for tp in assigned if tp.topic in topics})


async def stop_checkpoint(changelog: Changelog) -> None:
    """After the consumer stopped: write what is still unsaved, if anything.

    Normally :meth:`Changelog.hand_over` saved it all while still a member; a checkpoint after leaving the group is
    refused by the membership check.
    """
    async with changelog.lock:
        with contextlib.suppress(Exception):
            await changelog.checkpoint()
