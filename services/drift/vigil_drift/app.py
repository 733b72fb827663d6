"""The drift service: thin FastStream consumers over :class:`~vigil_drift.core.DriftCore`, FastAPI for HTTP.

One batch subscriber over observations, scores.live and outcomes follows the at-least-once contract
(``process_batch``: parse or dead-letter, publish the alerts and wait for the broker, then commit). Alert events
that could not be published stay queued and go out with the next batch, so a transition is never lost while
the process lives.

Detector state is durable (:mod:`vigil_drift.state`, :class:`vigil_runtime.changelog.Changelog`): batches leave
their offsets uncommitted; every ``checkpoint_interval_s`` the core's state (windows, counters, open conditions,
scores waiting for outcomes) is written to the compacted ``drift.state`` changelog and acknowledged, then the
offsets of the three topics are committed. On assignment the state is read back before any record is applied, so
a restarted service resumes its windows and raises the alerts an uninterrupted one would. A failed batch rewinds
to the last checkpoint (state restored, offsets rewound) and its alerts are derived again from the replay.

Several instances in one group run active/standby (:mod:`vigil_runtime.assignors`): the detectors judge every
partition's data together, so one member holds every partition and the state; another takes them over, restoring
the state from the changelog, when it leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from pydantic import Field, TypeAdapter

from vigil_contracts.events import (
    AlertRaised,
    EncounterRecorded,
    ObservationRecorded,
    ObservationRetracted,
    OutcomeRecorded,
    RiskScored,
)
from vigil_drift.api.routes import drift
from vigil_drift.config import parse_overrides, thresholds_for
from vigil_drift.core import DriftCore
from vigil_drift.metrics import DriftMetrics
from vigil_drift.settings import Settings
from vigil_drift.state import ChangelogState
from vigil_runtime.assignors import one_owner_assignor
from vigil_runtime.changelog import Changelog, ChangelogRebalanceListener, stop_checkpoint
from vigil_runtime.kafka import (
    DeadLetters,
    EventPublisher,
    Parsed,
    existing,
    make_broker,
    process_batch,
    raw_batch_decoder,
    records_of,
)
from vigil_runtime.metrics import ServiceMetrics
from vigil_runtime.producer import AckedProducer
from vigil_runtime.service import ServiceRuntime, build_http_app
from vigil_runtime.tracing import DRIFT_STATE_KIND
from vigil_scoring.reference import Reference, ScoreBaseline

SERVICE = "drift"
log = logging.getLogger(__name__)

CANONICAL = (ObservationRecorded, ObservationRetracted, EncounterRecorded)
DriftInput = Annotated[
    ObservationRecorded | ObservationRetracted | EncounterRecorded | RiskScored | OutcomeRecorded,
    Field(discriminator="type"),
]
input_adapter: TypeAdapter[Any] = TypeAdapter(DriftInput)


def empty_reference(scores: ScoreBaseline | None = None) -> Reference:
    """No feature reference: inputs are not judged; predictions use ``scores`` or their first window."""
    return Reference(features={}, n_rows=0, n_stays=0, scores=scores, source={"format": "none"})


def load_reference(path: str | Path) -> Reference:
    """The reference at ``path``; tolerates a model package whose reference.json has another layout.

    ``vigil_scoring.reference`` files are the contract. A package written before its trainer adopted it
    (per-feature quantiles of model features plus ``risk.mean``) still gives the score baseline; its feature
    quantiles describe model features (carried forward), not stay-hour readings, so inputs are not judged
    against them rather than judged wrongly. A warning says so, and ``/drift`` shows the reference's format.
    """
    text = Path(path).read_text()
    try:
        return Reference.from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raw = json.loads(text)
        risk = raw.get("risk") if isinstance(raw, dict) else None
        mean = risk.get("mean") if isinstance(risk, dict) else None
        baseline = ScoreBaseline(n_scores=int(raw.get("rows") or 0), mean_score=float(mean)) if mean else None
        log.warning(
            "reference is not a vigil_scoring.reference file: inputs are not judged",
            extra={"error": type(error).__name__, "score_baseline": baseline is not None},
        )
        ref = empty_reference(baseline)
        ref.source = {"format": "foreign", "feature_set_version": raw.get("feature_set_version")}
        return ref


def build_core(settings: Settings) -> DriftCore:
    """The detector core from the settings: the production model's reference and per-model thresholds."""
    text = settings.thresholds
    if text and not text.lstrip().startswith("{") and Path(text).exists():
        text = Path(text).read_text()
    overrides = parse_overrides(text)
    reference = load_reference(settings.reference_path) if settings.reference_path else empty_reference()
    models = set(overrides) - {"*", "inputs"} | ({settings.model_name} if settings.model_name else set())
    return DriftCore(
        reference,
        model_name=settings.model_name or None,
        inputs_thresholds=thresholds_for("inputs", overrides),
        model_thresholds={m: thresholds_for(m, overrides) for m in models},
    )


