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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from faststream.kafka.message import KafkaMessage
from prometheus_client import Counter, Gauge

from vigil_contracts.events import (
    AlertRaised,
    LifecycleAction,
    ModelLifecycleChanged,
    Severity,
    Stage,
    canonical_event_adapter,
    deterministic_id,
    utcnow,
)
from vigil_runtime.kafka import DeadLetters, Parsed, encode, process_batch, records_of
from vigil_runtime.metrics import ServiceMetrics
from vigil_runtime.producer import AckedProducer
from vigil_runtime.reader import read_to_end
from vigil_runtime.registry_client import PackageRejected, RegistryClient, RegistryUnavailable
from vigil_scorer.settings import Settings
from vigil_scoring.model_package import ModelPackage, default_package_path
from vigil_scoring.scoring import Incoming, LivePublisher, NotProductionError, ScoringCore

log = logging.getLogger(__name__)
SERVICE = "scorer"
CAPTURE_SLICE_S = 0.002
"""Time a batch spends capturing checkpoint snapshots before it hands back to scoring."""


@dataclass
class LoadedModel:
    """A fully loaded, verified package and the stage the registry gave it."""

    package: ModelPackage
    stage: Stage
    default_model: bool = False


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


class ScorerMetrics:
    """The service's instruments beyond the shared convention (same registry)."""

    def __init__(self, base: ServiceMetrics) -> None:
        r = base.registry
        self.base = base
        self.errors = Counter("vigil_scorer_errors", "Failed batches and refused swaps, by kind.", ["kind"], registry=r)
        self.model = Gauge(
            "vigil_model_info",
            "The model in use (value 1).",
            ["service", "model", "version", "stage", "default_model"],
            registry=r,
        )
        self.lag = Gauge("vigil_consumer_lag", "Highwater minus position, per partition.", ["partition"], registry=r)
        self.states = Gauge("vigil_scorer_states", "Encounter states held in memory.", registry=r)
        self.evictions = Counter("vigil_scorer_evictions", "Idle encounter states evicted.", registry=r)
        self.swaps = Counter("vigil_model_swaps", "Model swaps, by outcome.", ["outcome"], registry=r)
        self.restored = Counter("vigil_scorer_restored_states", "States restored from the changelog.", registry=r)
        self.checkpoint_failures = Gauge(
            "vigil_scorer_checkpoint_failures", "Checkpoints failed in a row (0 once one is written).", registry=r
        )


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
        self.core: ScoringCore | None = None
        self.live: LivePublisher | None = None
        self.lock = asyncio.Lock()
        """Held by a batch, a swap, a rebalance and an eviction: each happens between batches."""
        self.assignment_done = asyncio.Event()
        self.owned: set[int] = set()
        self.needs_restore: set[int] = set()
        self.consumer_of: Callable[[], Any] = lambda: None
        """The subscriber's aiokafka consumer (lag, commits, rewinds), once the broker has started."""
        self.unsaved: dict[str, int | None] = {}
        """Encounters changed since the last checkpoint, with their partition."""
        self.consumed: dict[int, int] = {}
        """Per owned partition, the offset after the last record processed (what the next checkpoint commits)."""
        self.committed: dict[int, int] = {}
        """Per owned partition, the offset the last checkpoint committed."""
        self._last_checkpoint = time.monotonic()
        self._writing: asyncio.Task[None] | None = None
        """The checkpoint being written, if any."""
        self._capturing: _Checkpoint | None = None
        """The checkpoint whose snapshots are being captured, a slice per batch."""
        self._lag_updated = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.checkpoint_failures = 0
        """Checkpoints failed in a row: from ``checkpoint_failures_unready`` on, /ready fails and an alert is open."""

    # --- model --------------------------------------------------------------------------------------

    async def registry_model(self) -> LoadedModel | None:
        """The registry's production version, loaded and verified; None when the registry has none or is unusable."""
        try:
            ref = await self.registry.production(self.settings.model_name)
            if ref is None or not ref.artifact_url:
                return None
            package = await self.registry.fetch_package(
                ref.artifact_url,
                cache_dir=self.settings.model_cache_dir,
                artifact_sha256=ref.artifact_sha256,
                package_sha256=ref.package_sha256,
            )
        except (RegistryUnavailable, PackageRejected) as error:
            log.warning("registry unusable", extra={"error_type": type(error).__name__})
            return None
        return LoadedModel(package, Stage.PRODUCTION)

    async def load_initial_model(self) -> LoadedModel | None:
        """The registry's production version; else, in development mode only, the default package (flagged).

        Outside development mode a scorer that cannot confirm its production model with the registry (refused,
        unreachable, no production version) fails closed: None, so it scores nothing and is not ready, and
        :meth:`poll_registry` keeps asking.
        """
        model = await self.registry_model()
        if model is not None:
            return model
        if not self.settings.development:
            log.error("the registry confirmed no production model: no live scores until it does (fail closed)")
            return None
        log.warning("no production version from the registry; using the default model (development mode)")
        path = self.settings.default_model_path or default_package_path()
        return LoadedModel(ModelPackage.load(path), Stage.PRODUCTION, default_model=True)

    def install(self, model: LoadedModel) -> None:
        """Swap a loaded model in (call between batches: under :attr:`lock`, or before consuming starts)."""
        if self.core is None:
            self.core = ScoringCore(
                model.package,
                stage=model.stage,
                default_model=model.default_model,
                idle_hours=self.settings.idle_hours,
                dedupe_ids=self.settings.dedupe_ids,
                future_skew=timedelta(seconds=self.settings.max_future_skew_s),
            )
        else:
            self.core.swap(model.package, stage=model.stage, default_model=model.default_model)
        self.live = LivePublisher(self._publish_scores, self.topics.scores_live, self.core)
        self.metrics.model.clear()
        self.metrics.model.labels(
            SERVICE, model.package.name, str(model.package.version), model.stage.value, str(model.default_model).lower()
        ).set(1)
        log.info(
            "model in use",
            extra={
                "model_name": model.package.name,
                "model_version": str(model.package.version),
                "stage": model.stage.value,
            },
        )

    async def on_lifecycle(self, event: ModelLifecycleChanged) -> None:
        """Load a version the registry put in production and swap it in between batches; stop on a demotion."""
        if event.model_name != self.settings.model_name or self.core is None:
            return
        current = (self.core.model_version, self.core.stage, self.core.default_model)
        if event.to_stage is Stage.PRODUCTION and event.action in (
            LifecycleAction.PROMOTED,
            LifecycleAction.ROLLED_BACK,
            LifecycleAction.STAGE_CHANGED,
        ):
            if current == (event.model_version, Stage.PRODUCTION, False):
                return
            try:
                url = event.artifact_url
                if not url:
                    ref = await self.registry.production(event.model_name)
                    url = ref.artifact_url if ref and ref.version == event.model_version else None
                if not url:
                    raise PackageRejected("the lifecycle event names no artifact")
                package = await self.registry.fetch_package(
                    url, cache_dir=self.settings.model_cache_dir, artifact_sha256=event.artifact_sha256
                )
                if str(package.version) != event.model_version or package.name != event.model_name:
                    raise PackageRejected("the package is not the version the event announced")
            except (RegistryUnavailable, PackageRejected, ValueError, OSError) as error:
                self.metrics.swaps.labels("refused").inc()
                self.metrics.errors.labels("swap").inc()
                log.error(
                    "model swap refused",
                    extra={"model_version": event.model_version, "error_type": type(error).__name__},
                )
                return
            async with self.lock:
                self.install(LoadedModel(package, Stage.PRODUCTION))
            self.metrics.swaps.labels("swapped").inc()
        elif (
            event.model_version == self.core.model_version
            and not self.core.default_model
            and event.to_stage is not Stage.PRODUCTION
        ):
            # Our version left production with no successor announced yet: nothing may reach the live topic
            # until one is (batches wait uncommitted).
            async with self.lock:
                self.core.stage = Stage(event.to_stage)
            log.warning("model left production; live scoring paused", extra={"model_version": event.model_version})

    async def poll_registry(self) -> None:
        """Every ``registry_poll_s``, reconcile with the registry's production version.

        On the default model: swap in the registry's version as soon as there is one. On a registry model: swap
        when the registry names another production version (a lifecycle event missed while the subscriber
        started, say). A registry that does not answer changes nothing.
        """
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            core = self.core
            if core is None:
                # Failed closed at start: the first production model the registry confirms is installed.
                first = await self.registry_model()
                if first is not None:
                    async with self.lock:
                        self.install(first)
                        # The restore at assignment failed without a model; without this, it would wait for a
                        # batch that a caller waiting for /ready never sends (states_restored stays false).
                        pending = self.needs_restore & self.owned
                        if pending:
                            try:
                                await self._restore(pending)
                            except Exception:
                                self.metrics.errors.labels("restore").inc()
                                log.exception("state restore failed; retried before the next batch")
                    self.metrics.swaps.labels("swapped").inc()
                continue
            try:
                if not core.default_model:
                    ref = await self.registry.production(self.settings.model_name)
                    if ref is None or (ref.version == core.model_version and core.stage is Stage.PRODUCTION):
                        continue
                model = await self.registry_model()
            except RegistryUnavailable:
                continue
            except Exception:  # keep polling; the current model keeps scoring
                log.exception("registry poll failed")
                continue
            if model is not None and (
                core.default_model or str(model.package.version) != core.model_version or core.stage is not model.stage
            ):
                async with self.lock:
                    self.install(model)
                self.metrics.swaps.labels("swapped").inc()

    # --- batches ------------------------------------------------------------------------------------

    async def on_batch(self, message: KafkaMessage) -> None:
        """The observations subscriber's body: one at-least-once batch."""
        await self.assignment_done.wait()
        async with self.lock:
            t0 = time.perf_counter()
            records = [r for r in records_of(message) if r.partition in self.owned]
            try:
                _, parked = await process_batch(
                    message, canonical_event_adapter, self._handle, self.dead_letters, commit=False
                )
            except BaseException:
                await self._rewind({r.partition for r in records})
                raise
            for r in records:
                if r.offset + 1 > self.consumed.get(r.partition, -1):
                    self.consumed[r.partition] = r.offset + 1
            base = self.metrics.base
            base.processing.labels(SERVICE, "batch").observe(time.perf_counter() - t0)
            base.count(self.topics.observations, "parked", parked)
            self.checkpoint_step()
            if time.monotonic() - self._lag_updated >= 1.0:  # asking for positions per batch costs more than it tells
                self._lag_updated = time.monotonic()
                await self._update_lag()
            if self.core is not None:
                self.metrics.states.set(len(self.core))

    def _begin(self, partitions: set[int] | None) -> _Checkpoint:
        """Start a checkpoint of the states changed so far and the offsets processed so far (between batches)."""
        chosen = [(e, p) for e, p in self.unsaved.items() if partitions is None or p in partitions]
        for encounter, _ in chosen:
            del self.unsaved[encounter]
        offsets = {
            p: o
            for p, o in self.consumed.items()
            if (partitions is None or p in partitions) and p in self.owned and self.committed.get(p) != o
        }
        return _Checkpoint(chosen, offsets, deque(chosen))

    def _capture(self, checkpoint: _Checkpoint, budget_s: float | None = None) -> bool:
        """Snapshot encounters of ``checkpoint`` for about ``budget_s`` (None: all); True once all are captured.

        Call between batches only (under :attr:`lock`): every batch applied to a state then has its scores
        acknowledged, and a snapshot newer than the checkpoint's offsets is safe (replayed records are recognised
        by offset and their scores were published).
        """
        t0 = time.perf_counter()
        core, todo = self.core, checkpoint.todo
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
            await self.state_sink.send_all(self.topics.scorer_state, checkpoint.snapshots)
            t1 = time.perf_counter()
            consumer = self.consumer_of()
            if checkpoint.offsets and consumer is not None:
                await consumer.commit(
                    {TopicPartition(self.topics.observations, p): o for p, o in checkpoint.offsets.items()}
                )
        except BaseException as error:
            held = self.core.states if self.core is not None else {}
            for encounter, partition in checkpoint.encounters:
                if encounter in held and partition in self.owned:
                    self.unsaved.setdefault(encounter, partition)
            await self._checkpoint_outcome(error)
            raise
        await self._checkpoint_outcome(None)
        self.committed.update({p: o for p, o in checkpoint.offsets.items() if p in self.owned})
        stages = self.metrics.base.processing
        stages.labels(SERVICE, "publish_state").observe(t1 - t0)
        stages.labels(SERVICE, "commit").observe(time.perf_counter() - t1)

    def checkpoints_ok(self) -> bool:
        """False once checkpoints keep failing: offsets stop advancing, so a restart would replay ever more."""
        return self.checkpoint_failures < self.settings.checkpoint_failures_unready

    async def _checkpoint_outcome(self, error: BaseException | None) -> None:
        """Count a checkpoint's outcome; open an alert when they keep failing, resolve it when one is written."""
        was_ok = self.checkpoints_ok()
        self.checkpoint_failures = 0 if error is None else self.checkpoint_failures + 1
        self.metrics.checkpoint_failures.set(self.checkpoint_failures)
        if was_ok == self.checkpoints_ok():
            return
        state: Literal["open", "resolved"] = "resolved" if error is None else "open"
        if error is not None:
            log.error(
                "checkpoints keep failing: not ready",
                extra={"error_type": type(error).__name__, "failures": self.checkpoint_failures},
            )
        core = self.core
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
            value=float(self.checkpoint_failures),
            threshold=float(self.settings.checkpoint_failures_unready),
            window="checkpoints in a row",
            evidence={"error_type": type(error).__name__} if error is not None else {},
        )
        try:
            await self.sink.send_all(self.topics.alerts, [(alert.key_bytes(), encode(alert), None)])
        except Exception as publish_error:  # the broker may be what fails: /ready and the gauge still say it
            log.error("checkpoint alert not published", extra={"error_type": type(publish_error).__name__})

    async def settle(self) -> None:
        """Finish the checkpoint under way, if any, and wait until it is written (call under :attr:`lock`).

        Its failure is counted and logged where it ran; its encounters are then unsaved again.
        """
        if self._capturing is not None:
            self._capture(self._capturing)
            self._start_writing(self._capturing)
        task = self._writing
        if task is not None:
            try:
                await asyncio.shield(task)
            except Exception as error:  # the write's own handler counted it; the caller only waits for it to end
                log.warning("changelog write failed while waiting for it", extra={"error_type": type(error).__name__})

    async def checkpoint(self, partitions: set[int] | None = None) -> None:
        """Checkpoint now and wait for it (under :attr:`lock`; a revocation passes the revoked ``partitions``)."""
        await self.settle()
        if partitions is None:
            self._last_checkpoint = time.monotonic()
        checkpoint = self._begin(partitions)
        self._capture(checkpoint)
        await self._write(checkpoint)

    def checkpoint_step(self) -> None:
        """Between batches: begin a checkpoint when one is due, capture a slice of it, write it once captured.

        Snapshots are captured a couple of milliseconds per batch rather than all at once (a busy unit's states
        take tens of milliseconds to serialise), and written and committed in the background while the next
        batches are scored. One checkpoint is under way at a time.
        """
        if self._capturing is None:
            if self._writing is not None and not self._writing.done():
                return
            if time.monotonic() - self._last_checkpoint < self.settings.checkpoint_interval_s:
                return
            self._last_checkpoint = time.monotonic()
            self._capturing = self._begin(None)
        if self._capture(self._capturing, CAPTURE_SLICE_S):
            self._start_writing(self._capturing)

    def _start_writing(self, checkpoint: _Checkpoint) -> None:
        self._capturing = None
        task = asyncio.create_task(self._write(checkpoint))
        task.add_done_callback(self._written)
        self._writing = task

    def _written(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.metrics.errors.labels("checkpoint").inc()
            log.error("checkpoint failed; retried", extra={"error_type": type(task.exception()).__name__})

    async def checkpoint_loop(self) -> None:
        """Checkpoint when the stream goes quiet, so the last batches do not wait for the next one."""
        while True:
            await asyncio.sleep(max(self.settings.checkpoint_interval_s, 0.1))
            if time.monotonic() - self._last_checkpoint < self.settings.checkpoint_interval_s:
                continue
            try:
                async with self.lock:
                    if (
                        self.unsaved
                        or self._capturing is not None
                        or any(self.committed.get(p) != o for p, o in self.consumed.items())
                    ):
                        await self.checkpoint()
            except Exception:
                self.metrics.errors.labels("checkpoint").inc()
                log.exception("checkpoint failed; retried")

    async def _rewind(self, partitions: set[int]) -> None:
        """After a failed batch: forget the partitions' states and progress, rewind them to the committed offsets."""
        await self.settle()
        if self.core is not None:
            self.core.drop_partitions(partitions)
        self.needs_restore |= partitions
        for encounter in [e for e, p in self.unsaved.items() if p in partitions]:
            del self.unsaved[encounter]
        consumer = self.consumer_of()
        for p in partitions:
            self.consumed.pop(p, None)
            if consumer is None:
                continue
            tp = TopicPartition(self.topics.observations, p)
            try:
                offset = self.committed.get(p)
                if offset is None:
                    offset = await consumer.committed(tp)
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
            except Exception as error:  # a partition revoked meanwhile: its new owner starts from the commit
                log.info("rewind skipped", extra={"partition": p, "error_type": type(error).__name__})

    async def _handle(self, items: list[Parsed[Any]]) -> list[tuple[ConsumerRecord[Any, Any], BaseException | str]]:
        core, live = self.core, self.live
        if core is None or live is None:
            await asyncio.sleep(1.0)  # failed closed: no confirmed model yet; the batch stays uncommitted
            raise NotProductionError("no production model confirmed by the registry")
        if core.stage is not Stage.PRODUCTION:
            await asyncio.sleep(1.0)  # paused until a production model is announced; the batch stays uncommitted
            raise NotProductionError("the model in use is not in production")
        # Records fetched before a rebalance may belong to partitions now owned by another process: skip them,
        # their new owner scores them from the committed offset.
        mine = [p for p in items if p.record.partition in self.owned]
        base = self.metrics.base
        base.batch_size.labels(SERVICE).observe(len(items))
        if len(mine) < len(items):
            base.count(self.topics.observations, "not_owned", len(items) - len(mine))
        partitions = {p.record.partition for p in mine}
        try:
            if self.needs_restore & partitions:
                await self._restore(self.needs_restore & partitions)
            t0 = time.perf_counter()
            outcome = core.process(
                Incoming(p.event, p.record.timestamp / 1000.0, p.record.partition, p.record.offset) for p in mine
            )
            t1 = time.perf_counter()
            await live.publish(outcome.scores)
            t2 = time.perf_counter()
            self.unsaved.update(outcome.changed)
            stages = base.processing
            stages.labels(SERVICE, "score").observe(t1 - t0)
            stages.labels(SERVICE, "publish_scores").observe(t2 - t1)
        except BaseException:
            # The in-memory states may now be ahead of the changelog: drop them, re-read them before the retry
            # (on_batch also rewinds the partitions to their committed offsets).
            self.metrics.errors.labels("batch").inc()
            core.drop_partitions(partitions)
            self.needs_restore |= partitions
            if self._capturing is not None:
                # A checkpoint under way has not captured all of these partitions' states, and now cannot: it must
                # not commit their offsets past the snapshots it lacks (its other partitions are unaffected).
                for p in partitions:
                    self._capturing.offsets.pop(p, None)
            raise
        failed: list[tuple[ConsumerRecord[Any, Any], BaseException | str]] = [
            (mine[i].record, reason) for i, reason in outcome.failures
        ]
        base.count(self.topics.observations, "processed", outcome.applied)
        base.count(self.topics.observations, "duplicate", outcome.duplicates)
        if outcome.scores:
            labels = (SERVICE, core.model_name, core.model_version, core.stage.value)
            base.scores.labels(*labels).inc(len(outcome.scores))
            hist = base.score_latency.labels(*labels)
            for s in outcome.scores:
                hist.observe(s.latency_ms / 1000.0)
        return failed

    async def _publish_scores(self, topic: str, scores: Any) -> None:
        await self.sink.send_all(topic, [(s.key_bytes(), encode(s), None) for s in scores])

    async def _update_lag(self) -> None:
        """Per assigned partition: the broker's highwater minus this consumer's position (after the batch)."""
        consumer = self.consumer_of()
        if consumer is None:
            return
        for tp in consumer.assignment():
            if tp.topic != self.topics.observations:
                continue
            try:
                highwater = consumer.highwater(tp)
                position = await asyncio.wait_for(consumer.position(tp), timeout=0.2)
            except Exception as error:  # the lag gauge is best effort: a revoked or slow partition keeps its value
                log.debug("lag not measured", extra={"partition": tp.partition, "error_type": type(error).__name__})
                continue
            if highwater is not None and position is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, highwater - position))

    # --- partitions ---------------------------------------------------------------------------------

    async def _restore(self, partitions: Iterable[int]) -> None:
        parts = set(partitions)
        # Snapshots go to the changelog partition numbered like the observations partition their events come
        # from, so the owner of observations partition p restores by reading changelog partition p to its end.
        values = await read_to_end(
            self.settings.kafka,
            self.topics.scorer_state,
            parts,
            timeout_s=self.settings.restore_timeout_s,
        )
        if self.core is None:
            raise RuntimeError("states restored before the model was loaded")
        self.core.drop_partitions(parts)
        restored = 0
        for encounter, value in values.items():
            try:
                self.core.restore(encounter, value)
            except (ValueError, KeyError, TypeError):
                self.metrics.errors.labels("restore").inc()
                log.exception("unreadable changelog snapshot ignored")
                continue
            restored += value is not None
        self.needs_restore -= parts
        await self._mark_replay(parts)
        self.metrics.restored.inc(restored)
        log.info("states restored", extra={"count": restored, "processed": len(parts)})

    async def _mark_replay(self, partitions: set[int]) -> None:
        """Mark records before the partitions' current log end as a replay (the previous owner may have scored them).

        A score of them under another model version than the snapshot's is marked as a re-score (``rescore``).
        """
        consumer = self.consumer_of()
        if consumer is None or self.core is None or not partitions:
            return
        tps = [TopicPartition(self.topics.observations, p) for p in partitions]
        try:
            ends = await consumer.end_offsets(tps)
        except Exception as error:  # without it, replayed scores are still correct, only not marked
            log.warning("log end offsets unavailable", extra={"error_type": type(error).__name__})
            return
        for tp, end in ends.items():
            self.core.replay_until[tp.partition] = int(end)

    async def partitions_revoked(self, partitions: set[int]) -> None:
        """Drop the states of revoked partitions once the in-flight batch is done."""
        self.assignment_done.clear()
        async with self.lock:
            # Save what was processed, so the new owner restores it instead of replaying it.
            try:
                await self.checkpoint(partitions & self.owned - self.needs_restore)
            except Exception:
                self.metrics.errors.labels("checkpoint").inc()
                log.exception("checkpoint before revocation failed; the new owner replays from the last commit")
            if self.core is not None:
                self.core.drop_partitions(partitions)
            self.owned -= partitions
            self.needs_restore -= partitions
            for encounter in [e for e, p in self.unsaved.items() if p in partitions]:
                del self.unsaved[encounter]
            for p in partitions:
                self.consumed.pop(p, None)
                self.committed.pop(p, None)
            for p in partitions:
                with contextlib.suppress(KeyError):
                    self.metrics.lag.remove(str(p))

    async def partitions_assigned(self, partitions: set[int]) -> None:
        """Restore the assigned partitions' states from the changelog before any of their records is scored."""
        try:
            async with self.lock:
                self.owned = set(partitions)
                self.needs_restore |= partitions
                for p in partitions:
                    self.consumed.pop(p, None)
                    self.committed.pop(p, None)
                try:
                    await self._restore(self.needs_restore & partitions)
                except Exception:
                    # Retried by the first batch from these partitions (they stay in needs_restore).
                    self.metrics.errors.labels("restore").inc()
                    log.exception("state restore failed; retried before the next batch")
        finally:
            self.assignment_done.set()

    # --- eviction -----------------------------------------------------------------------------------

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
                    self.topics.scorer_state, [(enc.encode(), None, partition) for enc, partition in evicted]
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
        """Eviction and registry reconciliation."""
        self._tasks = [
            asyncio.create_task(self.evict_loop()),
            asyncio.create_task(self.poll_registry()),
            asyncio.create_task(self.checkpoint_loop()),
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
