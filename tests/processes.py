"""Services run as their own processes (``python -m vigil_<name>``), as in production, for the integration tier.

Shared by the kill/restart tests (scorer recovery, ingest kill, the chaos suite): a free port, a process whose
``/ready`` is awaited with a bounded poll, ``kill()`` for a crash (SIGKILL) and ``stop()`` for a graceful stop
(SIGTERM: the service finishes its batch and commits), and its ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """One service process; ``env`` must carry its HTTP port as ``<PREFIX>_HTTP_PORT`` = ``port``."""

    def __init__(self, module: str, env: dict[str, str], port: int, log: Path) -> None:
        self.module = module
        self.port = port
        self.log = log
        self._terminated = False
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a signal sent to the test run does not reach it twice
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{self.url}/metrics", timeout=5)).text

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll ``/ready`` until 200; fails at once if the process exits, and after ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient() as http:
            while asyncio.get_running_loop().time() < deadline:
                assert self.proc.poll() is None, f"{self.module} exited: {self.tail()}"
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.url}/ready", timeout=2)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise AssertionError(f"{self.module} not ready within {timeout:.0f}s: {self.tail()}")

    def kill(self) -> None:
        """A crash: SIGKILL, nothing flushed or committed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """Ask for a graceful stop (SIGTERM) without waiting: several services then stop side by side."""
        # Once only: a second SIGTERM makes uvicorn exit at once, skipping the service's last commit.
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> None:
        """A graceful stop (SIGTERM), SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def metric_value(text: str, name: str) -> float | None:
    """The first sample of ``name`` in a Prometheus text page (None when absent)."""
    lines = [line for line in text.splitlines() if line.startswith(name)]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else None
