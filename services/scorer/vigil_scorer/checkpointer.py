"""Checkpoints: the snapshots of the encounters changed since the last one, acknowledged, then the offsets committed.

Every ``checkpoint_interval_s`` (and before partitions are given up in a rebalance) a checkpoint follows a batch:
the snapshots of the encounters changed since the last checkpoint are published to the compacted changelog and
acknowledged; only then are the offsets of every batch processed since the last checkpoint committed. Snapshots
are captured a slice per batch (between batches, under the batch step's lock) and written in the background.
Checkpoints failing in a row make the scorer unready and open an alert; the next one written resolves it. The
crash semantics this order gives are in :mod:`vigil_scorer.pipeline`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from aiokafka import TopicPartition

from vigil_contracts.events import AlertRaised, Severity, deterministic_id, utcnow
from vigil_runtime.changelog import confirm_membership
from vigil_runtime.producer import AckedProducer
from vigil_runtime.tracing import SCORER_STATE_KIND
from vigil_scorer.assignment import Assignment
from vigil_scorer.metrics import SERVICE, ScorerMetrics
from vigil_scorer.model_manager import ModelManager
from vigil_scorer.settings import Settings

log = logging.getLogger(__name__)
CAPTURE_SLICE_S = 0.002
"""Time a batch spends capturing checkpoint snapshots before it hands back to scoring."""


@dataclass
class _Checkpoint:
    """What one checkpoint writes: snapshots of the encounters it covers, then the offsets it commits."""

    encounters: list[tuple[str, int | None]]
    offsets: dict[int, int]
    """Taken when the checkpoint began: every snapshot, captured then or between later batches, covers them."""
    todo: deque[tuple[str, int | None]] = field(default_factory=deque)
    """Encounters whose snapshot is still to be captured."""
    snapshots: list[tuple[bytes, bytes, int | None]] = field(default_factory=list)
    seconds: float = 0.0
    """Time spent capturing snapshots."""


class Checkpointer:
    """What was processed since the last checkpoint, and the checkpoint under way (call under the batch lock)."""

    def __init__(
        self,
        settings: Settings,
        metrics: ScorerMetrics,
        *,
        sink: AckedProducer,
        state_sink: AckedProducer,
        models: ModelManager,
        assignment: Assignment,
        lock: asyncio.Lock,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.metrics = metrics
        self.sink = sink
        """Where the checkpoint alert goes."""
        self.state_sink = state_sink
        self.models = models
        self.assignment = assignment
        self.lock = lock
        self.unsaved: dict[str, int | None] = {}
        """Encounters changed since the last checkpoint, with their partition."""
        self.consumed: dict[int, int] = {}
        """Per owned partition, the offset after the last record processed (what the next checkpoint commits)."""
        self.committed: dict[int, int] = {}
        """Per owned partition, the offset the last checkpoint committed."""
        self.last_checkpoint = time.monotonic()
        self.writing: asyncio.Task[None] | None = None
        """The checkpoint being written, if any."""
        self.capturing: _Checkpoint | None = None
        """The checkpoint whose snapshots are being captured, a slice per batch."""
        self.failures = 0
        """Checkpoints failed in a row: from ``checkpoint_failures_unready`` on, /ready fails and an alert is open."""

    # --- what a batch tells it --------------------------------------------------------------------

    def advanced(self, partition: int, offset: int) -> None:
        """A record of ``partition`` at ``offset`` was processed: the next checkpoint commits past it."""
        if offset + 1 > self.consumed.get(partition, -1):
            self.consumed[partition] = offset + 1

    def changed(self, encounters: dict[str, int | None]) -> None:
        """Encounters a batch changed (saved by the next checkpoint)."""
        self.unsaved.update(encounters)

    def batch_failed(self, partitions: set[int]) -> None:
        """A checkpoint under way has not captured all of these partitions' states, and now cannot.

        It must not commit their offsets past the snapshots it lacks (its other partitions are unaffected).
        """
        if self.capturing is not None:
            for p in partitions:
                self.capturing.offsets.pop(p, None)

    def forget(self, partitions: set[int], *, committed: bool = False) -> None:
        """Drop the partitions' unsaved encounters and progress (and, on revocation, their committed offsets)."""
        for encounter in [e for e, p in self.unsaved.items() if p in partitions]:
            del self.unsaved[encounter]
        for p in partitions:
            self.consumed.pop(p, None)
            if committed:
                self.committed.pop(p, None)

    def pending(self) -> bool:
        """Whether a checkpoint has anything to write."""
        return bool(
            self.unsaved
            or self.capturing is not None
            or any(self.committed.get(p) != o for p, o in self.consumed.items())
        )

    # --- checkpoints --------------------------------------------------------------------------------

    def _begin(self, partitions: set[int] | None) -> _Checkpoint:
        """Start a checkpoint of the states changed so far and the offsets processed so far (between batches)."""
        chosen = [(e, p) for e, p in self.unsaved.items() if partitions is None or p in partitions]
        for encounter, _ in chosen:
            del self.unsaved[encounter]
        offsets = {
            p: o
            for p, o in self.consumed.items()
            if (partitions is None or p in partitions) and p in self.assignment.owned and self.committed.get(p) != o
        }
        return _Checkpoint(chosen, offsets, deque(chosen))

    def _capture(self, checkpoint: _Checkpoint, budget_s: float | None = None) -> bool:
        """Snapshot encounters of ``checkpoint`` for about ``budget_s`` (None: all); True once all are captured.

        Call between batches only (under :attr:`lock`): every batch applied to a state then has its scores
        acknowledged, and a snapshot newer than the checkpoint's offsets is safe (replayed records are recognised
        by offset and their scores were published).
        """
        t0 = time.perf_counter()
        core, todo = self.models.core, checkpoint.todo
        while todo:
            encounter, partition = todo.popleft()
            value = core.snapshot(encounter) if core is not None else None
            if value is not None:  # evicted or dropped since: nothing to save (eviction wrote its tombstone)
                checkpoint.snapshots.append((encounter.encode(), value, partition))
            if budget_s is not None and time.perf_counter() - t0 >= budget_s:
                break
        checkpoint.seconds += time.perf_counter() - t0
        if todo:
            return False
        self.metrics.base.processing.labels(SERVICE, "snapshot").observe(checkpoint.seconds)
        return True

    async def _write(self, checkpoint: _Checkpoint) -> None:
        """Publish a checkpoint's snapshots (awaiting acknowledgement), then commit its offsets.

        On failure its encounters are marked unsaved again and nothing is committed: the next checkpoint retries.
        """
        t0 = time.perf_counter()
        try:
            consumer = self.assignment.consumer_of()
            if checkpoint.snapshots and consumer is not None:
                # Only a member of the group's generation writes states: a dropped member's late snapshot would put
                # older state over its partitions' new owner's (vigil_runtime.changelog says how that loses readings).
                topic = self.topics.observations
                await confirm_membership(
                    consumer,
                    {TopicPartition(topic, p): o for p, o in self.committed.items() if p in self.assignment.owned},
                    [TopicPartition(topic, p) for p in sorted(self.assignment.owned)],
                )
            await self.state_sink.send_all(self.topics.scorer_state, checkpoint.snapshots, kind=SCORER_STATE_KIND)
            t1 = time.perf_counter()
            if checkpoint.offsets and consumer is not None:
                await consumer.commit(
                    {TopicPartition(self.topics.observations, p): o for p, o in checkpoint.offsets.items()}
                )
        except BaseException as error:
            core = self.models.core
            held = core.states if core is not None else {}
            owned = self.assignment.owned
            for encounter, partition in checkpoint.encounters:
                if encounter in held and partition in owned:
                    self.unsaved.setdefault(encounter, partition)
            await self._outcome(error)
            raise
        await self._outcome(None)
        owned = self.assignment.owned
        self.committed.update({p: o for p, o in checkpoint.offsets.items() if p in owned})
        stages = self.metrics.base.processing
        stages.labels(SERVICE, "publish_state").observe(t1 - t0)
        stages.labels(SERVICE, "commit").observe(time.perf_counter() - t1)

    def ok(self) -> bool:
        """False once checkpoints keep failing: offsets stop advancing, so a restart would replay ever more."""
        return self.failures < self.settings.checkpoint_failures_unready

    async def _outcome(self, error: BaseException | None) -> None:
        """Count a checkpoint's outcome; open an alert when they keep failing, resolve it when one is written."""
        was_ok = self.ok()
        self.failures = 0 if error is None else self.failures + 1
        self.metrics.checkpoint_failures.set(self.failures)
        if was_ok == self.ok():
            return
        state: Literal["open", "resolved"] = "resolved" if error is None else "open"
        if error is not None:
            log.error(
                "checkpoints keep failing: not ready",
                extra={"error_type": type(error).__name__, "failures": self.failures},
            )
        core = self.models.core
        alert = AlertRaised(
            event_id=deterministic_id("checkpoint-alert", self.settings.group_id, state, time.time()),
            occurred_at=utcnow(),
            key=f"checkpoint:{self.settings.group_id}",
            alert_key=f"checkpoint:{self.settings.group_id}",
            state=state,
            kind="checkpoint",
            severity=Severity.CRITICAL,
            model_name=core.model_name if core is not None else None,
            model_version=core.model_version if core is not None else None,
            metric="checkpoint_failures",
            value=float(self.failures),
            threshold=float(self.settings.checkpoint_failures_unready),
            window="checkpoints in a row",
            evidence={"error_type": type(error).__name__} if error is not None else {},
        )
        try:
            await self.sink.publish_all(self.topics.alerts, [alert])
        except Exception as publish_error:  # the broker may be what fails: /ready and the gauge still say it
            log.error("checkpoint alert not published", extra={"error_type": type(publish_error).__name__})

    async def settle(self) -> None:
        """Finish the checkpoint under way, if any, and wait until it is written (call under :attr:`lock`).

        Its failure is counted and logged where it ran; its encounters are then unsaved again.
        """
        if self.capturing is not None:
            self._capture(self.capturing)
            self._start_writing(self.capturing)
        task = self.writing
        if task is not None:
            try:
                await asyncio.shield(task)
            except Exception as error:  # the write's own handler counted it; the caller only waits for it to end
                log.warning("changelog write failed while waiting for it", extra={"error_type": type(error).__name__})

    async def checkpoint(self, partitions: set[int] | None = None) -> None:
        """Checkpoint now and wait for it (under :attr:`lock`; a revocation passes the revoked ``partitions``)."""
        await self.settle()
        if partitions is None:
            self.last_checkpoint = time.monotonic()
        checkpoint = self._begin(partitions)
        self._capture(checkpoint)
        await self._write(checkpoint)

    def step(self) -> None:
        """Between batches: begin a checkpoint when one is due, capture a slice of it, write it once captured.

        Snapshots are captured a couple of milliseconds per batch rather than all at once (a busy unit's states
        take tens of milliseconds to serialise), and written and committed in the background while the next
        batches are scored. One checkpoint is under way at a time.
        """
        if self.capturing is None:
            if self.writing is not None and not self.writing.done():
                return
            if time.monotonic() - self.last_checkpoint < self.settings.checkpoint_interval_s:
                return
            self.last_checkpoint = time.monotonic()
            self.capturing = self._begin(None)
        if self._capture(self.capturing, CAPTURE_SLICE_S):
            self._start_writing(self.capturing)

    def _start_writing(self, checkpoint: _Checkpoint) -> None:
        self.capturing = None
        task = asyncio.create_task(self._write(checkpoint))
        task.add_done_callback(self._written)
        self.writing = task

    def _written(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.metrics.errors.labels("checkpoint").inc()
            log.error("checkpoint failed; retried", extra={"error_type": type(task.exception()).__name__})

    async def loop(self) -> None:
        """Checkpoint when the stream goes quiet, so the last batches do not wait for the next one."""
        while True:
            await asyncio.sleep(max(self.settings.checkpoint_interval_s, 0.1))
            if time.monotonic() - self.last_checkpoint < self.settings.checkpoint_interval_s:
                continue
            try:
                async with self.lock:
                    if self.pending():
                        await self.checkpoint()
            except Exception:
                self.metrics.errors.labels("checkpoint").inc()
                log.exception("checkpoint failed; retried")

    async def before_revocation(self, partitions: set[int]) -> None:
        """Save what was processed of partitions about to be revoked, so their new owner restores instead of replays.

        Under the lock. A failure is counted and logged: the new owner then replays from the last commit.
        """
        try:
            await self.checkpoint(partitions & self.assignment.owned - self.assignment.needs_restore)
        except Exception:
            self.metrics.errors.labels("checkpoint").inc()
            log.exception("checkpoint before revocation failed; the new owner replays from the last commit")
        self.forget(partitions, committed=True)
