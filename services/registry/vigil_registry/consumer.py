"""The Kafka side's consumer: comparisons from shadow, alerts from drift, outcomes.

It follows the at-least-once contract (``process_batch``: parse, act, park what fails with its reason, then
commit).

The registry's effects are database commits, so "outputs durably published" means committed before the offsets
are; lifecycle events the evidence causes go through the outbox. A record about an unknown model or version is
parked in the dead-letter topic with its reason; a database outage raises, so the batch is redelivered.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, TypeAlias

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import Field, TypeAdapter

from vigil_contracts.events import AlertRaised, ComparisonSummarized, OutcomeRecorded
from vigil_registry.core import Registry
from vigil_registry.errors import RegistryError
from vigil_registry.settings import Settings
from vigil_runtime.kafka import DeadLetters, Parsed, existing, process_batch, raw_batch_decoder
from vigil_runtime.metrics import ServiceMetrics

log = logging.getLogger(__name__)

Evidence: TypeAlias = ComparisonSummarized | AlertRaised | OutcomeRecorded
EVIDENCE: TypeAdapter[Any] = TypeAdapter(
    Annotated[ComparisonSummarized | AlertRaised | OutcomeRecorded, Field(discriminator="type")]
)


class EvidenceHandler:
    """Applies a parsed batch to the registry; returns the records it could not process, with reasons."""

    def __init__(self, registry: Registry, metrics: ServiceMetrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.outcomes: dict[str, int] = {}

    def _count(self, topic: str, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n
        if self.metrics is not None:
            self.metrics.count(topic, outcome, n)

    async def __call__(
        self, items: list[Parsed[Evidence]]
    ) -> list[tuple[ConsumerRecord[Any, Any], BaseException | str]]:
        failed: list[tuple[ConsumerRecord[Any, Any], BaseException | str]] = []
        outcomes = [p for p in items if isinstance(p.event, OutcomeRecorded)]
        if outcomes:
            new = await asyncio.to_thread(
                self.registry.evidence.handle_outcomes,
                [p.event for p in outcomes if isinstance(p.event, OutcomeRecorded)],
            )
            self._count(outcomes[0].record.topic, "processed", new)
            self._count(outcomes[0].record.topic, "duplicate", len(outcomes) - new)
        for parsed in items:
            event = parsed.event
            if isinstance(event, OutcomeRecorded):
                continue
            try:
                if isinstance(event, ComparisonSummarized):
                    result = await asyncio.to_thread(self.registry.evidence.handle_comparison, event)
                else:
                    result = await asyncio.to_thread(self.registry.evidence.handle_alert, event)
            except RegistryError as error:
                failed.append((parsed.record, error.reason))
                continue
            self._count(parsed.record.topic, result)
            log.info(
                "evidence applied",
                extra={"event_id": event.event_id, "topic": parsed.record.topic, "action": result},
            )
        return failed


def subscribe(
    broker: KafkaBroker,
    settings: Settings,
    registry: Registry,
    dead_letters: DeadLetters,
    metrics: ServiceMetrics | None = None,
) -> EvidenceHandler:
    """Declare the batch subscriber of the comparisons, alerts and outcomes topics on ``broker``."""
    handler = EvidenceHandler(registry, metrics)
    topics = settings.topics

    @broker.subscriber(
        *existing(topics.comparisons, topics.alerts, topics.outcomes),
        group_id=settings.group_id,
        batch=True,
        max_records=500,
        batch_timeout_ms=200,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_batch_decoder,
    )
    async def on_evidence(body: list[bytes], message: KafkaMessage) -> None:
        processed, parked = await process_batch(message, EVIDENCE, handler, dead_letters)
        if parked:
            log.warning("evidence parked", extra={"processed": processed, "parked": parked})

    return handler
