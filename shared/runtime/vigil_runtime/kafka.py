"""Kafka helpers shared by the services: broker factory, topic creation, the publishing port, dead letters.

The at-least-once contract every consumer follows:

1. parse each record of a batch; a record that does not parse is parked in the dead-letter topic;
2. process the good ones and publish their outputs, awaiting the broker's acknowledgement (acks=all,
   idempotent producer);
3. only then commit the batch's offsets (FastStream ``AckPolicy.MANUAL`` and ``message.ack()``).

A crash anywhere before step 3 redelivers the batch; outputs carry deterministic ids so consumers dedupe.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError, for_code
from faststream.kafka import KafkaBroker
from faststream.kafka import Topic as KafkaTopic
from faststream.kafka.message import KafkaMessage
from pydantic import BaseModel, TypeAdapter, ValidationError

from vigil_contracts.events import DeadLettered, Event, deterministic_id, utcnow
from vigil_contracts.topics import COMPACTED, Topic, Topics
from vigil_runtime.replication import PRODUCER_ACKS, default_replication, min_insync_for
from vigil_runtime.settings import VigilSettings
from vigil_runtime.tracing import consuming

log = logging.getLogger(__name__)

T = TypeVar("T")


def bootstrap_servers(servers: str) -> list[str]:
    """``host:port`` entries of a comma-separated bootstrap list (blanks dropped)."""
    return [s.strip() for s in servers.split(",") if s.strip()]


def make_broker(settings: VigilSettings, *, client_id: str, logger: logging.Logger | None = None) -> KafkaBroker:
    """A FastStream Kafka broker whose producer waits for all in-sync replicas and never duplicates on retry."""
    return KafkaBroker(
        # A list, not the comma-separated string: FastStream wraps a string into a one-element list, which
        # aiokafka then reads as one host "a:1,b:2,c" with port 3 (no service could join a three-broker cluster).
        bootstrap_servers(settings.kafka_bootstrap_servers),
        security=settings.kafka.faststream_security(),
        client_id=client_id,
        acks=PRODUCER_ACKS,
        enable_idempotence=True,
        linger_ms=2,
        max_batch_size=256 * 1024,
        compression_type=None,
        logger=logger or logging.getLogger(f"vigil.{client_id}.kafka"),
        graceful_timeout=15.0,
    )


def existing(*names: str) -> list[KafkaTopic]:
    """Topics for a subscriber to read, never to create.

    FastStream's subscribers create their topics at start unless told otherwise, with one partition and one
    replica: on a secured stack every service principal was refused (a warning per topic at each start), and on
    an open one it could have made a topic unlike the stack's. Topics are made by :func:`ensure_topics` (or the
    administrator: ``vigil up``, compose's provisioning, Strimzi), with the stack's partitions and replication.
    """
    return [KafkaTopic(name, declare=False) for name in names]


def topic_configs(topic: Topic, replication_factor: int) -> dict[str, str]:
    """The configuration of one of the stack's topics (here and in the Kubernetes KafkaTopics, ``vigil k8s``)."""
    configs = {"cleanup.policy": "compact"} if topic in COMPACTED else {}
    # Set on the topic, not left to the broker's default: the start-up check reads it back.
    configs["min.insync.replicas"] = str(min_insync_for(replication_factor))
    if topic in (Topic.LIFECYCLE, Topic.COMPARISONS):
        # Decisions and evidence are history: keep them (a registry rebuild reads them all).
        configs["retention.ms"] = "-1"
    return configs


