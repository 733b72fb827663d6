"""The local stack as processes: the native broker plus the five services, logs in ``.vigil/logs``.

``vigil up`` starts what is not running and waits until every ``/ready`` answers; ``vigil down`` stops the
services (SIGTERM: each finishes its batch and commits) and then the broker; ``vigil status`` tells.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from vigil.kafka_local import LocalCluster, vigil_home


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service."""

    name: str
    module: str
    port: int
    env_prefix: str


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("registry", "vigil_registry", 8005, "REGISTRY"),
    ServiceSpec("ingest", "vigil_ingest", 8001, "INGEST"),
    ServiceSpec("scorer", "vigil_scorer", 8002, "SCORER"),
    ServiceSpec("shadow", "vigil_shadow", 8003, "SHADOW"),
    ServiceSpec("drift", "vigil_drift", 8004, "DRIFT"),
)
BY_NAME = {s.name: s for s in SERVICES}


def run_dir() -> Path:
    return vigil_home() / "run"


def log_dir() -> Path:
    return vigil_home() / "logs"


def _pid_file(name: str) -> Path:
    return run_dir() / f"{name}.pid"


def service_pid(name: str) -> int | None:
    """The pid of a service started by ``vigil up``, if it runs."""
    try:
        pid = int(_pid_file(name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return None
    return pid


def service_env(spec: ServiceSpec, bootstrap: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a service process gets: the stack-wide broker plus its own port."""
    env = dict(os.environ)
    env.setdefault("VIGIL_KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    env[f"{spec.env_prefix}_HTTP_PORT"] = str(spec.port)
    env.setdefault("VIGIL_DEVELOPMENT", "true")
    env.update(extra or {})
    return env


def start_service(spec: ServiceSpec, bootstrap: str, extra_env: dict[str, str] | None = None) -> int:
    """Start one service in the background (its own session, so Ctrl-C reaches only ``vigil up``)."""
    pid = service_pid(spec.name)
    if pid is not None:
        return pid
    run_dir().mkdir(parents=True, exist_ok=True)
    log_dir().mkdir(parents=True, exist_ok=True)
    with (log_dir() / f"{spec.name}.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", spec.module],
            env=service_env(spec, bootstrap, extra_env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _pid_file(spec.name).write_text(str(proc.pid))
    return proc.pid


def ready(spec: ServiceSpec, timeout: float = 2.0) -> tuple[bool, dict[str, object] | None]:
    """Whether ``/ready`` answers 200, and its body."""
    try:
        r = httpx.get(f"http://127.0.0.1:{spec.port}/ready", timeout=timeout)
        return r.status_code == 200, r.json()
    except (httpx.HTTPError, ValueError):
        return False, None


def wait_ready(specs: tuple[ServiceSpec, ...] = SERVICES, timeout: float = 60.0) -> dict[str, bool]:
    """Poll every ``/ready`` until all answer 200 or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    state = {s.name: False for s in specs}
    while time.monotonic() < deadline and not all(state.values()):
        for s in specs:
            if not state[s.name]:
                if service_pid(s.name) is None:
                    raise RuntimeError(f"{s.name} exited; see {log_dir() / (s.name + '.log')}")
                state[s.name] = ready(s)[0]
        if not all(state.values()):
            time.sleep(0.5)
    return state


def up(
    cluster: LocalCluster | None = None,
    services: tuple[ServiceSpec, ...] = SERVICES,
    extra_env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> dict[str, bool]:
    """Start the broker and the services; returns each service's readiness."""
    cluster = cluster or LocalCluster()
    bootstrap = cluster.start()
    for spec in services:
        start_service(spec, bootstrap, extra_env)
    return wait_ready(services, timeout=timeout)


def stop_service(name: str, timeout: float = 20.0) -> None:
    """SIGTERM a service (graceful: it finishes its batch), SIGKILL after ``timeout``."""
    pid = service_pid(name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and service_pid(name) is not None:
            time.sleep(0.2)
        if service_pid(name) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _pid_file(name).unlink(missing_ok=True)


def down(cluster: LocalCluster | None = None, *, keep_broker: bool = False) -> None:
    """Stop every service, then the broker."""
    for spec in reversed(SERVICES):
        stop_service(spec.name)
    if not keep_broker:
        (cluster or LocalCluster()).stop()


def status(cluster: LocalCluster | None = None) -> list[dict[str, object]]:
    """One row per broker node and per service."""
    rows: list[dict[str, object]] = []
    for node in (cluster or LocalCluster()).status():
        rows.append(
            {"name": f"kafka-{node['node']}", "pid": node["pid"], "port": node["port"], "ready": node["answers"]}
        )
    for spec in SERVICES:
        ok, body = ready(spec, timeout=1.0)
        rows.append(
            {
                "name": spec.name,
                "pid": service_pid(spec.name),
                "port": spec.port,
                "ready": ok,
                "checks": (body or {}).get("checks"),
            }
        )
    return rows
