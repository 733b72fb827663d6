"""Kafka headers: what the producers set is what the AsyncAPI documents declare; context follows a message.

The producer runs against a fake transport (an aiokafka-like ``send`` that keeps the headers); the declared
side is read from the committed documents in docs/asyncapi.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiokafka import ConsumerRecord
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests import factories
from vigil.stack import SERVICE_NAMES
from vigil_contracts import headers as h
from vigil_contracts.events import Event
from vigil_contracts.topics import Topic, Topics
from vigil_runtime import tracing
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.producer import AckedProducer
from vigil_runtime.service import HttpFrame

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "asyncapi"
TOPICS = Topics()
EXAMPLES: dict[Topic, list[Callable[[], Event]]] = {
    Topic.OBSERVATIONS: [factories.observation, factories.retraction, factories.encounter],
    Topic.SCORES_LIVE: [factories.score],
    Topic.SCORES_SHADOW: [factories.score],
    Topic.OUTCOMES: [factories.outcome],
    Topic.ALERTS: [factories.alert],
    Topic.COMPARISONS: [factories.comparison],
    Topic.LIFECYCLE: [factories.lifecycle],
    Topic.DEAD_LETTER: [factories.dead_letter],
}


class FakeAioKafka:
    """Keeps what ``AIOKafkaProducer.send`` is given; every send is acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None, partition: int | None = None, headers: Any
    ) -> asyncio.Future[None]:
        self.sent.append((topic, key, value, list(headers)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def acked_producer() -> tuple[AckedProducer, FakeAioKafka]:
    producer = AckedProducer(KafkaConnection(bootstrap_servers="unused"), client_id="test")
    fake = FakeAioKafka()
    producer._producer = fake  # type: ignore[assignment]
    return producer, fake


def declared_messages() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(service, topic address, headers schema) of every message every committed document declares."""
    for service in SERVICE_NAMES:
        document = json.loads((DOCS / f"{service}.json").read_text())
        messages = document["components"]["messages"]
        for channel in document["channels"].values():
            for ref in channel["messages"].values():
                message = messages[unquote(ref["$ref"].removeprefix("#/components/messages/"))]
                yield service, channel["address"], message


def conforms(headers: dict[str, bytes], schema: dict[str, Any]) -> list[str]:
    """What is wrong with ``headers`` under the declared schema (a small JSON-schema subset: required, enum,
    pattern, string type)."""
    problems = [f"missing {name}" for name in schema.get("required", []) if name not in headers]
    for name, value in headers.items():
        rule = schema["properties"].get(name)
        if rule is None:
            problems.append(f"undeclared {name}")
            continue
        text = value.decode("utf-8")
        if "enum" in rule and text not in rule["enum"]:
            problems.append(f"{name}={text!r} not in {rule['enum']}")
        if "pattern" in rule and not re.match(rule["pattern"], text):
            problems.append(f"{name}={text!r} does not match {rule['pattern']}")
    return problems


def test_every_message_declares_the_headers_and_the_correlation_id_location() -> None:
    seen = 0
    for service, address, message in declared_messages():
        seen += 1
        schema = message["headers"]
        assert schema["type"] == "object", (service, address)
        if address == TOPICS.fhir_raw:
            assert "required" not in schema  # written by EHR integrations, not by Vigil
        else:
            assert schema["required"] == list(h.HEADER_NAMES), (service, address)
        assert message["correlationId"]["location"] == "$message.header#/vigil-correlation-id"
    assert seen >= 20


STATE_KINDS = {
    Topic.SCORER_STATE: tracing.SCORER_STATE_KIND,
    Topic.SHADOW_STATE: tracing.SHADOW_STATE_KIND,
    Topic.DRIFT_STATE: tracing.DRIFT_STATE_KIND,
}


async def test_what_the_producer_sets_is_what_the_documents_declare() -> None:
    checked = 0
    for service, address, message in declared_messages():
        topic = next(t for t, name in TOPICS.all().items() if name == address)
        if topic is Topic.FHIR_RAW:
            continue
        if topic in STATE_KINDS:  # changelogs: pre-encoded snapshots and tombstones
            producer, fake = acked_producer()
            await producer.send_all(address, [(b"enc-1", b"{}", 0), (b"enc-2", None, 1)], kind=STATE_KINDS[topic])
            sent = [dict(headers) for *_, headers in fake.sent]
        else:
            events = [make() for make in EXAMPLES[topic]]
            producer, fake = acked_producer()
            await producer.publish_all(address, events)
            sent = [dict(headers) for *_, headers in fake.sent]
            # Each event's own type is on its message, not just one the topic may carry.
            assert [s[h.EVENT_TYPE].decode() for s in sent] == [e.type for e in events]  # type: ignore[attr-defined]
        for headers in sent:
            assert list(headers) == list(h.HEADER_NAMES)
            assert conforms(headers, message["headers"]) == [], (service, address)
            checked += 1
    assert checked >= 30


async def test_consumers_continue_the_record_of_the_same_key_else_the_request_else_a_new_origin() -> None:
    producer, fake = acked_producer()
    incoming = tracing.Origin(b"corr-from-ingest", tracing.new_traceparent())
    records = [
        consumer_record(b"enc-1", [("vigil-correlation-id", b"stale"), ("traceparent", tracing.new_traceparent())]),
        consumer_record(b"enc-1", [(h.CORRELATION_ID, incoming.correlation_id), (h.TRACEPARENT, incoming.traceparent)]),
        consumer_record(b"enc-2", []),
    ]
    with tracing.consuming(records, "vigil.observations"):
        await producer.publish_all(
            "vigil.scores.live", [factories.score(key="enc-1", encounter="enc-1"), factories.score(key="enc-2")]
        )
    first, second = (dict(headers) for *_, headers in fake.sent)
    # The newest record of enc-1 is continued as is (tracing off: its traceparent passes unchanged).
    assert first[h.CORRELATION_ID] == b"corr-from-ingest"
    assert first[h.TRACEPARENT] == incoming.traceparent
    # enc-2's record had no headers: a new origin, not enc-1's.
    assert second[h.CORRELATION_ID] != b"corr-from-ingest"
    assert re.match(h.TRACEPARENT_PATTERN, second[h.TRACEPARENT].decode())
    assert tracing.trace_id_of(second[h.TRACEPARENT]) != tracing.trace_id_of(incoming.traceparent)

    fake.sent.clear()
    with tracing.within(incoming):
        await producer.publish_all("vigil.observations", [factories.observation()])
    assert dict(fake.sent[0][3])[h.CORRELATION_ID] == b"corr-from-ingest"


def consumer_record(key: bytes, headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="vigil.observations",
        partition=0,
        offset=0,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=b"{}",
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=headers,
    )


def request_app(producer: AckedProducer) -> FastAPI:
    app = FastAPI()

    @app.post("/fhir/Observation")
    async def post() -> dict[str, str]:
        await producer.publish_all("vigil.observations", [factories.observation()])
        return {"ok": "yes"}

    app.add_middleware(HttpFrame)
    return app


def test_http_requests_keep_a_valid_correlation_id_and_traceparent_and_refuse_bad_ones() -> None:
    producer, fake = acked_producer()
    client = TestClient(request_app(producer))
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    answer = client.post("/fhir/Observation", headers={"X-Correlation-ID": "req-42", "traceparent": parent})
    assert answer.headers["X-Correlation-ID"] == "req-42"
    headers = dict(fake.sent[-1][3])
    assert headers[h.CORRELATION_ID] == b"req-42"
    assert headers[h.TRACEPARENT] == parent.encode()

    # A header that could smuggle anything (spaces, 200 characters) is replaced, and the new id returned.
    answer = client.post("/fhir/Observation", headers={"X-Correlation-ID": "x " * 100, "traceparent": "00-zz"})
    made = answer.headers["X-Correlation-ID"]
    assert re.match(h.CORRELATION_ID_PATTERN, made) and made != "x " * 100
    headers = dict(fake.sent[-1][3])
    assert headers[h.CORRELATION_ID] == made.encode()
    assert re.match(h.TRACEPARENT_PATTERN, headers[h.TRACEPARENT].decode())


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)


def test_with_tracing_on_the_post_the_publish_the_consume_and_the_score_are_one_trace(
    spans: InMemorySpanExporter,
) -> None:
    """HTTP request, produce, (broker: headers), consume, produce: one trace, each span the next one's parent."""
    ingest_out, ingest_fake = acked_producer()
    client = TestClient(request_app(ingest_out))
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    client.post("/fhir/Observation", headers={"traceparent": parent, "X-Correlation-ID": "req-7"})
    _, key, _, observation_headers = ingest_fake.sent[0]

    scorer_out, scorer_fake = acked_producer()

    async def scorer() -> None:
        with tracing.consuming([consumer_record(key or b"", observation_headers)], "vigil.observations"):
            await scorer_out.publish_all("vigil.scores.live", [factories.score(key=(key or b"").decode())])

    asyncio.run(scorer())
    score_headers = dict(scorer_fake.sent[0][3])
    assert score_headers[h.CORRELATION_ID] == b"req-7"

    finished = {s.kind: s for s in spans.get_finished_spans() if s.kind is not SpanKind.PRODUCER}
    producers = [s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    server, consumer = finished[SpanKind.SERVER], finished[SpanKind.CONSUMER]
    ingest_send, score_send = sorted(producers, key=lambda s: s.start_time or 0)
    assert {s.context.trace_id for s in [server, consumer, ingest_send, score_send]} == {
        0x4BF92F3577B34DA6A3CE929D0E0E4736
    }
    assert server.parent is not None and server.parent.span_id == 0x00F067AA0BA902B7
    assert server.name == "POST /fhir/Observation"
    assert ingest_send.parent is not None and ingest_send.parent.span_id == server.context.span_id
    assert consumer.parent is not None and consumer.parent.span_id == ingest_send.context.span_id
    assert score_send.parent is not None and score_send.parent.span_id == consumer.context.span_id
    # The score's traceparent names its producing span.
    ids = score_send.context
    assert score_headers[h.TRACEPARENT] == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-01".encode()
    # Span attributes carry no identifiers: only the topic, the operation and the correlation id.
    assert "enc" not in json.dumps(
        {k: str(v) for s in spans.get_finished_spans() for k, v in (s.attributes or {}).items()}
    )
