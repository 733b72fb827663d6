"""`vigil up` / `status` / `down` as a person runs them: everything ready within 60 s, nothing left behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from vigil.kafka_local import process_alive
from vigil.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
# Several worktrees on one machine run e2e side by side by shifting every port with VIGIL_TEST_E2E_PORT_OFFSET.
_OFFSET = int(os.environ.get("VIGIL_TEST_E2E_PORT_OFFSET", "0"))
KAFKA_PORT = 29092 + _OFFSET
PORT_BASE = 18001 + _OFFSET
# Its own stack and broker, never the session broker: lane B of `make test` (scripts/test.sh), beside lane A.
pytestmark = pytest.mark.own_cluster


def vigil(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args, "--kafka-port", str(KAFKA_PORT), "--port-base", str(PORT_BASE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.slow
def test_up_status_ready_down(tmp_path: Path) -> None:
    # VIGIL_DEVELOPMENT is passed on to the services for the HTTP side's demo conveniences (the registry's
    # development tokens, the bundled model while no production model is registered); it does not change the
    # broker: `vigil up` without --dev runs SASL_SSL with ACLs, which this test checks from outside.
    env = {**os.environ, "VIGIL_TOPIC_PREFIX": f"e2e{uuid.uuid4().hex[:8]}.", "VIGIL_DEVELOPMENT": "true"}
    stack = Stack(kafka_port=KAFKA_PORT, port_base=PORT_BASE)
    try:
        t0 = time.monotonic()
        # Patience, not a bound (speed is the benchmarks'): a consumer the group drops and re-admits right after start
        # (CI saw shadow's join take 30 s and then a rejoin) is ready a little later, and `vigil up` waits for it.
        started = vigil("up", "--detach", "--timeout", "120", env=env)
        took = time.monotonic() - t0
        assert started.returncode == 0, started.stderr[-3000:] + _logs(stack)
        print(f"\n[stack] vigil up ready in {took:.1f}s (broker start included)")

        # `vigil up` returned once every /ready answered 200. Under load a consumer may be rebalanced once more right
        # after (CI once saw drift's group do so): the service is then unready while it restores its state, and
        # `vigil status` says so, truthfully. So status is asked until it reports all ready, for a bounded time.
        deadline = time.monotonic() + 60
        status = vigil("status", "--json", env=env)
        while status.returncode != 0 and time.monotonic() < deadline:
            time.sleep(1)
            # The same env as `vigil up` above: VIGIL_DEVELOPMENT only for the services' HTTP demo conveniences (the
            # bundled model with no registered production model); the broker stays SASL_SSL with ACLs.
            status = vigil("status", "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        for spec in stack.services:
            r = httpx.get(f"http://127.0.0.1:{spec.port}/ready", timeout=5)
            assert r.status_code == 200, (spec.name, r.text)
            assert r.json()["ready"] is True
            assert httpx.get(f"http://127.0.0.1:{spec.port}/health", timeout=5).json()["status"] == "ok"
            metrics = httpx.get(f"http://127.0.0.1:{spec.port}/metrics", timeout=5).text
            assert f'vigil_ready{{service="{spec.name}"}} 1.0' in metrics
        assert asyncio.run(_plaintext_client_refused(stack.cluster.bootstrap_servers))
        pids = [stack.pid(s.name) for s in stack.services] + [n.pid() for n in stack.cluster.nodes]
        assert all(pids), pids
    finally:
        stopped = vigil("down", env=env)
    assert stopped.returncode == 0, stopped.stderr
    for pid in pids:
        assert pid is not None
        assert not process_alive(pid), f"process {pid} survived vigil down"


async def _plaintext_client_refused(bootstrap: str) -> bool:
    """A client without TLS and credentials, as an outsider would try, gets no connection to the stack's broker."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(producer.start(), timeout=30)
    except KafkaConnectionError:
        return True
    finally:
        await producer.stop()
    return False


def _logs(stack: Stack) -> str:
    out = []
    for log in sorted(stack.log_dir.glob("*.log")):
        out.append(f"\n--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
    return "".join(out)