class DriftHandlers:
    """A small handler: check each event belongs on its topic, hand the batch to the core, publish the alerts."""

    def __init__(
        self,
        core: DriftCore,
        publisher: EventPublisher,
        alerts_topic: str,
        drift_metrics: DriftMetrics,
        *,
        topics_by_kind: dict[str, str],
        metrics: ServiceMetrics,
    ) -> None:
        self.core = core
        self.publisher = publisher
        self.alerts_topic = alerts_topic
        self.drift_metrics = drift_metrics
        self.metrics = metrics
        self.topic_names = topics_by_kind
        self.unpublished: list[AlertRaised] = []

    async def handle(self, items: list[Parsed[Any]]) -> list[tuple[Any, BaseException | str]]:
        """Dispatch a batch of the three topics in order: readings, then scores, then outcomes."""
        canonical: list[Any] = []
        scores: list[RiskScored] = []
        outcomes: list[OutcomeRecorded] = []
        failed: list[tuple[Any, BaseException | str]] = []
        for item in items:
            where = self.topic_names.get(item.record.topic, "")
            e = item.event
            if where == "observations" and isinstance(e, CANONICAL):
                canonical.append(e)
            elif where == "scores.live" and isinstance(e, RiskScored):
                scores.append(e)
            elif where == "outcomes" and isinstance(e, OutcomeRecorded):
                outcomes.append(e)
            else:
                failed.append((item.record, f"a {e.type} event does not belong on {where or 'this topic'}"))
                continue
            self.metrics.count(where, "processed")
        before = self.core.inputs.rows_seen
        alerts = self.core.on_canonical(canonical) if canonical else []
        self.drift_metrics.rows.inc(self.core.inputs.rows_seen - before)
        if scores:
            alerts += self.core.on_scores(scores)
        if outcomes:
            alerts += self.core.on_outcomes(outcomes)
        await self._publish(alerts)
        return failed

    async def _publish(self, alerts: list[AlertRaised]) -> None:
        queue = [*self.unpublished, *alerts]
        self.unpublished = queue
        await self.publisher.publish_all(self.alerts_topic, queue)
        self.unpublished = []
        self.drift_metrics.published(queue)
        self.drift_metrics.refresh(self.core.snapshot())
        if queue:
            log.info("alerts published", extra={"count": len(queue), "event_ids": [a.event_id for a in queue]})


