"""What follows a message across services: its correlation id and W3C trace context, and OpenTelemetry tracing.

Every Kafka message Vigil produces carries the headers of ``vigil_contracts.headers`` (event type, schema version,
correlation id, ``traceparent``). The producers (``AckedProducer``, ``Publisher``) set them through
:func:`sending`, which picks each message's *origin* (the correlation id and trace context it continues):

1. in a consumer, the origin of the consumed record with the same Kafka key (:func:`consuming`, entered by
   ``process_batch``): scores are keyed by encounter like the observations they come from, dead letters by the
   record's key, so a score continues the newest observation of its encounter in the batch;
2. else the origin of the surrounding request (:func:`within`; the HTTP middleware of ``vigil_runtime.service``
   makes one per request from ``X-Correlation-ID`` and ``traceparent``);
3. else a new one, shared by the messages of that one publish call.

Tracing is off by default. When it is off the incoming ``traceparent`` is passed on unchanged (or a new one made),
so a trace id follows an observation either way at the cost of a dict lookup per message. When it is on
(:func:`configure`: the service's ``tracing_exporter`` setting or the standard ``OTEL_TRACES_EXPORTER`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` variables), spans are made for the HTTP request (SERVER), each publish (PRODUCER,
one per origin and call) and each consumed batch (CONSUMER, one per incoming trace), and the ``traceparent`` sent
is the producing span's, injected by OpenTelemetry's W3C propagator.
"""

from __future__ import annotations

import logging
import os
import random
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from vigil_contracts.events import Event
from vigil_contracts.headers import (
    CORRELATION_ID,
    CORRELATION_ID_PATTERN,
    DRIFT_STATE_TYPE,
    DRIFT_STATE_VERSION,
    EVENT_TYPE,
    SCHEMA_VERSION,
    SCORER_STATE_TYPE,
    SCORER_STATE_VERSION,
    SHADOW_STATE_TYPE,
    SHADOW_STATE_VERSION,
    TRACEPARENT,
    TRACEPARENT_PATTERN,
    event_type_of,
)

log = logging.getLogger(__name__)

Header = tuple[str, bytes]
Kind = tuple[Header, Header]
"""The two headers that say what a message is (event type, schema version), built once per event class."""

_VALID_CORRELATION = re.compile(CORRELATION_ID_PATTERN.encode())
_VALID_TRACEPARENT = re.compile(TRACEPARENT_PATTERN.encode())
_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(slots=True)
class Origin:
    """The correlation id and trace context a produced message continues."""

    correlation_id: bytes
    traceparent: bytes
    context: Context | None = None
    """With tracing on: the OpenTelemetry context (the span) the next spans are children of."""


def new_correlation_id() -> bytes:
    """A random id (never derived from an encounter, patient or resource)."""
    return uuid.uuid4().hex.encode()


def new_traceparent() -> bytes:
    """A fresh W3C traceparent (sampled flag set, so a downstream service with tracing on records its part)."""
    trace_id = random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    return f"00-{trace_id:032x}-{span_id:016x}-01".encode()


def new_origin() -> Origin:
    """An origin that continues nothing: a new correlation id and a new trace."""
    return Origin(new_correlation_id(), new_traceparent())


def trace_id_of(traceparent: bytes | str) -> str:
    """The trace id (32 hex digits) inside a traceparent."""
    value = traceparent.decode() if isinstance(traceparent, bytes) else traceparent
    return value.split("-")[1]


# --- what the producers ask ------------------------------------------------------------------------------------

_KINDS: dict[type[Event], Kind] = {}
SCORER_STATE_KIND: Kind = (
    (EVENT_TYPE, SCORER_STATE_TYPE.encode()),
    (SCHEMA_VERSION, str(SCORER_STATE_VERSION).encode()),
)
"""The kind of the scorer's changelog records (snapshots and tombstones)."""
SHADOW_STATE_KIND: Kind = (
    (EVENT_TYPE, SHADOW_STATE_TYPE.encode()),
    (SCHEMA_VERSION, str(SHADOW_STATE_VERSION).encode()),
)
"""The kind of shadow's changelog records."""
DRIFT_STATE_KIND: Kind = (
    (EVENT_TYPE, DRIFT_STATE_TYPE.encode()),
    (SCHEMA_VERSION, str(DRIFT_STATE_VERSION).encode()),
)
"""The kind of drift's changelog records."""


