"""The shadow service: candidates scored on the live stream, judged against live as outcomes arrive.

Kafka side (FastStream):

- ``shadow.observations``: the canonical observations topic in the service's own consumer group
  (``settings.group_id``), batches under the at-least-once contract (``process_batch``: parse, score, publish to
  the shadow topic awaiting acknowledgement, park what cannot be used). Every shadow-stage candidate predicts each
  batch's rows in one vectorised call per candidate (:class:`~vigil_shadow.engine.ShadowCore`). Offsets are
  committed by checkpoints (:class:`vigil_runtime.changelog.Changelog`): every ``checkpoint_interval_s`` the
  feature states the batches changed go to the compacted ``shadow.state`` changelog (keyed by encounter, on the
  partition of the encounter's observations), acknowledged, and only then the offsets are committed;
- the join (:mod:`vigil_shadow.joinlog`): live scores, shadow scores, outcomes and observations (subgroup
  attributes) read WITHOUT a group by every instance. At start the join is restored from its checkpoints in the
  ``shadow.state`` changelog and read on from the positions they name, not rebuilt from the topics' retention;
- ``shadow.lifecycle``: registry decisions; a watched model's event refreshes the candidates.

Feature state follows its partitions: on assignment the states of the assigned partitions are read back from the
changelog (its compacted view, not the observations' retention) before any of their records is scored; on
revocation they are checkpointed and dropped, so another instance of the group takes them over.

HTTP: ``GET /comparisons``, ``POST /comparisons/publish``, replay jobs (``POST /replays``, ``GET /replays[/{id}]``,
:mod:`vigil_shadow.jobs`), plus the frame's ``/health``, ``/ready``, ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

from aiokafka import ConsumerRecord
from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka import KafkaMessage

from vigil_contracts.events import (
    AlertRaised,
    ComparisonSummarized,
    ModelLifecycleChanged,
    RiskScored,
    any_event_adapter,
    canonical_event_adapter,
)
from vigil_runtime.changelog import Changelog, ChangelogRebalanceListener, stop_checkpoint
from vigil_runtime.kafka import (
    DeadLetters,
    EventPublisher,
    Parsed,
    existing,
    make_broker,
    process_batch,
    raw_batch_decoder,
    raw_decoder,
    records_of,
)
from vigil_runtime.metrics import ServiceMetrics
from vigil_runtime.producer import AckedProducer
from vigil_runtime.provenance import LifecycleGate, LifecycleVerifier
from vigil_runtime.service import ServiceRuntime, build_http_app
from vigil_runtime.tracing import SHADOW_STATE_KIND
from vigil_scoring.scoring import Incoming
from vigil_shadow.api.routes import comparisons, replays
from vigil_shadow.catalog import Catalog, ModelKey, RegistryReader, ShadowModel
from vigil_shadow.compare import CompareConfig
from vigil_shadow.desk import ComparisonDesk
from vigil_shadow.engine import ShadowCore
from vigil_shadow.guard import ShadowScorePublisher
from vigil_shadow.jobs import ReplayJobs
from vigil_shadow.join import JoinState
from vigil_shadow.joinlog import JoinLog, JoinReader
from vigil_shadow.replay import ReplayRequest
from vigil_shadow.settings import Settings

SERVICE = "shadow"
log = logging.getLogger(__name__)


class ShadowService:
    """The service's parts, wired once; handlers delegate here."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, publisher: EventPublisher) -> None:
        self.settings = settings
        self.metrics = metrics
        topics = settings.topics
        self.scores_out = ShadowScorePublisher(
            publisher.publish_all, topic=settings.shadow_topic, live_topic=topics.scores_live
        )
        # The first dead letter must be an increase for the alert: the parked series exist from the start.
        metrics.declare([topics.observations, topics.scores_live, topics.scores_shadow, topics.outcomes], "parked")
        self.dead_letters = DeadLetters(
            publisher,
            topics.dead_letter,
            service=SERVICE,
            on_parked=lambda letter: metrics.count(letter.source_topic, "parked"),
        )
        self.core = ShadowCore(dedupe_ids=settings.dedupe_ids)
        self.state_sink = AckedProducer(settings.kafka, client_id=f"vigil-{SERVICE}-state")
        """The changelog's producer: its own connection, so snapshots do not queue ahead of scores."""
        self.changelog = Changelog(
            settings.kafka,
            topic=topics.shadow_state,
            source_topic=topics.observations,
            state=self.core,
            sink=self.state_sink,
            kind=SHADOW_STATE_KIND,
            interval_s=settings.checkpoint_interval_s,
            restore_timeout_s=settings.restore_timeout_s,
        )
        registry = (
            RegistryReader(
                settings.registry_url,
                token=settings.registry_token,
                timeout=settings.registry_timeout_s,
                cache_dir=settings.model_cache_dir,
                development=settings.development,
            )
            if settings.registry_url
            else None
        )
        self.catalog = Catalog(
            model_names=settings.model_names,
            local_models=settings.local_models,
            registry=registry,
            on_change=self._models_changed,
        )
        self.join = JoinState()
        self.desk = ComparisonDesk(
            self.join,
            CompareConfig.from_settings(settings),
            publish=publisher.publish_all,
            topic=topics.comparisons,
            metrics=metrics,
            min_labelled_hours=settings.min_labelled_hours_to_publish,
        )
        self.replays = ReplayJobs(
            self.replay_request,
            max_concurrent=settings.replay_max_concurrent,
            max_pending=settings.replay_max_pending,
            keep=settings.replay_keep,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.join_log = JoinLog(
            settings.kafka,
            join=self.join,
            topic=topics.shadow_state,
            sink=self.state_sink,
            kind=SHADOW_STATE_KIND,
            owned=lambda: self.changelog.owned,
            confirm_member=self.changelog.confirm_member,
            interval_s=settings.checkpoint_interval_s,
            restore_timeout_s=settings.restore_timeout_s,
        )
        self.join_reader = JoinReader(
            settings.kafka,
            [topics.scores_live, topics.scores_shadow, topics.outcomes, topics.observations],
            self.join_log,
            self.join_batch,
        )

    @property
    def restored(self) -> bool:
        """True once the owned partitions' feature states are read back from the changelog."""
        return self.changelog.ready

    @property
    def join_rebuilt(self) -> bool:
        """True once the join is restored and has read its topics up to where they ended when reading began."""
        return self.join_reader.caught_up

    def _models_changed(self, models: dict[ModelKey, ShadowModel]) -> None:
        self.core.set_models({k: m.package for k, m in models.items()})
        log.info("shadow candidates changed", extra={"candidates": [f"{n}:{v}" for n, v in sorted(models)]})

    def replay_request(self, model: str, version: str, start: datetime, end: datetime) -> ReplayRequest:
        """A replay of one registry version, read as this service's principal (it may read what replay reads)."""
        settings = self.settings
        return ReplayRequest(
            start=start,
            end=end,
            models=[f"{model}:{version}"],
            kafka=settings.kafka,
            topic_prefix=settings.topic_prefix,
            warmup_hours=settings.replay_warmup_hours,
            registry_url=settings.registry_url,
            registry_token=settings.registry_token,
            cache_dir=settings.model_cache_dir,
            config=CompareConfig.from_settings(settings),
        )

    # --- scoring -----------------------------------------------------------------------------------------

    async def score_batch(self, items: list[Parsed[Any]]) -> list[tuple[ConsumerRecord[Any, Any], BaseException | str]]:
        """Score a parsed batch, publish to the shadow topic (awaiting acks); returns what to park."""
        # Records fetched before a rebalance may belong to partitions now owned by another instance: skip them,
        # their new owner scores them from the committed offset.
        items = [p for p in items if p.record.partition in self.changelog.owned]
        await self.changelog.restore_pending({p.record.partition for p in items})
        incoming = [
            Incoming(
                p.event,
                arrived_at=p.record.timestamp / 1000.0 if p.record.timestamp else None,
                partition=p.record.partition,
                offset=p.record.offset,
            )
            for p in items
        ]
        outcome = self.core.process(incoming)
        await self.scores_out.publish(outcome.scores)
        self.changelog.changed(outcome.changed)
        for s in outcome.scores:
            self.metrics.scores.labels(SERVICE, s.model_name, s.model_version, s.stage.value).inc()
            self.metrics.score_latency.labels(SERVICE, s.model_name, s.model_version, s.stage.value).observe(
                s.latency_ms / 1000.0
            )
        self.metrics.count(self.settings.topics.observations, "duplicate", outcome.duplicates)
        return [(items[i].record, reason) for i, reason in outcome.failures]

    async def on_observations(self, message: KafkaMessage) -> int:
        """One batch: scored and published, its offsets left to the next checkpoint; returns how many applied."""
        await self.changelog.assigned.wait()
        async with self.changelog.lock:
            records = [r for r in records_of(message) if r.partition in self.changelog.owned]
            try:
                processed, _parked = await process_batch(
                    message, canonical_event_adapter, self.score_batch, self.dead_letters, commit=False
                )
            except BaseException:
                # The states may now be ahead of the changelog: drop them, restore them before the retry.
                await self.changelog.rewind({r.partition for r in records})
                raise
            for r in records:
                self.changelog.advanced(r.partition, r.offset)
            try:
                await self.changelog.step()
            except Exception as error:  # the states stay unsaved and the offsets uncommitted: the next one retries
                log.warning("checkpoint failed; retried", extra={"error_type": type(error).__name__})
        return processed

    # --- join --------------------------------------------------------------------------------------------

    async def join_batch(self, records: tuple[ConsumerRecord[Any, Any], ...]) -> None:
        """Feed the join; unreadable score or outcome records are parked (observations: the scorer parks)."""
        bad: list[tuple[ConsumerRecord[Any, Any], BaseException | str]] = []
        observations = self.settings.topics.observations
        for record in records:
            try:
                event = any_event_adapter.validate_json(record.value or b"")
            except ValueError as error:
                if record.topic != observations:
                    bad.append((record, error))
                continue
            self.join.add(event)
        if bad:
            await self.dead_letters.park(bad)
        self.metrics.count("join", "processed", len(records) - len(bad))

    # --- lifecycle and periodic work ---------------------------------------------------------------------

    async def on_lifecycle(self, event: ModelLifecycleChanged) -> None:
        """A watched model changed stage somewhere: reload the candidate set."""
        if event.model_name in self.settings.model_names:
            await self.catalog.refresh()

    async def start(self) -> None:
        """Load candidates, connect the changelog's producer, then start the periodic work."""
        try:
            await self.catalog.refresh()
        except Exception as error:  # a bad local spec is a configuration error: say so and stop
            log.error("candidates could not be loaded", extra={"error_type": type(error).__name__})
            raise
        await self.state_sink.start()
        self._tasks = [
            asyncio.create_task(self._periodic()),
            asyncio.create_task(self.changelog.loop()),
            asyncio.create_task(self.join_reader.run()),
        ]

    async def stop(self) -> None:
        """Stop replay jobs and the periodic tasks, write the unsaved states, close the registry client."""
        await self.replays.aclose()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.state_sink.started:
            # Normally nothing is left: hand_over saved it before the consumer left the group (a stop before the
            # broker started, or a hand-over that failed, leaves it to this, and the membership check decides).
            await stop_checkpoint(self.changelog)
            await self.state_sink.stop()
        if self.catalog.registry is not None:
            await self.catalog.registry.aclose()

    async def hand_over(self) -> None:
        """At a clean stop, before the consumer leaves its group: the join's and the feature states' last checkpoints.

        aiokafka leaves a group at stop without revoking, and after leaving the membership check refuses the writes;
        so the partitions are saved and let go here, while this instance is still their owner.
        """
        try:
            await self.join_log.checkpoint()
        except Exception as error:  # the next owner reads the join again from the last positions saved
            log.warning("join checkpoint at hand-over failed", extra={"error_type": type(error).__name__})
        await self.changelog.hand_over()

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.settings.publish_every_s)
            try:
                if self.catalog.registry is not None:
                    await self.catalog.refresh()
                async with self.changelog.lock:
                    evicted = self.core.evict_idle()
                    if evicted:
                        await self.changelog.tombstone(evicted)
                if self.join_rebuilt:  # a summary from a half-rebuilt join would be partial evidence
                    await self.desk.publish()
            except Exception as error:  # keep running: the next period retries
                log.warning("periodic comparison failed", extra={"error_type": type(error).__name__})


