"""The drift service: thin FastStream consumers over :class:`~vigil_drift.core.DriftCore`, FastAPI for HTTP.

Three batch subscribers (observations, scores.live, outcomes) follow the at-least-once contract
(``process_batch``: parse or dead-letter, publish the alerts and wait for the broker, then commit). Alert events
that could not be published stay queued and go out with the next batch, so a transition is never lost while
the process lives. Detector state is in memory: a restarted service re-learns its windows from new data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from pydantic import TypeAdapter

from vigil_common.events import AlertRaised, OutcomeRecorded, RiskScored, canonical_event_adapter
from vigil_common.kafka import DeadLetters, Parsed, Publisher, make_broker, process_batch, raw_batch_decoder
from vigil_common.metrics import ServiceMetrics
from vigil_common.reference import Reference
from vigil_common.service import ServiceRuntime, build_http_app
from vigil_drift.config import parse_overrides, thresholds_for
from vigil_drift.core import DriftCore
from vigil_drift.metrics import DriftMetrics
from vigil_drift.settings import Settings

SERVICE = "drift"
log = logging.getLogger(__name__)

scores_adapter: TypeAdapter[RiskScored] = TypeAdapter(RiskScored)
outcomes_adapter: TypeAdapter[OutcomeRecorded] = TypeAdapter(OutcomeRecorded)


def build_core(settings: Settings) -> DriftCore:
    """The detector core from the settings: the production model's reference and per-model thresholds."""
    text = settings.thresholds
    if text and not text.lstrip().startswith("{") and Path(text).exists():
        text = Path(text).read_text()
    overrides = parse_overrides(text)
    if settings.reference_path:
        reference = Reference.load(settings.reference_path)
    else:
        reference = Reference(features={}, n_rows=0, n_stays=0)
    models = set(overrides) - {"*", "inputs"} | ({settings.model_name} if settings.model_name else set())
    return DriftCore(
        reference,
        model_name=settings.model_name or None,
        inputs_thresholds=thresholds_for("inputs", overrides),
        model_thresholds={m: thresholds_for(m, overrides) for m in models},
    )


class DriftHandlers:
    """Small handlers: translate a batch into core calls and publish the alerts."""

    def __init__(self, core: DriftCore, publisher: Publisher, alerts_topic: str, metrics: DriftMetrics) -> None:
        self.core = core
        self.publisher = publisher
        self.alerts_topic = alerts_topic
        self.metrics = metrics
        self.unpublished: list[AlertRaised] = []

    async def _publish(self, alerts: list[AlertRaised]) -> None:
        queue = [*self.unpublished, *alerts]
        self.unpublished = queue
        await self.publisher.publish_all(self.alerts_topic, queue)
        self.unpublished = []
        self.metrics.published(queue)
        self.metrics.refresh(self.core.snapshot())
        if queue:
            log.info("alerts published", extra={"count": len(queue), "event_ids": [a.event_id for a in queue]})

    async def observations(self, items: list[Parsed[Any]]) -> list[Any]:
        """Canonical observations, retractions and encounters."""
        before = self.core.inputs.rows_seen
        alerts = self.core.on_canonical([p.event for p in items])
        self.metrics.rows.inc(self.core.inputs.rows_seen - before)
        await self._publish(alerts)
        return []

    async def scores(self, items: list[Parsed[RiskScored]]) -> list[Any]:
        """Live scores."""
        await self._publish(self.core.on_scores([p.event for p in items]))
        return []

    async def outcomes(self, items: list[Parsed[OutcomeRecorded]]) -> list[Any]:
        """Delayed outcomes."""
        await self._publish(self.core.on_outcomes([p.event for p in items]))
        return []


def bootstrap(settings: Settings, core: DriftCore | None = None) -> ServiceRuntime:
    """Wire the service's broker, core, handlers, metrics and readiness checks."""
    broker = make_broker(settings, client_id=f"vigil-{SERVICE}")
    metrics = ServiceMetrics(SERVICE)
    drift_metrics = DriftMetrics(metrics)
    core = core or build_core(settings)
    topics = settings.topics
    publisher = Publisher(broker)
    dead_letters = DeadLetters(publisher, topics.dead_letter, SERVICE)
    handlers = DriftHandlers(core, publisher, topics.alerts, drift_metrics)
    common: dict[str, Any] = {
        "group_id": settings.group_id,
        "batch": True,
        "auto_offset_reset": "earliest",
        "ack_policy": AckPolicy.MANUAL,
        "decoder": raw_batch_decoder,
        "max_records": settings.max_records,
        "batch_timeout_ms": settings.batch_timeout_ms,
    }

    def counted(topic: str, processed: int, parked: int, n: int) -> None:
        metrics.count(topic, "processed", processed)
        metrics.count(topic, "parked", parked)
        metrics.batch_size.labels(SERVICE).observe(n)

    @broker.subscriber(topics.observations, **common)
    async def on_observations(body: list[bytes], message: KafkaMessage) -> None:
        with metrics.processing.labels(SERVICE, "observations").time():
            done, parked = await process_batch(message, canonical_event_adapter, handlers.observations, dead_letters)
        counted("observations", done, parked, len(body))

    @broker.subscriber(topics.scores_live, **common)
    async def on_scores(body: list[bytes], message: KafkaMessage) -> None:
        with metrics.processing.labels(SERVICE, "scores").time():
            done, parked = await process_batch(message, scores_adapter, handlers.scores, dead_letters)
        counted("scores.live", done, parked, len(body))

    @broker.subscriber(topics.outcomes, **common)
    async def on_outcomes(body: list[bytes], message: KafkaMessage) -> None:
        with metrics.processing.labels(SERVICE, "outcomes").time():
            done, parked = await process_batch(message, outcomes_adapter, handlers.outcomes, dead_letters)
        counted("outcomes", done, parked, len(body))

    broker.publisher(topics.alerts, schema=AlertRaised, title="alerts")
    runtime = ServiceRuntime(name=SERVICE, settings=settings, broker=broker, metrics=metrics)
    runtime.checks["reference"] = lambda: not settings.reference_path or bool(core.reference.features)
    app_state: dict[str, Any] = {"core": core, "handlers": handlers}
    runtime.__dict__["drift"] = app_state
    return runtime


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's HTTP app; its lifespan runs the Kafka side."""
    runtime = bootstrap(settings or Settings())
    app = build_http_app(runtime, title="Vigil drift")
    core: DriftCore = runtime.__dict__["drift"]["core"]

    @app.get("/drift", tags=["drift"], summary="Every monitored quantity and the open alerts")
    async def drift_state() -> dict[str, Any]:
        return core.snapshot()

    return app
