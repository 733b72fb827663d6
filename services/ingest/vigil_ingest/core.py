"""The ingest core shared by the HTTP and Kafka transports: mapping, dedupe and acknowledged publishing.

Mapping runs in one worker thread, off the event loop: a large Bundle takes seconds to map, and on the loop it
stalled ``/health`` for as long (3.98 s, measured in issue #15), longer than a liveness probe waits. One thread,
not a pool: the mapper's linkage and correction memory is shared state, and every read or change of it (map,
remember, forget) goes through that thread in order, as it went through the loop before.

A small payload (at most ``INLINE_ENTRIES`` entries, components and contained resources in all) is mapped on the
loop when the thread has nothing queued or running: the hand-over and the wake-up cost far more than mapping a
reading (py-spy of single-resource posts: about a tenth of a request's CPU in the hop, a twenty-fifth in mapping).
Nothing else can touch the mapper meanwhile: the loop maps in one synchronous call, and only the loop submits work
to the thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

from vigil_contracts.events import Event
from vigil_ingest.mapping import Mapper, MapResult, TimeRules
from vigil_ingest.publishing import Deduper
from vigil_ingest.settings import Settings
from vigil_runtime.kafka import EventPublisher, Parsed, Rejected
from vigil_runtime.metrics import ServiceMetrics

log = logging.getLogger(__name__)

Undo = list[tuple[str, Any]]
OFF_LOOP_EVENTS = 2_000
"""From this many events, the dedupe memory is read and written in the mapping thread: for a 15 MB Bundle's 34,000
events each pass held the loop for tens of milliseconds (py-spy, issue 15). Smaller requests stay on the loop, where
a thread hop would cost more than the work. A small request's call may then interleave with a large one's; that is
safe: each dict operation is atomic under the interpreter lock, neither call iterates the memory, and an id seen
half-way is the same as one seen before or after (published events carry deterministic ids)."""
INLINE_ENTRIES = 32
"""Entries, components and contained resources a payload mapped on the loop may hold in all (an EHR's
encounter-hour is a few readings, a blood pressure two components)."""
T = TypeVar("T")


class PublishTimeout(Exception):
    """The broker did not acknowledge a request's events within the bound (nothing of it counts as accepted)."""

    def __init__(self, bound_s: float) -> None:
        super().__init__(f"no acknowledgement within {bound_s:g} s")
        self.bound_s = bound_s


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
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-mapping")
        self._queued = 0  # jobs handed to the mapping thread and not yet seen done by the loop (loop-only state)

    def _submit(self, call: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Hand ``call`` to the mapping thread, counted until the loop sees it done."""
        self._queued += 1
        job = asyncio.get_running_loop().run_in_executor(self._worker, call, *args)
        job.add_done_callback(self._done)
        return job

    def _done(self, _: asyncio.Future[Any]) -> None:
        self._queued -= 1

    async def in_worker(self, call: Callable[..., T], *args: Any) -> T:
        """Run ``call`` in the mapping thread; shielded, so a cancelled request cannot leave state half-changed."""
        return await asyncio.shield(self._submit(call, *args))

    async def close(self) -> None:
        """Let the mapping thread finish its work and end."""
        await asyncio.get_running_loop().run_in_executor(None, self._worker.shutdown)

    def publishable(self, result: MapResult) -> bool:
        """Whether a request's mapping result will be published (a refused payload or strict transaction is not)."""
        if result.counts.get("rejected_payload"):
            return False
        strict = self.settings.strict_transactions and result.bundle_type == "transaction"
        return not (strict and result.rejections)

    def _map_and_remember(self, payload: Any) -> tuple[MapResult, Undo]:
        # One step in the mapping thread, so no other request's mapping sees this one half-remembered.
        result = self.mapper.map_payload(payload)
        return result, (self.mapper.remember(result) if self.publishable(result) else [])

    async def map_request(self, payload: Any) -> tuple[MapResult, Undo]:
        """Map a request's payload; what will be published is remembered (see :meth:`publish_mapped`).

        Off the loop, in the mapping thread, unless the payload is small and the thread idle (module docstring).
        """
        if self._queued == 0 and _small(payload):
            return self._map_and_remember(payload)
        job = self._submit(self._map_and_remember, payload)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            # The client went away while its payload was mapped: nothing will be published, so once the mapping
            # is done, what it remembered is forgotten (in the same thread, after it).
            job.add_done_callback(self._forget_unpublished)
            raise

    def _forget_unpublished(self, job: asyncio.Future[tuple[MapResult, Undo]]) -> None:
        if not job.cancelled() and job.exception() is None:
            self._submit(self.mapper.forget, job.result()[1])

    async def publish_mapped(
        self, result: MapResult, undo: Undo, *, timeout: float | None = None
    ) -> tuple[list[Event], int]:
        """Publish what :meth:`map_request` mapped; on any failure (a timeout too) the mapper forgets it."""
        try:
            return await self.publish(result.events, timeout=timeout)
        except BaseException:
            await self.in_worker(self.mapper.forget, undo)
            raise

    async def publish(self, events: Sequence[Event], *, timeout: float | None = None) -> tuple[list[Event], int]:
        """Publish the events not already published and wait for the broker; returns (published, duplicates).

        With ``timeout``, the whole produce-and-acknowledge is bounded (aiokafka's send alone may wait on metadata
        and a full buffer for minutes): past it :class:`PublishTimeout` is raised and nothing is remembered as
        published. Records already handed to the producer may still reach the topic later; a retry then
        republishes them under the same event ids, which consumers deduplicate.
        """
        large = len(events) >= OFF_LOOP_EVENTS
        fresh, duplicates = await self.in_worker(self.deduper.fresh, events) if large else self.deduper.fresh(events)
        sending = self.publisher.publish_all(self.topic, fresh)
        if timeout is None:
            await sending
        else:
            try:
                await asyncio.wait_for(sending, timeout)
            except TimeoutError as error:
                raise PublishTimeout(timeout) from error
        if large:
            await self.in_worker(self.deduper.remember, fresh)
        else:
            self.deduper.remember(fresh)
        self.metrics.count(self.topic, "published", len(fresh))
        self.metrics.count(self.topic, "duplicate", duplicates)
        return fresh, duplicates

    async def publish_result(self, result: MapResult, *, timeout: float | None = None) -> tuple[list[Event], int]:
        """Publish a mapping result's events, then let the mapper remember what it published (corrections)."""
        undo = await self.in_worker(self.mapper.remember, result)
        return await self.publish_mapped(result, undo, timeout=timeout)

    async def handle_records(self, items: list[Parsed[dict[str, Any]]]) -> list[tuple[Any, BaseException | str]]:
        """Map a batch of raw FHIR records, publish every canonical event, return the records to park.

        A record is parked when anything in it was rejected (the reasons name the problems); events of its other
        entries are still published, so a parked record is partly processed: replaying it is safe (ids dedupe).
        """
        events, undo, failures = await self.in_worker(self._map_records, items)
        try:
            await self.publish(events)
        except BaseException:
            await self.in_worker(self.mapper.forget, undo)
            raise
        return failures

    def _map_records(self, items: list[Parsed[dict[str, Any]]]) -> tuple[list[Event], Undo, list[Any]]:
        events: list[Event] = []
        undo: Undo = []
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
        return events, undo, failures

    async def warm_up(self) -> None:
        """Load the UCUM library in a worker thread, in the background (start-up does not wait for it)."""
        self._warming = asyncio.get_running_loop().run_in_executor(None, self.mapper.units.warm_up)

    def count_result(self, topic: str, result: MapResult) -> None:
        """Count what a payload gave (metrics labels carry no identifiers)."""
        for key in ("readings", "retracted", "encounters", "demographics", "absent", "ignored_code", "rejected"):
            self.metrics.count(topic, key, result.counts.get(key, 0))


def _small(payload: Any) -> bool:
    """What mapping on the loop may take: at most ``INLINE_ENTRIES`` entries, components and contained resources.

    Counted through the whole payload (a Bundle's entries, Bundles inside them, components, contained resources),
    and the count stops as soon as it is over: a resource of thousands of components or a Bundle of Bundles (the
    body limit allows megabytes) stays in the thread, and the check itself costs at most that many steps.
    """
    if not isinstance(payload, dict):
        return True  # refused at once by the mapper
    budget = INLINE_ENTRIES
    parts = [payload]
    while parts:
        part = parts.pop()
        for key in ("entry", "component", "contained"):
            held = part.get(key)
            if not isinstance(held, list):
                continue
            budget -= len(held)
            if budget < 0:
                return False
            for item in held:
                inner = item.get("resource") if key == "entry" and isinstance(item, dict) else item
                if isinstance(inner, dict):
                    parts.append(inner)
    return True


def _describe(rejection: Any) -> str:
    where = f"{rejection.resource_type}/{rejection.resource_id}: " if rejection.resource_id else ""
    return f"{where}{rejection.reason}"