def bootstrap(settings: Settings, core: DriftCore | None = None) -> ServiceRuntime:
    """Wire the service's broker, core, handlers, metrics and readiness checks.

    One batch subscriber reads the three topics: one consumer group member, so one rebalance at start-up
    instead of three members of one group joining one after another.
    """
    broker = make_broker(settings, client_id=f"vigil-{SERVICE}")
    metrics = ServiceMetrics(SERVICE)
    drift_metrics = DriftMetrics(metrics)
    core = core or build_core(settings)
    topics = settings.topics
    publisher = AckedProducer(settings.kafka, client_id=f"vigil-{SERVICE}-out")
    suffix = {topics.observations: "observations", topics.scores_live: "scores.live", topics.outcomes: "outcomes"}
    metrics.declare(list(suffix.values()), "parked")  # the first dead letter is an increase for the alert
    dead_letters = DeadLetters(
        publisher,
        topics.dead_letter,
        SERVICE,
        on_parked=lambda letter: metrics.count(suffix.get(letter.source_topic, "other"), "parked"),
    )
    handlers = DriftHandlers(core, publisher, topics.alerts, drift_metrics, topics_by_kind=suffix, metrics=metrics)
    state_sink = AckedProducer(settings.kafka, client_id=f"vigil-{SERVICE}-state")

    def reset() -> None:
        # Alerts waiting to be published were derived from the state being dropped: the replay derives them again.
        core.reset()
        handlers.unpublished = []

    changelog = Changelog(
        settings.kafka,
        topic=topics.drift_state,
        source_topic=list(suffix),
        state=ChangelogState(settings.group_id, lambda: core, reset),
        sink=state_sink,
        kind=DRIFT_STATE_KIND,
        interval_s=settings.checkpoint_interval_s,
        restore_timeout_s=settings.restore_timeout_s,
        changelog_partitions=lambda _: {0},  # one snapshot per group, on partition 0
        whole=True,  # the detectors judge every partition's data together
    )
    state_key = {settings.group_id: 0}

    async def handle_owned(items: list[Parsed[Any]]) -> list[tuple[Any, BaseException | str]]:
        # Records fetched before a rebalance may belong to partitions now owned elsewhere: their owner applies them.
        return await handlers.handle([i for i in items if i.record.partition in changelog.owned])

    subscriber = broker.subscriber(
        *existing(topics.observations, topics.scores_live, topics.outcomes),
        group_id=settings.group_id,
        batch=True,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_batch_decoder,
        max_records=settings.max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        listener=ChangelogRebalanceListener(changelog),
        # One state judges every partition: all of them to one member, never split between instances.
        partition_assignment_strategy=(one_owner_assignor(),),
    )
    changelog.consumer_of = lambda: getattr(subscriber, "consumer", None)

    @subscriber
    async def on_batch(body: list[bytes], message: KafkaMessage) -> None:
        await changelog.assigned.wait()
        async with changelog.lock:
            records = [r for r in records_of(message) if r.partition in changelog.owned]
            try:
                await changelog.restore_pending({r.partition for r in records})
                with metrics.processing.labels(SERVICE, "batch").time():
                    await process_batch(message, input_adapter, handle_owned, dead_letters, commit=False)
            except BaseException:
                await changelog.rewind({r.partition for r in records})
                raise
            for r in records:
                changelog.advanced(r.partition, r.offset, r.topic)
            changelog.changed(state_key)
            try:
                await changelog.step()
            except Exception as error:  # offsets stay uncommitted and the state unsaved: the next one retries
                log.warning("checkpoint failed; retried", extra={"error_type": type(error).__name__})
        metrics.batch_size.labels(SERVICE).observe(len(body))

    broker.publisher(topics.alerts, schema=AlertRaised, title="alerts")
    broker.publisher(topics.drift_state, title="detector-state changelog (compacted; key: consumer group)")
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        await state_sink.start()
        tasks.append(asyncio.create_task(changelog.loop()))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tasks.clear()
        if state_sink.started:
            await stop_checkpoint(changelog)
            await state_sink.stop()

    # The producers are up before the broker delivers anything and down only after it has stopped.
    runtime = ServiceRuntime(
        SERVICE,
        settings,
        broker,
        metrics,
        on_start=[publisher.start, start],
        on_stop=[stop, publisher.stop],
        before_leaving=[changelog.hand_over],  # saved while still a member: the next owner resumes from it
    )
    runtime.checks["producer"] = lambda: publisher.started
    runtime.checks["state_restored"] = lambda: changelog.ready
    # ready when the configured reference was read (a foreign layout still counts: it is logged, not fatal)
    runtime.checks["reference"] = lambda: not settings.reference_path or core.reference.source.get("format") != "none"
    return runtime


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's HTTP app; its lifespan runs the Kafka side."""
    settings = settings or Settings()
    core = build_core(settings)
    runtime = bootstrap(settings, core)
    app = build_http_app(runtime, title="Vigil drift")
    app.state.drift = core
    app.include_router(drift.router)
    return app
