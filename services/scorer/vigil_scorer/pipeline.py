"""The live scorer's Kafka side: batches in, scores and state snapshots out, offsets committed last.

One batch (FastStream batch subscriber, ``AckPolicy.MANUAL``) goes through ``vigil_runtime.kafka.process_batch``:

1. records that do not parse are parked in the dead-letter topic (so are events without an encounter);
2. :class:`~vigil_scoring.scoring.ScoringCore` applies the rest and scores every touched encounter-hour in one
   model call;
3. the scores are published to the live topic through :class:`~vigil_scoring.scoring.LivePublisher` (which refuses
   anything but a production-stage model) and acknowledged (acks=all, idempotent producer).

Every ``checkpoint_interval_s`` (and before partitions are given up in a rebalance) a checkpoint follows a batch:

4. the snapshots of the encounters changed since the last checkpoint are published to the compacted changelog
   and acknowledged;
5. only then the offsets of every batch processed since the last checkpoint are committed.

Checkpointing every batch would write each touched encounter's whole state (kilobytes) per batch and add two
broker round trips to every batch's latency; a checkpoint a second writes each encounter once.

A crash before 4 restores the older snapshots and replays from the older committed offsets: the same events,
so the same scores with the same ids (consumers dedupe). A crash between 4 and 5 restores the newer snapshots,
whose last applied offsets make the replayed records duplicates: their scores were already acknowledged in 3.
Either way every encounter-hour is scored and its score is what an uninterrupted scorer produces. A failed
batch is handled like a crash of its partitions: their states are dropped, re-read from the changelog, and the
partitions rewound to their committed offsets.

Partitions follow the consumer group: on assignment the states of the assigned partitions are read back from the
changelog before any of their records is scored; on revocation they are dropped (after the in-flight batch).

The parts, each its own module: :mod:`vigil_scorer.model_manager` (which model is live), :mod:`vigil_scorer.batch`
(steps 1-3, restores and rewinds), :mod:`vigil_scorer.checkpointer` (steps 4-5, failure counting); they share the
partitions owned (:mod:`vigil_scorer.assignment`) and one lock. :class:`ScorerService` only wires them: it holds
the lock around each batch, rebalance and eviction, so each happens between batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.abc import ConsumerRebalanceListener
from faststream.kafka.message import KafkaMessage

from vigil_contracts.events import ModelLifecycleChanged, canonical_event_adapter
from vigil_runtime.changelog import Restores
from vigil_runtime.kafka import DeadLetters, Parsed, process_batch, records_of
from vigil_runtime.metrics import ServiceMetrics
from vigil_runtime.producer import AckedProducer
from vigil_runtime.registry_client import RegistryClient
from vigil_runtime.tracing import SCORER_STATE_KIND
from vigil_scorer.assignment import Assignment
from vigil_scorer.batch import BatchStep
from vigil_scorer.checkpointer import Checkpointer, _Checkpoint
from vigil_scorer.metrics import SERVICE, ScorerMetrics
from vigil_scorer.model_manager import LoadedModel, ModelManager
from vigil_scorer.settings import Settings
from vigil_scoring.model_package import ModelPackage
from vigil_scoring.scoring import LivePublisher, ScoringCore

__all__ = ["SERVICE", "LoadedModel", "ScorerMetrics", "ScorerService", "StateRebalanceListener"]
log = logging.getLogger(__name__)


class ScorerService:
    """Everything the live scorer holds between batches; FastStream handlers delegate here."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        *,
        sink: AckedProducer,
        state_sink: AckedProducer | None = None,
        dead_letters: DeadLetters,
        registry: RegistryClient[ModelPackage],
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.metrics = ScorerMetrics(metrics)
        self.sink = sink
        self.state_sink = state_sink or sink
        """The changelog's producer: its own connection, so megabytes of snapshots do not queue ahead of scores."""
        self.dead_letters = dead_letters
        self.registry = registry
        self.lock = asyncio.Lock()
        """Held by a batch, a swap, a rebalance and an eviction: each happens between batches."""
        self.assignment_done = asyncio.Event()
        self.closing = False
        """Set by :meth:`hand_over`: no partition is taken on again."""
        self.assignment = Assignment()
        self.models = ModelManager(settings, self.metrics, sink=sink, registry=registry, lock=self.lock)
        self.checkpointer = Checkpointer(
            settings,
            self.metrics,
            sink=sink,
            state_sink=self.state_sink,
            models=self.models,
            assignment=self.assignment,
            lock=self.lock,
        )
        self.batch = BatchStep(
            settings, self.metrics, models=self.models, checkpointer=self.checkpointer, assignment=self.assignment
        )
        self.models.on_first_model = self._restore_pending
        self._tasks: list[asyncio.Task[None]] = []
        self.restores = Restores()
        """Background restores started by :meth:`partitions_assigned`."""

    async def _restore_pending(self) -> None:
        """Restore the owned partitions whose restore at assignment failed for want of a model.

        Without this a scorer that failed closed at start would wait for a batch before restoring, and a caller
        waiting for /ready (states_restored) before sending anything would wait for ever.
        """
        pending = self.needs_restore & self.owned
        if not pending:
            return
        try:
            await self.batch.restore(pending)
        except Exception:
            self.metrics.errors.labels("restore").inc()
            log.exception("state restore failed; retried before the next batch")

    # --- the parts' state, as the app, the routes and the tests read it ------------------------------

    @property
    def core(self) -> ScoringCore | None:
        """The scoring core (None until a model is confirmed)."""
        return self.models.core

    @property
    def live(self) -> LivePublisher | None:
        """The live topic's publisher for the model in use."""
        return self.models.live

    @property
    def owned(self) -> set[int]:
        """The observations partitions this process owns."""
        return self.assignment.owned

    @owned.setter
    def owned(self, partitions: set[int]) -> None:
        self.assignment.owned = partitions

    @property
    def needs_restore(self) -> set[int]:
        """Owned partitions whose states are still to be read back from the changelog."""
        return self.assignment.needs_restore

    @property
    def consumer_of(self) -> Callable[[], Any]:
        """The subscriber's aiokafka consumer (lag, commits, rewinds), once the broker has started."""
        return self.assignment.consumer_of

    @consumer_of.setter
    def consumer_of(self, consumer_of: Callable[[], Any]) -> None:
        self.assignment.consumer_of = consumer_of

    @property
    def unsaved(self) -> dict[str, int | None]:
        """Encounters changed since the last checkpoint, with their partition."""
        return self.checkpointer.unsaved

    @property
    def consumed(self) -> dict[int, int]:
        """Per owned partition, the offset after the last record processed."""
        return self.checkpointer.consumed

    @property
    def committed(self) -> dict[int, int]:
        """Per owned partition, the offset the last checkpoint committed."""
        return self.checkpointer.committed

    @property
    def _capturing(self) -> _Checkpoint | None:
        return self.checkpointer.capturing

    # --- model ------------------------------------------------------------------------------------

    async def load_initial_model(self) -> LoadedModel | None:
        """See :meth:`ModelManager.load_initial_model`."""
        return await self.models.load_initial_model()

    def install(self, model: LoadedModel) -> None:
        """Swap a loaded model in (between batches: under :attr:`lock`, or before consuming starts)."""
        self.models.install(model)

    async def on_lifecycle(self, event: ModelLifecycleChanged) -> None:
        """The lifecycle subscriber's body (see :meth:`ModelManager.on_lifecycle`)."""
        await self.models.on_lifecycle(event)

    async def poll_registry(self) -> None:
        """See :meth:`ModelManager.poll_registry`."""
        await self.models.poll_registry()

    # --- batches and checkpoints ------------------------------------------------------------------

    async def on_batch(self, message: KafkaMessage) -> None:
        """The observations subscriber's body: one at-least-once batch."""
        await self.assignment_done.wait()
        async with self.lock:
            t0 = time.perf_counter()
            records = [r for r in records_of(message) if r.partition in self.owned]
            try:
                await process_batch(
                    message, canonical_event_adapter, self.batch.handle, self.dead_letters, commit=False
                )
            except BaseException:
                await self.batch.rewind({r.partition for r in records})
                raise
            for r in records:
                self.checkpointer.advanced(r.partition, r.offset)
            base = self.metrics.base
            base.processing.labels(SERVICE, "batch").observe(time.perf_counter() - t0)
            # Parked records are counted once, by the dead letters' ``on_parked`` (app.py), as in shadow and drift.
            self.checkpointer.step()
            if self.core is not None:
                self.metrics.states.set(len(self.core))

    async def _handle(self, items: list[Parsed[Any]]) -> list[tuple[ConsumerRecord[Any, Any], BaseException | str]]:
        return await self.batch.handle(items)

    async def _rewind(self, partitions: set[int]) -> None:
        await self.batch.rewind(partitions)

    def checkpoint_step(self) -> None:
        """See :meth:`Checkpointer.step`."""
        self.checkpointer.step()

    async def checkpoint(self, partitions: set[int] | None = None) -> None:
        """Checkpoint now and wait for it (under :attr:`lock`)."""
        await self.checkpointer.checkpoint(partitions)

    async def settle(self) -> None:
        """Finish the checkpoint under way, if any, and wait until it is written (under :attr:`lock`)."""
        await self.checkpointer.settle()

    def checkpoints_ok(self) -> bool:
        """False once checkpoints keep failing (/ready's ``checkpoints`` check)."""
        return self.checkpointer.ok()

    # --- partitions -------------------------------------------------------------------------------

    async def partitions_revoked(self, partitions: set[int]) -> None:
        """Drop the states of revoked partitions once the in-flight batch is done."""
        self.assignment_done.clear()
        self.restores.cancel()  # the group waits for this member's rejoin; the next assignment restores again
        async with self.lock:
            await self.checkpointer.before_revocation(partitions)
            if self.core is not None:
                self.core.drop_partitions(partitions)
            self.assignment.owned -= partitions
            self.assignment.needs_restore -= partitions

    async def hand_over(self) -> None:
        """At a clean stop, before the consumer leaves its group: checkpoint everything, then own nothing.

        Written while still a member of the group's generation, so the next owner restores these states and resumes
        from this commit (after leaving, the membership check refuses the write). Batches still delivered are not
        scored and stay uncommitted: the next owner scores them.
        """
        self.assignment_done.clear()
        self.restores.cancel()  # leaving: a restore still under way is of no use
        async with self.lock:
            self.closing = True
            owned = set(self.assignment.owned)
            await self.checkpointer.before_revocation(owned - self.assignment.needs_restore)
            if self.core is not None:
                self.core.drop_partitions(owned)
            self.assignment.owned = set()
            self.assignment.needs_restore = set()
        self.assignment_done.set()  # a batch waiting for the assignment finds nothing owned and scores nothing

    async def partitions_assigned(self, partitions: set[int]) -> None:
        """Take the assigned partitions; their states are restored in the background before any record is scored.

        Not awaited here: aiokafka calls this before it resumes the group's heartbeats, and a changelog read that
        outlasts the session costs the membership (``vigil_runtime.changelog``'s docstring). A batch that comes
        first restores what is still due itself (BatchStep), and /ready waits for the restore.
        """
        try:
            async with self.lock:
                if self.closing:  # handed over: the consumer is leaving, the next owner restores them
                    return
                self.assignment.owned = set(partitions)
                self.assignment.needs_restore |= partitions
                for p in partitions:
                    self.consumed.pop(p, None)
                    self.committed.pop(p, None)
        finally:
            self.assignment_done.set()
        if partitions:
            self.restores.start(self._restore_assigned(), name="restore scorer states")

    async def _restore_assigned(self) -> None:
        async with self.lock:
            if not self.closing:
                # Errors are logged there; the partitions stay due and their first batch retries.
                await self._restore_pending()

    # --- eviction ---------------------------------------------------------------------------------

    async def evict_idle(self, now: float | None = None) -> int:
        """Evict idle encounters and tombstone them in the changelog."""
        async with self.lock:
            if self.core is None:
                return 0
            await self.settle()  # no snapshot in flight may land after a tombstone
            evicted = self.core.evict_idle(now)
            for encounter, _ in evicted:
                self.unsaved.pop(encounter, None)
            if evicted:
                await self.state_sink.send_all(
                    self.topics.scorer_state,
                    [(enc.encode(), None, partition) for enc, partition in evicted],
                    kind=SCORER_STATE_KIND,
                )
                self.metrics.evictions.inc(len(evicted))
            self.metrics.states.set(len(self.core))
            return len(evicted)

    async def evict_loop(self) -> None:
        """Run :meth:`evict_idle` every ``evict_every_s``."""
        while True:
            await asyncio.sleep(self.settings.evict_every_s)
            try:
                await self.evict_idle()
            except Exception:
                log.exception("eviction failed")

    def start_background(self) -> None:
        """Eviction, registry reconciliation and quiet-stream checkpoints."""
        self._tasks = [
            asyncio.create_task(self.evict_loop()),
            asyncio.create_task(self.models.poll_registry()),
            asyncio.create_task(self.checkpointer.loop()),
        ]

    async def stop_background(self) -> None:
        """Cancel the background tasks."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []


class StateRebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Moves state with the partitions: drop on revocation, restore from the changelog on assignment."""

    def __init__(self, service: ScorerService) -> None:
        self.service = service
        self.topic = service.topics.observations

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Called by aiokafka before a rebalance."""
        await self.service.partitions_revoked({tp.partition for tp in revoked if tp.topic == self.topic})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """Called by aiokafka after a rebalance."""
        await self.service.partitions_assigned({tp.partition for tp in assigned if tp.topic == self.topic})
