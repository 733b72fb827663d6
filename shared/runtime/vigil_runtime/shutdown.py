"""A service's stop, bounded in time: every step runs, in order, and none can hold the process.

A service is told to stop by SIGTERM (Kubernetes kills it 30 s later by default) or, in the
tests, by leaving its lifespan. Its stop is a list of steps (the consumer-lag poller, the broker with its in-flight
batch, the producers' flush, a worker thread): each awaited one after the other, unbounded, a step that waits on a
broker request (aiokafka waits up to ``request_timeout_ms``, 40 s) or on a task that swallows its cancellation held
the whole process, and every later step was skipped when one raised. CI once saw an ingest process still running
60 s after SIGTERM.

Here each step gets what is left of one budget (at least :data:`MIN_STEP_S`, so a step that overran does not rob
the producers' flush of its turn), and a step that overruns is cancelled and left behind rather than awaited
(``asyncio.wait``, not ``wait_for``: ``wait_for`` waits for the cancelled task to finish, which is the hang). A
step that fails or overruns is logged by name (the ``action`` field). Nothing is lost by leaving one behind:
offsets are committed only after a batch's outputs are acknowledged, so what a stopped service had not committed
is read again by the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

MIN_STEP_S = 2.0
"""The least time a step gets, even when the budget is spent."""

Step = tuple[str, Callable[[], Awaitable[object]]]


async def stop_within(steps: Sequence[Step], *, budget_s: float, service: str) -> list[str]:
    """Run ``steps`` in order within ``budget_s``; return the names of those that failed or overran."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    failed: list[str] = []
    for name, step in steps:
        bound = max(deadline - loop.time(), MIN_STEP_S)
        task = asyncio.ensure_future(step())
        done, _ = await asyncio.wait({task}, timeout=bound)
        if not done:
            task.cancel()  # not awaited: a task that ignores its cancellation must not hold the stop
            failed.append(name)
            extra = {"service": service, "action": name, "duration_ms": round(bound * 1000)}
            log.error("stop step overran", extra=extra)
        elif task.cancelled() or task.exception() is not None:
            failed.append(name)
            error = None if task.cancelled() else task.exception()
            error_type = type(error).__name__ if error else "Cancelled"
            log.error("stop step failed", extra={"service": service, "action": name, "error_type": error_type})
    return failed
