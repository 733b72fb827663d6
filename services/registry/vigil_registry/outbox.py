"""The outbox relay: publishes the lifecycle events decisions left in the outbox table, then marks them.

Why an outbox rather than "publish, then commit" or "commit, then publish": the database is the source of truth
for what reaches patients. Publishing before the commit could announce a decision that then fails to commit
(a scorer would load a model the registry never promoted); publishing after the commit in the request could
lose the event if the process dies in between. With the outbox the decision and its event commit atomically,
and this relay publishes every unpublished row (awaiting the broker's acknowledgement, acks=all) before
marking it. A crash after the acknowledgement but before the mark republishes the event with the same
``event_id``: delivery is at least once and consumers dedupe by id. Rows are published in decision order, keyed
by model name, so each model's events stay in order on one partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from vigil_contracts.events import ModelLifecycleChanged
from vigil_registry.core import Registry
from vigil_runtime.kafka import Publisher
from vigil_runtime.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class OutboxRelay:
    """A background task that drains the outbox to the lifecycle topic."""

    def __init__(
        self,
        registry: Registry,
        publisher: Publisher,
        topic: str,
        *,
        poll_seconds: float = 1.0,
        batch_size: int = 100,
        ready: Callable[[], bool] = lambda: True,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.publisher = publisher
        self.topic = topic
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
            pending = await asyncio.to_thread(self.registry.pending_events, self.batch_size)
            if self._pending is not None:
                self._pending.set(len(pending))
            if not pending:
                return total
            ids = [row.id for row in pending if row.id is not None]
            try:
                await self.publisher.publish_raw(
                    self.topic, [(row.key.encode(), row.payload.encode()) for row in pending]
                )
            except Exception as error:
                await asyncio.to_thread(self.registry.mark_failed, ids, f"{type(error).__name__}: {error}")
                raise
            await asyncio.to_thread(self.registry.mark_published, ids)
            if self._published is not None:
                for row in pending:
                    action = ModelLifecycleChanged.model_validate_json(row.payload).action.value
                    self._published.labels(action).inc()
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