class ShadowRebalanceListener(ChangelogRebalanceListener):
    """The feature states' moves, and the join's last checkpoint of the partitions about to go."""

    def __init__(self, service: ShadowService) -> None:
        super().__init__(service.changelog)
        self.service = service

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Before a rebalance (and at stop): save the join while this instance still writes those partitions."""
        try:
            await self.service.join_log.checkpoint()
        except Exception as error:  # the next owner reads the join again from the last positions saved
            log.warning("join checkpoint before revocation failed", extra={"error_type": type(error).__name__})
        await super().on_partitions_revoked(revoked)


def bootstrap(settings: Settings) -> tuple[ServiceRuntime, ShadowService]:
    """Wire the service's broker, subscribers, metrics and readiness checks."""
    broker = make_broker(settings, client_id=f"vigil-{SERVICE}")
    metrics = ServiceMetrics(SERVICE)
    topics = settings.topics
    publisher = AckedProducer(settings.kafka, client_id=f"vigil-{SERVICE}-out")
    service = ShadowService(settings, metrics, publisher)
    gate = LifecycleGate(
        LifecycleVerifier.from_settings(
            settings.lifecycle_public_key_file,
            registry_url=settings.registry_url or "",
            development=settings.development,
        ),
        service=SERVICE,
        dead_letters=service.dead_letters,
        publisher=publisher,
        alerts_topic=topics.alerts,
        metrics=metrics,
    )
    broker.publisher(topics.alerts, schema=AlertRaised, title="provenance alerts (refused lifecycle events)")
    # Declared for the AsyncAPI document (sends go through the guarded ShadowPublisher and the comparison desk).
    broker.publisher(topics.scores_shadow, schema=RiskScored, title="shadow risk scores (key: encounter)")
    broker.publisher(topics.comparisons, schema=ComparisonSummarized, title="comparisons (key: model name)")
    broker.publisher(topics.shadow_state, title="feature-state changelog (compacted; key: encounter)")

    observations = broker.subscriber(
        *existing(topics.observations),
        group_id=settings.group_id,
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_batch_decoder,
        listener=ShadowRebalanceListener(service),
        title="shadow.observations",
        description="Canonical observations scored by every shadow-stage candidate (shadow score topic only).",
    )
    # FastStream builds the aiokafka consumer at start; checkpoints commit and rewinds seek through it.
    service.changelog.consumer_of = lambda: getattr(observations, "consumer", None)

    @observations
    async def on_observations(body: list[bytes], message: KafkaMessage) -> None:
        processed = await service.on_observations(message)
        metrics.count(topics.observations, "processed", processed)
        metrics.batch_size.labels(SERVICE).observe(len(body))

    @broker.subscriber(
        *existing(topics.lifecycle),
        group_id=None,
        auto_offset_reset="latest",
        decoder=raw_decoder,
        title="shadow.lifecycle",
        description="Registry decisions: a watched model's stage change reloads the candidates.",
    )
    async def on_lifecycle(body: bytes, message: KafkaMessage) -> None:
        # Verified first: a forged event is parked with an alert and does not even trigger a catalog refresh.
        event = await gate.admit(message.raw_message, body)
        if event is None:
            metrics.count(topics.lifecycle, "refused")
            return
        metrics.count(topics.lifecycle, "processed")
        await service.on_lifecycle(event)

    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        broker=broker,
        metrics=metrics,
        checks={
            "state_restored": lambda: service.restored,
            "join_rebuilt": lambda: service.join_rebuilt,
            "producer": lambda: publisher.started,
        },
        # The producer is up before anything may publish and down only after the last comparison is sent.
        on_start=[publisher.start, service.start],
        on_stop=[service.stop, publisher.stop],
        before_leaving=[service.hand_over],  # saved while still a member: the next owner resumes from it
    )
    return runtime, service


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's HTTP app; its lifespan runs the Kafka side."""
    runtime, service = bootstrap(settings or Settings())
    app = build_http_app(runtime, title="Vigil shadow", description=__doc__ or "")
    app.state.shadow = service
    app.include_router(comparisons.router)
    app.include_router(replays.router)
    return app