async def ensure_topics(settings: VigilSettings, topics: Iterable[Topic] | None = None) -> list[str]:
    """Create the stack's topics if they are missing; returns the names that were created."""
    names = Topics(settings.topic_prefix)
    wanted = list(topics) if topics is not None else list(Topic)
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs(), client_id="vigil-admin")
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        replication = settings.replication_factor
        if replication is None:
            replication = default_replication(len((await admin.describe_cluster())["brokers"]))
        new = []
        for topic in wanted:
            name = names.name(topic)
            if name in existing:
                continue
            new.append(
                NewTopic(
                    name=name,
                    num_partitions=settings.partitions,
                    replication_factor=replication,
                    topic_configs=topic_configs(topic, replication),
                )
            )
        if new:
            response = await admin.create_topics(new)
            for name, code, *_ in response.topic_errors:
                if code == 0:
                    created.append(name)
                elif code == TopicAlreadyExistsError.errno:  # another service created it first
                    continue
                elif code == TopicAuthorizationFailedError.errno:
                    # A service principal sees only the topics its ACLs name and may create none: on a secured
                    # stack the administrator creates the topics (``vigil up``, compose's kafka-provision). A
                    # topic this service uses and cannot see shows up as an authorization error when it is used.
                    log.info("topic not visible to this principal, left to the administrator", extra={"topic": name})
                else:
                    raise for_code(code)(f"creating topic {name} failed")
    finally:
        await admin.close()
    return created


def encode(event: BaseModel) -> bytes:
    """The wire form of an event: compact JSON."""
    return event.model_dump_json().encode()


def records_of(message: KafkaMessage) -> tuple[ConsumerRecord[Any, Any], ...]:
    """The raw records behind a FastStream message (one, or a batch)."""
    raw = message.raw_message
    return raw if isinstance(raw, tuple) else (raw,)


async def raw_batch_decoder(message: Any, original: Any = None) -> list[bytes]:
    """Hand the handler raw bytes: parsing, and parking what fails to parse, is the handler's job.

    FastStream's default decoder would reject a non-JSON body before the handler could dead-letter it.
    """
    return [r.value or b"" for r in records_of(message)]


async def raw_decoder(message: Any, original: Any = None) -> bytes:
    """Single-record twin of :func:`raw_batch_decoder`."""
    return bytes(records_of(message)[0].value or b"")


@dataclass(slots=True)  # not frozen: a frozen dataclass is several times slower to build, once per record
class Parsed(Generic[T]):
    """A record and the event parsed from it."""

    record: ConsumerRecord[Any, Any]
    event: T


def describe_error(error: BaseException) -> str:
    """A reason for the dead-letter topic that names the problem but carries no payload values."""
    if isinstance(error, ValidationError):
        parts = []
        for e in error.errors(include_input=False, include_url=False)[:5]:
            loc = ".".join(str(p) for p in e["loc"])
            parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
        return "; ".join(parts)
    return f"{type(error).__name__}: {error}"[:500]


