"""The ingest core shared by the HTTP and Kafka transports: mapping, dedupe and acknowledged publishing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from vigil_contracts.events import Event
from vigil_ingest.mapping import Mapper, MapResult, TimeRules
from vigil_ingest.publishing import Deduper
from vigil_ingest.settings import Settings
from vigil_runtime.kafka import EventPublisher, Parsed, Rejected
from vigil_runtime.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class IngestCore:
    """Mapping, dedupe and durable publishing, shared by the HTTP and Kafka transports."""

    def __init__(self, settings: Settings, publisher: EventPublisher, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.mapper = Mapper(
            state_size=settings.state_size,
            time_rules=TimeRules(
                future_skew=timedelta(seconds=settings.max_future_skew_s),
                before_encounter=timedelta(days=settings.max_days_before_encounter),
            ),
        )
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

    async def publish_result(self, result: MapResult) -> tuple[list[Event], int]:
        """Publish a mapping result's events, then let the mapper remember what it published (corrections)."""
        undo = self.mapper.remember(result)
        try:
            return await self.publish(result.events)
        except BaseException:
            self.mapper.forget(undo)
            raise

    async def handle_records(self, items: list[Parsed[dict[str, Any]]]) -> list[tuple[Any, BaseException | str]]:
        """Map a batch of raw FHIR records, publish every canonical event, return the records to park.

        A record is parked when anything in it was rejected (the reasons name the problems); events of its other
        entries are still published, so a parked record is partly processed: replaying it is safe (ids dedupe).
        """
        events: list[Event] = []
        undo: list[tuple[str, Any]] = []
        failures: list[tuple[Any, BaseException | str]] = []
        raw_topic = self.settings.topics.fhir_raw
        for item in items:
            result = self.mapper.map_payload(item.event)
            # Remembered before the next record maps, so a correction in the same batch is seen as one; forgotten
            # if the batch's publish fails, so the redelivery maps to the same change.
            undo.extend(self.mapper.remember(result))
            events.extend(result.events)
            self.count_result(raw_topic, result)
            if result.rejections:
                reasons = "; ".join(dict.fromkeys(_describe(r) for r in result.rejections[:5]))
                if len(result.rejections) > 5:
                    reasons += f"; and {len(result.rejections) - 5} more"
                if result.events:
                    reasons = f"partly processed ({len(result.events)} canonical events mapped): {reasons}"
                resources = [f"{r.resource_type}/{r.resource_id}" for r in result.rejections if r.resource_id]
                failures.append((item.record, Rejected(reasons[:2000], resources)))
        try:
            await self.publish(events)
        except BaseException:
            self.mapper.forget(undo)
            raise
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
