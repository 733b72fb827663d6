"""The outbox relay: publishes the lifecycle events decisions left in the outbox table, then marks them.

Why an outbox rather than "publish, then commit" or "commit, then publish": the database is the source of truth
for what reaches patients. Publishing before the commit could announce a decision that then fails to commit
(a scorer would load a model the registry never promoted); publishing after the commit in the request could
lose the event if the process dies in between. With the outbox the decision and its event commit atomically,
and this relay publishes every unpublished row (awaiting the broker's acknowledgement, acks=all) before
marking it. A crash after the acknowledgement but before the mark republishes the event with the same
``event_id``: delivery is at least once and consumers dedupe by id. Rows are published in decision order, keyed
by model name, so each model's events stay in order on one partition.

Signing happens here, as each event leaves for the broker (``vigil_runtime.provenance``): the database keeps the
decision, the key stays in this process's memory, and every event on the topic carries the registry's signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from prometheus_client import Counter, Gauge
from sqlalchemy import Engine, update
from sqlmodel import Session, col

from vigil_contracts.events import ModelLifecycleChanged, utcnow
from vigil_registry import crud
from vigil_registry.models import OutboxEvent
from vigil_runtime.kafka import EventPublisher
from vigil_runtime.metrics import ServiceMetrics
from vigil_runtime.provenance import LifecycleSigner

log = logging.getLogger(__name__)


class Outbox:
    """The outbox table: decisions add their event in their own transaction; the relay reads and marks them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @staticmethod
    def record(session: Session, event: ModelLifecycleChanged, *, at: datetime) -> None:
        """Add a decision's event in the decision's transaction (published after the commit, by the relay)."""
        session.add(OutboxEvent(event_id=event.event_id, key=event.key, payload=event.model_dump_json(), created_at=at))

    def pending_events(self, limit: int = 100) -> list[OutboxEvent]:
        """Unpublished lifecycle events, oldest first."""
        with Session(self.engine, expire_on_commit=False) as session:
            return list(crud.pending_outbox(session, limit=limit))

    def mark_published(self, ids: Sequence[int]) -> None:
        """Record that the broker acknowledged these outbox events."""
        if not ids:
            return
        with Session(self.engine) as session, session.begin():
            session.exec(update(OutboxEvent).where(col(OutboxEvent.id).in_(list(ids))).values(published_at=utcnow()))

    def mark_failed(self, ids: Sequence[int], error: str) -> None:
        """Count a failed publish attempt (the relay retries)."""
        if not ids:
            return
        with Session(self.engine) as session, session.begin():
            session.exec(
                update(OutboxEvent)
                .where(col(OutboxEvent.id).in_(list(ids)))
                .values(attempts=OutboxEvent.attempts + 1, last_error=error[:500])
            )


class OutboxRelay:
    """A background task that drains the outbox to the lifecycle topic."""

    def __init__(
        self,
        outbox: Outbox,
        publisher: EventPublisher,
        topic: str,
        *,
        signer: LifecycleSigner,
        poll_seconds: float = 1.0,
        batch_size: int = 100,
        ready: Callable[[], bool] = lambda: True,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.outbox = outbox
        self.publisher = publisher
        self.topic = topic
        self.signer = signer
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.ready = ready
        self.published = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._published: Counter | None = None
        self._pending: Gauge | None = None
        if metrics is not None:
            self._published = Counter(
                "vigil_registry_lifecycle_published",
                "Lifecycle events published from the outbox, by action.",
                ["action"],
                registry=metrics.registry,
            )
            self._pending = Gauge(
                "vigil_registry_outbox_pending",
                "Lifecycle events in the outbox not yet acknowledged by the broker (at the last look).",
                registry=metrics.registry,
            )

    def wake(self) -> None:
        """Ask the relay to look now (thread-safe: decisions commit in worker threads)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down: the next start drains the rest
            loop.call_soon_threadsafe(wake.set)

    async def drain(self) -> int:
        """Publish every unpublished event now; returns how many were published."""
        total = 0
        while True:
            pending = await asyncio.to_thread(self.outbox.pending_events, self.batch_size)
            if self._pending is not None:
                self._pending.set(len(pending))
            if not pending:
                return total
            ids = [row.id for row in pending if row.id is not None]
            events = [self.signer.sign(ModelLifecycleChanged.model_validate_json(row.payload)) for row in pending]
            try:
                await self.publisher.publish_all(self.topic, events)
            except Exception as error:
                await asyncio.to_thread(self.outbox.mark_failed, ids, f"{type(error).__name__}: {error}")
                raise
            await asyncio.to_thread(self.outbox.mark_published, ids)
            if self._published is not None:
                for event in events:
                    self._published.labels(event.action.value).inc()
            total += len(ids)
            self.published += len(ids)
            log.info("lifecycle events published", extra={"count": len(ids), "topic": self.topic})

    async def run(self) -> None:
        """Drain on every wake-up and every ``poll_seconds``; back off (bounded) while the broker fails."""
        if self._wake is None:
            raise RuntimeError("the outbox relay runs only after start()")
        delay = self.poll_seconds
        while True:
            if self.ready():
                try:
                    await self.drain()
                    delay = self.poll_seconds
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    delay = min(delay * 2, 30.0)
                    log.warning("outbox publish failed", extra={"error_type": type(error).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()

    async def start(self) -> None:
        """Start the background task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self.run(), name="registry-outbox")

    async def stop(self) -> None:
        """Stop the task (unpublished rows stay in the table for the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._loop = None
