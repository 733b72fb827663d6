"""The ingest service: FHIR REST over HTTP and the raw FHIR topic in, canonical events out.

Both transports are thin: they hand parsed JSON to :class:`IngestCore` (mapping, dedupe, publishing) and turn
its results into FHIR answers or dead letters. A 2xx answer means the canonical events are acknowledged by the
broker (acks=all); a consumed record's offset is committed only after its events (or its dead letter) are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import TypeAdapter

from vigil_contracts.events import CanonicalEvent, DeadLettered, Event
from vigil_ingest.fhir_http import entry_status, location, operation_outcome, rejection_issues
from vigil_ingest.mapping import Deduper, Mapper, MapResult
from vigil_ingest.settings import Settings
from vigil_runtime.kafka import DeadLetters, Parsed, Publisher, make_broker, process_batch, raw_batch_decoder
from vigil_runtime.metrics import ServiceMetrics
from vigil_runtime.producer import AckedProducer
from vigil_runtime.service import ServiceRuntime, build_http_app

SERVICE = "ingest"
FHIR_JSON = "application/fhir+json"
ACCEPTED_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
RESOURCE_TYPES = frozenset({"Observation", "Patient", "Encounter", "Location", "DiagnosticReport", "Bundle"})
RAW_ADAPTER: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])

log = logging.getLogger(__name__)


class IngestCore:
    """Mapping, dedupe and durable publishing, shared by the HTTP and Kafka transports."""

    def __init__(self, settings: Settings, publisher: Publisher | AckedProducer, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.mapper = Mapper(state_size=settings.state_size)
        self.deduper = Deduper(settings.dedupe_size)
        self.publisher = publisher
        self.metrics = metrics
        self.topic = settings.topics.observations
        self._warming: asyncio.Future[bool] | None = None

    async def publish(self, events: Sequence[Event]) -> tuple[list[Event], int]:
        """Publish the events not already published and wait for the broker; returns (published, duplicates)."""
        fresh, duplicates = self.deduper.fresh(events)
        await self.publisher.publish_all(self.topic, fresh)
        self.deduper.remember(fresh)
        self.metrics.count(self.topic, "published", len(fresh))
        self.metrics.count(self.topic, "duplicate", duplicates)
        return fresh, duplicates

    async def handle_records(self, items: list[Parsed[dict[str, Any]]]) -> list[tuple[Any, BaseException | str]]:
        """Map a batch of raw FHIR records, publish every canonical event, return the records to park.

        A record is parked when anything in it was rejected (the reasons name the problems); events of its other
        entries are still published, so a parked record is partly processed: replaying it is safe (ids dedupe).
        """
        events: list[Event] = []
        failures: list[tuple[Any, BaseException | str]] = []
        raw_topic = self.settings.topics.fhir_raw
        for item in items:
            result = self.mapper.map_payload(item.event)
            events.extend(result.events)
            self.count_result(raw_topic, result)
            if result.rejections:
                reasons = "; ".join(dict.fromkeys(_describe(r) for r in result.rejections[:5]))
                if len(result.rejections) > 5:
                    reasons += f"; and {len(result.rejections) - 5} more"
                if result.events:
                    reasons = f"partly processed ({len(result.events)} canonical events mapped): {reasons}"
                failures.append((item.record, reasons[:2000]))
        await self.publish(events)
        return failures

    async def warm_up(self) -> None:
        """Load the UCUM library in a worker thread, in the background (start-up does not wait for it)."""
        self._warming = asyncio.get_running_loop().run_in_executor(None, self.mapper.units.warm_up)

    def count_result(self, topic: str, result: MapResult) -> None:
        """Count what a payload gave (metrics labels carry no identifiers)."""
        for key in ("readings", "retracted", "encounters", "demographics", "absent", "ignored_code", "rejected"):
            self.metrics.count(topic, key, result.counts.get(key, 0))


def _describe(rejection: Any) -> str:
    where = f"{rejection.resource_type}/{rejection.resource_id}: " if rejection.resource_id else ""
    return f"{where}{rejection.reason}"


def _fhir(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def _problem(status: int, code: str, diagnostics: str) -> Response:
    return _fhir(operation_outcome([("error", code, diagnostics)]), status)


def build_router(core: IngestCore, settings: Settings, prefix: str | None = None) -> APIRouter:
    """The FHIR REST endpoints: POST a Bundle to the base, POST/PUT a resource to its type.

    ``prefix`` is the FHIR base path (``settings.fhir_base`` by default; "" serves at the root as well).
    """
    base = (settings.fhir_base if prefix is None else prefix).rstrip("/")
    router = APIRouter(prefix=base, tags=["fhir"])

    async def read_json(request: Request) -> Any | Response:
        content_type = request.headers.get("content-type", FHIR_JSON).split(";")[0].strip().lower()
        if content_type not in ACCEPTED_TYPES:
            return _problem(415, "not-supported", f"content type '{content_type[:60]}' is not FHIR JSON")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return _problem(413, "too-costly", f"body larger than {settings.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                return _problem(413, "too-costly", f"body larger than {settings.max_body_bytes} bytes")
            chunks.append(chunk)
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as error:
            return _problem(400, "invalid", f"invalid JSON: {error.msg} at line {error.lineno} column {error.colno}")

    async def ingest(payload: Any, expected_type: str | None) -> Response:
        started = time.perf_counter()
        if not isinstance(payload, dict):
            return _problem(400, "invalid", "body is not a JSON object (a FHIR resource or Bundle)")
        rtype = payload.get("resourceType")
        if not isinstance(rtype, str):
            return _problem(400, "required", "missing resourceType")
        if expected_type is not None and rtype != expected_type:
            return _problem(400, "invalid", f"resourceType '{rtype[:40]}' does not match the URL's '{expected_type}'")
        result = core.mapper.map_payload(payload)
        core.count_result("http", result)
        if result.counts.get("rejected_payload"):
            return _fhir(operation_outcome(rejection_issues(result.rejections)), 400)
        if rtype == "Bundle":
            response = await _bundle(result, payload)
        else:
            response = await _single(result)
        core.metrics.processing.labels(SERVICE, "http").observe(time.perf_counter() - started)
        return response

    async def _publish_or_503(events: Sequence[Event]) -> tuple[list[Event], int] | Response:
        try:
            return await core.publish(events)
        except Exception as error:
            log.error("publish failed", extra={"error_type": type(error).__name__, "count": len(events)})
            return _problem(503, "transient", "the broker did not acknowledge the events; retry")

    async def _single(result: MapResult) -> Response:
        entry = result.entries[0]
        if entry.outcome == "rejected":
            return _fhir(operation_outcome(rejection_issues(entry.rejections)), 422)
        published = await _publish_or_503(result.events)
        if isinstance(published, Response):
            return published
        fresh_ids = {e.event_id for e in published[0]}
        fresh = sum(1 for e in entry.events if e.event_id in fresh_ids)
        status_line, issues = entry_status(entry, fresh)
        headers = {"Location": loc} if (loc := location(entry)) else None
        return _fhir(operation_outcome(issues), int(status_line[:3]), headers)

    async def _bundle(result: MapResult, payload: dict[str, Any]) -> Response:
        transaction = result.bundle_type == "transaction"
        if transaction and settings.strict_transactions and result.rejections:
            return _fhir(operation_outcome(rejection_issues(result.rejections)), 422)
        published = await _publish_or_503(result.events)
        if isinstance(published, Response):
            return published
        fresh_ids = {e.event_id for e in published[0]}
        entries = []
        for entry in result.entries:
            fresh = 0
            for event in entry.events:
                if event.event_id in fresh_ids:
                    fresh += 1
            response: dict[str, Any]
            if fresh and fresh == len(entry.events) and not entry.rejections and entry.note is None:
                # The common case, kept small (a Bundle of thousands of readings): created, nothing to say.
                response = {"status": "201 Created"}
            else:
                status_line, issues = entry_status(entry, fresh)
                response = {"status": status_line, "outcome": operation_outcome(issues)}
            if (loc := location(entry)) is not None and not response["status"].startswith("4"):
                response["location"] = loc
            entries.append({"response": response})
        body = {
            "resourceType": "Bundle",
            "type": "transaction-response" if transaction else "batch-response",
            "entry": entries,
        }
        return _fhir(body, 200)

    async def post_base(request: Request) -> Response:
        payload = await read_json(request)
        if isinstance(payload, Response):
            return payload
        if isinstance(payload, dict) and payload.get("resourceType") not in (None, "Bundle"):
            return _problem(400, "not-supported", "POST to the base takes a Bundle; post resources to their type")
        return await ingest(payload, "Bundle")

    summary = "Post a Bundle (transaction, batch, collection, searchset, message) to the base"
    if base:
        router.add_api_route("", post_base, methods=["POST"], summary=summary)
    router.add_api_route("/", post_base, methods=["POST"], summary=summary, include_in_schema=not base)

    @router.get("/metadata", summary="A minimal CapabilityStatement")
    async def metadata() -> Response:
        types = sorted(RESOURCE_TYPES - {"Bundle"})
        return _fhir(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "kind": "instance",
                "fhirVersion": "4.0.1",
                "format": ["application/fhir+json", "application/json"],
                "rest": [
                    {
                        "mode": "server",
                        "resource": [
                            {"type": t, "interaction": [{"code": "create"}, {"code": "update"}]} for t in types
                        ],
                        "interaction": [{"code": "transaction"}, {"code": "batch"}],
                    }
                ],
            },
            200,
        )

    @router.post("/{resource_type}", summary="Post one resource (Observation, Patient, Encounter...) to its type")
    async def post_resource(resource_type: str, request: Request) -> Response:
        if resource_type not in RESOURCE_TYPES:
            return _problem(404, "not-supported", f"resource type '{resource_type[:40]}' is not accepted here")
        payload = await read_json(request)
        if isinstance(payload, Response):
            return payload
        return await ingest(payload, resource_type)

    @router.put("/{resource_type}/{resource_id}", summary="Put one resource (an update: amended, corrected...)")
    async def put_resource(resource_type: str, resource_id: str, request: Request) -> Response:
        if resource_type not in RESOURCE_TYPES - {"Bundle"}:
            return _problem(404, "not-supported", f"resource type '{resource_type[:40]}' is not accepted here")
        payload = await read_json(request)
        if isinstance(payload, Response):
            return payload
        if isinstance(payload, dict):
            if payload.get("id") not in (None, resource_id):
                return _problem(400, "invalid", "the resource's id does not match the URL's id")
            payload["id"] = resource_id
        return await ingest(payload, resource_type)

    return router


def bootstrap(settings: Settings) -> ServiceRuntime:
    """Wire the service's broker, metrics, raw-topic subscriber and readiness checks (the AsyncAPI document's view)."""
    return build(settings)[0]


def build(settings: Settings) -> tuple[ServiceRuntime, IngestCore]:
    """Wire the service: broker, metrics, core, raw-topic subscriber, readiness checks."""
    broker: KafkaBroker = make_broker(settings, client_id=f"vigil-{SERVICE}")
    metrics = ServiceMetrics(SERVICE)
    # Concurrent HTTP requests share the producer: a short linger lets their records share broker requests.
    events_publisher = AckedProducer(settings.kafka_bootstrap_servers, client_id=f"vigil-{SERVICE}-events", linger_ms=2)
    core = IngestCore(settings, events_publisher, metrics)
    dead_letters = DeadLetters(Publisher(broker), settings.topics.dead_letter, service=SERVICE)
    topics = settings.topics

    if settings.consume_raw_topic:

        @broker.subscriber(
            topics.fhir_raw,
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

    # Declared for the AsyncAPI document: canonical events are sent by the AckedProducer, dead letters by DeadLetters.
    broker.publisher(topics.observations, schema=CanonicalEvent, title="canonical events (key: encounter)")
    broker.publisher(topics.dead_letter, schema=DeadLettered, title="dead letters")
    runtime = ServiceRuntime(
        name=SERVICE,
        settings=settings,
        broker=broker,
        metrics=metrics,
        checks={"producer": lambda: events_publisher.started},
        on_start=[events_publisher.start, core.warm_up],
        on_stop=[events_publisher.stop],
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
    app.include_router(build_router(core, settings))
    if settings.fhir_base.strip("/"):
        # The root too: integrations configured with the server's address as their FHIR base (the simulator).
        app.include_router(build_router(core, settings, prefix=""), include_in_schema=False)
    return app
