"""Every wait of the demo: a condition polled until it holds or its deadline passes, never a fixed sleep.

A wait that gives up says what it was waiting for and for how long; a required one stops the demo
(:class:`DemoStopped`), an optional one returns ``None`` and the step carries on with what it has (e.g. "not
promoted" is an answer, not a failure).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


class DemoStopped(RuntimeError):
    """The demo cannot go on: a required wait gave up, or streaming failed. The message says what and why."""


async def wait_for(
    probe: Callable[[], Any],
    *,
    what: str,
    timeout_s: float,
    interval_s: float = 0.5,
    required: bool = True,
    on_tick: Callable[[], None] | None = None,
) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy; that value is returned.

    After ``timeout_s`` a required wait raises :class:`DemoStopped` naming ``what``; an optional one returns None.
    ``on_tick`` runs on every poll (progress displays).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if on_tick is not None:
            on_tick()
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            if required:
                raise DemoStopped(f"gave up after {timeout_s:.0f}s waiting for {what}")
            return None
        await asyncio.sleep(interval_s)