def kind_of(cls: type[Event]) -> Kind:
    """The event-type and schema-version headers of an event class (from its contract; cached)."""
    kind = _KINDS.get(cls)
    if kind is None:
        kind = ((EVENT_TYPE, event_type_of(cls).encode()), (SCHEMA_VERSION, str(cls.SCHEMA_VERSION).encode()))
        _KINDS[cls] = kind
    return kind


_current: ContextVar[Origin | None] = ContextVar("vigil_origin", default=None)
_by_key: ContextVar[dict[Any, Any] | None] = ContextVar("vigil_origins_by_key", default=None)
"""Per Kafka key of the batch being consumed: its newest record's headers, parsed into an Origin on first use."""
_NO_ORIGIN = Origin(b"", b"")
"""Marks a key whose record carried no Vigil headers."""


def current() -> Origin | None:
    """The origin of the request being handled, if any."""
    return _current.get()


@contextmanager
def within(origin: Origin) -> Iterator[Origin]:
    """Make ``origin`` the one messages produced inside continue (when no consumed record of theirs says else)."""
    token = _current.set(origin)
    try:
        yield origin
    finally:
        _current.reset(token)


class Sending:
    """One publish call's headers: each message's origin, and with tracing on one PRODUCER span per origin.

    Use as a context manager around the sends *and* the wait for their acknowledgements: the spans end there.
    """

    __slots__ = ("_by_key", "_current", "_fallback", "_produced", "_spans", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._by_key = _by_key.get()
        self._current = _current.get()
        self._fallback: Origin | None = None
        self._produced: dict[int, bytes] = {}
        self._spans: list[Span] = []

    def origin(self, key: bytes | None) -> Origin:
        """The origin a message with this key continues."""
        origin = None
        if self._by_key is not None:
            found = self._by_key.get(key)
            if found is not None and not isinstance(found, Origin):
                # Parsed on first use only: most consumed records produce nothing (one score per encounter-hour).
                found = self._by_key[key] = origin_of_headers(found) or _NO_ORIGIN
            if found is not _NO_ORIGIN:
                origin = found
        if origin is None:
            origin = self._current
            if origin is None:
                origin = self._fallback
                if origin is None:
                    origin = self._fallback = new_origin()
        return origin

    def headers(self, kind: Kind | None, key: bytes | None) -> list[Header]:
        """The four headers of one message.

        Without a ``kind`` (a record that is not a Vigil event: raw FHIR sent on an EHR's behalf) the correlation id
        and ``traceparent`` only, as ``vigil_contracts.headers`` says.
        """
        origin = self.origin(key)
        traceparent = origin.traceparent if _tracer is None else self._produce_span(origin)
        if kind is None:
            return [(CORRELATION_ID, origin.correlation_id), (TRACEPARENT, traceparent)]
        return [kind[0], kind[1], (CORRELATION_ID, origin.correlation_id), (TRACEPARENT, traceparent)]

    def _produce_span(self, origin: Origin) -> bytes:
        traceparent = self._produced.get(id(origin))
        if traceparent is None:
            span = start_span(f"{self.topic} publish", SpanKind.PRODUCER, parent=origin, topic=self.topic, op="send")
            self._spans.append(span)
            traceparent = self._produced[id(origin)] = traceparent_of(span)
        return traceparent

    def __enter__(self) -> Sending:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _end(self._spans, exc)


def sending(topic: str) -> Sending:
    """Headers for the messages of one publish call to ``topic`` (see :class:`Sending`)."""
    return Sending(topic)


def as_str_headers(headers: Sequence[Header]) -> dict[str, str]:
    """The same headers for FastStream's ``publish`` (a str-to-str mapping)."""
    return {name: value.decode() for name, value in headers}


# --- what the consumers do -------------------------------------------------------------------------------------


def origin_of_headers(headers: Iterable[tuple[str, bytes]] | None) -> Origin | None:
    """The origin a consumed record's headers name (None when it carries neither header).

    Checked cheaply (once per record on the hot path): a traceparent of the wrong shape is replaced by a new one,
    an over-long correlation id by a new one.
    """
    correlation = traceparent = None
    for name, value in headers or ():
        if name == CORRELATION_ID:
            correlation = value
        elif name == TRACEPARENT:
            traceparent = value
    if correlation is None and traceparent is None:
        return None
    if traceparent is None or len(traceparent) != 55 or traceparent[:3] != b"00-":
        traceparent = new_traceparent()
    if correlation is None or not 0 < len(correlation) <= 64:
        correlation = new_correlation_id()
    return Origin(correlation, traceparent)


@contextmanager
def consuming(records: Iterable[Any], topic: str) -> Iterator[dict[Any, Any]]:
    """Inside, messages produced continue the consumed record with the same key (the newest of the batch).

    With tracing on, one CONSUMER span per incoming trace, child of the producer's span, parent of what follows.
    """
    # One dict store per record on the hot path; headers are parsed when a message is produced for that key.
    by_key: dict[Any, Any] = {record.key: record.headers for record in records if record.headers}
    spans: list[Span] = []
    if _tracer is not None and by_key:
        per_trace: dict[bytes, Context] = {}
        for key, headers in list(by_key.items()):
            origin = by_key[key] = origin_of_headers(headers) or _NO_ORIGIN
            if origin is _NO_ORIGIN:
                continue
            context = per_trace.get(origin.traceparent)
            if context is None:
                span = start_span(f"{topic} process", SpanKind.CONSUMER, parent=origin, topic=topic, op="process")
                spans.append(span)
                context = per_trace[origin.traceparent] = trace.set_span_in_context(span)
            origin.context = context
    token = _by_key.set(by_key)
    error: BaseException | None = None
    try:
        yield by_key
    except BaseException as raised:
        error = raised
        raise
    finally:
        _by_key.reset(token)
        _end(spans, error)


# --- the HTTP edge ---------------------------------------------------------------------------------------------


def valid_correlation_id(value: bytes | None) -> bytes | None:
    """An ``X-Correlation-ID`` worth keeping (letters, digits, ``._:-``, at most 64), else None."""
    return value if value and _VALID_CORRELATION.match(value) else None


def valid_traceparent(value: bytes | None) -> bytes | None:
    """A version-00 W3C ``traceparent`` with non-zero ids, else None."""
    return value if value and _VALID_TRACEPARENT.match(value) else None


# --- OpenTelemetry ---------------------------------------------------------------------------------------------

_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None


def enabled() -> bool:
    """Whether spans are made (tracing configured and not switched off)."""
    return _tracer is not None


def exporter_name(setting: str | None) -> str | None:
    """Which exporter to use: the setting, else ``OTEL_TRACES_EXPORTER``, else ``otlp`` if an OTLP endpoint is set.

    The OTel variables are read here (and by the exporter itself) because they are the standard's, shared by every
    OpenTelemetry SDK; ``none`` switches tracing off.
    """
    name = setting or os.environ.get("OTEL_TRACES_EXPORTER")
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not name and any(os.environ.get(variable) for variable in endpoints):
        name = "otlp"
    name = (name or "none").strip().lower()
    return None if name == "none" else name


def configure(service: str, *, exporter: str | None, endpoint: str | None = None) -> bool:
    """Switch tracing on for this process if an exporter is configured; returns whether it is on.

    Once per process: the first service to configure it names the resource (tests run several in one process).
    """
    if _tracer is not None:
        return True
    name = exporter_name(exporter)
    if name is None:
        return False
    span_exporter: SpanExporter
    if name == "otlp":
        # OTLP over HTTP/protobuf (port 4318): the gRPC exporter would bring grpcio into every image.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    elif name == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        raise ValueError(f"unsupported traces exporter {name!r} (otlp, console or none)")
    provider = TracerProvider(resource=Resource.create({"service.name": f"vigil-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    install(provider)
    log.info("tracing on", extra={"exporter": name, "service": service})
    return True


def install(provider: TracerProvider | None) -> None:
    """Use ``provider`` for Vigil's spans (None: tracing off). Tests install one with an in-memory exporter."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("vigil") if provider is not None else None


def shutdown() -> None:
    """Flush and stop the exporter (at service stop)."""
    if _provider is not None:
        _provider.shutdown()


def start_span(name: str, kind: SpanKind, *, parent: Origin | None, topic: str | None = None, op: str = "") -> Span:
    """A span, child of ``parent``'s span (or of its traceparent, or a root when there is no parent)."""
    if _tracer is None:
        raise RuntimeError("tracing is off")
    context = None
    if parent is not None:
        context = parent.context or _PROPAGATOR.extract({TRACEPARENT: parent.traceparent.decode()})
    attributes: dict[str, Any] = {}
    if topic is not None:
        attributes = {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.operation.type": op,
        }
    if parent is not None:
        attributes["vigil.correlation_id"] = parent.correlation_id.decode()
    return _tracer.start_span(name, context=context, kind=kind, attributes=attributes)


def traceparent_of(span: Span) -> bytes:
    """The traceparent naming ``span``, as OpenTelemetry's W3C propagator writes it."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier[TRACEPARENT].encode()


def _end(spans: list[Span], error: BaseException | None) -> None:
    for span in spans:
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