class Rejected(Exception):
    """A record refused on purpose, with the ids of the resources concerned (parked without its payload)."""

    def __init__(self, reason: str, resource_ids: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.resource_ids = list(dict.fromkeys(resource_ids))


def dead_letter_for(
    record: ConsumerRecord[Any, Any] | None,
    error: BaseException | str,
    *,
    service: str,
    source_topic: str | None = None,
    request_id: str | None = None,
) -> DeadLettered:
    """Build the dead letter for a record (or for a request that arrived another way, named by ``request_id``).

    Minimum necessary: the reason, where the record was (topic, partition, offset or the request id) and the ids
    of the resources concerned, never the payload (a FHIR Bundle holds names, addresses and identifiers). Whoever
    repairs a record reads it at its source coordinates, under that topic's own ACL and retention.
    """
    topic = source_topic or (record.topic if record is not None else "")
    partition = record.partition if record is not None else None
    offset = record.offset if record is not None else None
    key = (record.key.decode("utf-8", "replace") if record is not None and record.key else "") or "unkeyed"
    resource_ids: list[str] = []
    if isinstance(error, Rejected):
        reason, error_type, resource_ids = error.reason, "Rejected", error.resource_ids
    elif isinstance(error, str):
        reason, error_type = error, "Rejected"
    else:
        reason, error_type = describe_error(error), type(error).__name__
    return DeadLettered(
        event_id=deterministic_id(
            "dlq",
            service,
            topic,
            partition,
            offset,
            *([request_id] if request_id else []),
            reason if offset is None else "",
        ),
        occurred_at=utcnow(),
        key=key,
        service=service,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        request_id=request_id,
        error_type=error_type,
        error=reason,
        resource_ids=resource_ids,
    )


class EventPublisher(Protocol):
    """What publishes events and returns once the broker has acknowledged all of them (acks=all).

    The port; :class:`vigil_runtime.producer.AckedProducer` is the one adapter every service uses (unit tests pass
    in-memory fakes).
    """

    async def publish_all(self, topic: str, events: Sequence[Event]) -> None:
        """Send every event keyed by its ``key``; returns once all are acknowledged."""
        ...


class DeadLetters:
    """Parks unprocessable records in the dead-letter topic, durably, before their offsets are committed."""

    def __init__(
        self,
        publisher: EventPublisher,
        topic: str,
        service: str,
        on_parked: Callable[[DeadLettered], None] | None = None,
    ):
        self.publisher = publisher
        self.topic = topic
        self.service = service
        self.on_parked = on_parked

    async def park(self, failures: Sequence[tuple[ConsumerRecord[Any, Any], BaseException | str]]) -> None:
        """Publish one dead letter per failed record and wait for the broker to acknowledge them."""
        letters = [dead_letter_for(r, e, service=self.service) for r, e in failures]
        await self.publisher.publish_all(self.topic, letters)
        for letter in letters:
            log.warning(
                "parked message",
                extra={
                    "source_topic": letter.source_topic,
                    "partition": letter.source_partition,
                    "offset": letter.source_offset,
                    "error_type": letter.error_type,
                },
            )
            if self.on_parked:
                self.on_parked(letter)


def parse_batch(
    records: Iterable[ConsumerRecord[Any, Any]], adapter: TypeAdapter[T]
) -> tuple[list[Parsed[T]], list[tuple[ConsumerRecord[Any, Any], BaseException]]]:
    """Split records into parsed events and failures (bad JSON or a contract violation)."""
    good: list[Parsed[T]] = []
    bad: list[tuple[ConsumerRecord[Any, Any], BaseException]] = []
    for record in records:
        try:
            good.append(Parsed(record, adapter.validate_json(record.value or b"")))
        except (ValidationError, ValueError) as error:
            bad.append((record, error))
    return good, bad


BatchHandler = Callable[[list[Parsed[T]]], Awaitable[list[tuple[ConsumerRecord[Any, Any], BaseException | str]]]]


async def process_batch(
    message: KafkaMessage,
    adapter: TypeAdapter[T],
    handle: BatchHandler[T],
    dead_letters: DeadLetters,
    *,
    commit: bool = True,
) -> tuple[int, int]:
    """Run the at-least-once contract over one FastStream batch; returns (processed, parked).

    ``handle`` publishes its outputs (awaiting acknowledgement) and returns the records it could not process,
    with their reasons; those are parked. Only then is the batch committed. An exception from ``handle``
    (the broker unreachable, say) propagates: nothing is committed and the batch is redelivered.

    ``commit=False`` leaves the commit to the caller, which then commits several batches at once after its own
    durable step (the scorer's checkpoint: state snapshots first, then the offsets).
    """
    records = records_of(message)
    try:
        # What the handler and the dead letters produce continues the consumed record of the same key.
        with consuming(records, records[0].topic if records else ""):
            good, bad = parse_batch(records, adapter)
            failed = await handle(good) if good else []
            parked = [*bad, *failed]
            if parked:
                await dead_letters.park(parked)
    except BaseException:
        # Rewind to the batch's first offsets: the consumer's position has already moved past them, and the
        # next batch's commit would otherwise skip this one.
        await message.nack()
        raise
    if commit:
        await message.ack()
    return len(good) - len(failed), len(parked)
