"""A service process told to stop (SIGTERM) exits in bounded time even when a stop step hangs.

The service frame (``vigil_runtime.service.serve`` over ``build_http_app``) runs in a child process with no broker
and one stop hook of the test's: one that swallows its cancellation (left behind after the steps' budget; the
process exits as uvicorn does after a signal), and one that blocks the event loop outright (no step bound can fire;
the watchdog armed at the signal writes every thread's stack and exits with status 1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from tests.processes import free_port

pytestmark = pytest.mark.slow

CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from vigil_runtime import service
    from vigil_runtime.logging import configure_logging
    from vigil_runtime.metrics import ServiceMetrics
    from vigil_runtime.service import ServiceRuntime, build_http_app, serve
    from vigil_runtime.settings import VigilSettings

    settings = VigilSettings(http_port=int(sys.argv[1]), stop_timeout_s=1.0)
    configure_logging("INFO", json=True, service="stop-test")
    service.HTTP_DRAIN_S, service.EXIT_GRACE_S = 1.0, 1.0

    async def swallows_cancellation() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    async def blocks_the_loop() -> None:
        time.sleep(3600)

    hook = {"swallow": swallows_cancellation, "block": blocks_the_loop}[sys.argv[2]]
    runtime = ServiceRuntime(name="stop-test", settings=settings, broker=None, metrics=ServiceMetrics("stop_test"),
                             on_stop=[hook])
    serve(build_http_app(runtime, title="stop test"), settings)
    """
)


def run_until_stopped(hook: str) -> tuple[int, float, str]:
    """Start the child, wait for /health, SIGTERM it; its exit status, seconds from the signal, and stderr."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(port), hook], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # 60 s: far beyond the child's bounds (1 s drain + 1 s steps, at least 2 s a step, + 1 s), so only a stop
        # that ignores them fails here.
        _, err = proc.communicate(timeout=60)
        return proc.returncode, time.monotonic() - signalled, err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_step_that_swallows_its_cancellation_is_left_behind_and_the_process_exits() -> None:
    code, _, err = run_until_stopped("swallow")
    assert '"msg":"stop step overran"' in err and '"action":"swallows_cancellation"' in err, err[-3000:]
    assert '"msg":"service stopped"' in err, err[-3000:]
    assert code == -signal.SIGTERM  # uvicorn re-raises the signal once the server has stopped


def test_a_blocked_loop_is_ended_by_the_watchdog_with_every_threads_stack() -> None:
    code, _, err = run_until_stopped("block")
    assert code == 1, err[-3000:]
    assert "Timeout (0:00:0" in err and "blocks_the_loop" in err, err[-3000:]  # faulthandler's dump names the hang
    assert '"msg":"service stopped"' not in err
