"""The ingest service: FHIR REST over HTTP and the raw FHIR topic in, canonical events out.

Both transports are thin: the FHIR routers (``vigil_ingest.api``) and the raw-topic subscriber below hand parsed
JSON to :class:`~vigil_ingest.core.IngestCore` (mapping, dedupe, publishing) and turn its results into FHIR
answers or dead letters. A 2xx answer means the canonical events are acknowledged by the broker (acks=all); a
consumed record's offset is committed only after its events (or its dead letter) are.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import TypeAdapter

from vigil_contracts.events import CanonicalEvent, DeadLettered
from vigil_ingest.api import mount_fhir
from vigil_ingest.api.routes.fhir import RESOURCE_TYPES
from vigil_ingest.core import IngestCore
from vigil_ingest.settings import Settings
from vigil_runtime.kafka import DeadLetters, existing, make_broker, process_batch, raw_batch_decoder
from vigil_runtime.metrics import ServiceMetrics
from vigil_runtime.producer import AckedProducer
from vigil_runtime.service import ServiceRuntime, build_http_app

SERVICE = "ingest"
RAW_ADAPTER: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])

__all__ = ["RESOURCE_TYPES", "IngestCore", "bootstrap", "build", "create_app"]

log = logging.getLogger(__name__)


def bootstrap(settings: Settings) -> ServiceRuntime:
    """Wire the service's broker, metrics, raw-topic subscriber and readiness checks (the AsyncAPI document's view)."""
    return build(settings)[0]


def build(settings: Settings) -> tuple[ServiceRuntime, IngestCore]:
    """Wire the service: broker, metrics, core, raw-topic subscriber, readiness checks."""
    broker: KafkaBroker = make_broker(settings, client_id=f"vigil-{SERVICE}")
    metrics = ServiceMetrics(SERVICE)
    # Concurrent HTTP requests share the producer: a short linger lets their records share broker requests.
    # Sends yield to the loop every millisecond: /health and small posts answered while a large Bundle's events
    # are sent wait for one such stretch, not five milliseconds' worth (issue 15 item 2).
    events_publisher = AckedProducer(
        settings.kafka, client_id=f"vigil-{SERVICE}-events", linger_ms=2, yield_after_s=0.001
    )
    core = IngestCore(settings, events_publisher, metrics)
    dead_letters = DeadLetters(events_publisher, settings.topics.dead_letter, service=SERVICE)
    topics = settings.topics

    if settings.consume_raw_topic:

        @broker.subscriber(
            *existing(topics.fhir_raw),
            group_id=settings.group_id,
            batch=True,
            max_records=settings.max_records,
            batch_timeout_ms=settings.batch_timeout_ms,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            decoder=raw_batch_decoder,
        )
        async def on_raw_fhir(body: list[bytes], message: KafkaMessage) -> None:
            started = time.perf_counter()
            processed, parked = await process_batch(message, RAW_ADAPTER, core.handle_records, dead_letters)
            metrics.batch_size.labels(SERVICE).observe(len(body))
            metrics.count(topics.fhir_raw, "processed", processed)
            metrics.count(topics.fhir_raw, "parked", parked)
            metrics.processing.labels(SERVICE, "batch").observe(time.perf_counter() - started)
            log.info("batch", extra={"batch_size": len(body), "processed": processed, "parked": parked})

    # Declared for the AsyncAPI document: canonical events and dead letters are sent by the AckedProducer.
    broker.publisher(topics.observations, schema=CanonicalEvent, title="canonical events (key: encounter)")
    broker.publisher(topics.dead_letter, schema=DeadLettered, title="dead letters")
    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        broker=broker,
        metrics=metrics,
        # Writable, not just started: a started producer buffers while the broker is away, and then every post
        # would be refused with 503 after the publish bound; a balancer should send them elsewhere first.
        checks={"broker_writable": lambda: events_publisher.writable(topics.observations)},
        on_start=[events_publisher.start, core.warm_up],
        on_stop=[events_publisher.stop, core.close],
    )
    return runtime, core


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's HTTP app; its lifespan runs the Kafka side."""
    settings = settings or Settings()
    runtime, core = build(settings)
    app = build_http_app(
        runtime,
        title="Vigil ingest",
        description="FHIR R4 in (REST and the raw topic), canonical observations out.",
    )
    app.state.core = core
    mount_fhir(app, core, settings)
    return app
