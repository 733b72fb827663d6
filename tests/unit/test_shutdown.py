"""A service's stop is bounded: every step runs in order, a failing one does not skip the rest, and one that hangs
(even one that swallows its cancellation) is left behind after its share of the budget."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from vigil_runtime import shutdown
from vigil_runtime.shutdown import stop_within

pytestmark = pytest.mark.unit


async def test_every_step_runs_in_order_and_a_failure_does_not_skip_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    async def ok(name: str) -> None:
        ran.append(name)

    async def broken() -> None:
        ran.append("broken")
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="vigil_runtime.shutdown"):
        failed = await stop_within(
            [("first", lambda: ok("first")), ("broken", broken), ("flush", lambda: ok("flush"))],
            budget_s=5,
            service="test",
        )
    assert ran == ["first", "broken", "flush"]
    assert failed == ["broken"]
    assert [(r.getMessage(), r.__dict__["action"], r.__dict__["error_type"]) for r in caplog.records] == [
        ("stop step failed", "broken", "RuntimeError")
    ]


async def test_a_step_that_swallows_its_cancellation_is_left_behind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shutdown, "MIN_STEP_S", 0.05)
    release = asyncio.Event()
    ran: list[str] = []

    async def stubborn() -> None:
        # What hung a stop before: a wait that catches CancelledError and goes on waiting (asyncio.wait_for would
        # wait for it forever).
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    async def flush() -> None:
        ran.append("flush")

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="vigil_runtime.shutdown"):
        failed = await stop_within([("broker", stubborn), ("flush", flush)], budget_s=0.2, service="test")
    elapsed = time.monotonic() - started
    release.set()  # let the abandoned task end, so the test leaves no task behind
    await asyncio.sleep(0)
    assert failed == ["broker"]
    assert ran == ["flush"]  # the step after the hung one still had its turn
    assert elapsed < 5  # a hang bound, not a speed figure: without the bound this never returns
    assert [r.__dict__["action"] for r in caplog.records] == ["broker"]
    assert caplog.records[0].getMessage() == "stop step overran"
