"""The local stack as processes: the native broker plus the five services, logs in ``.vigil/logs``.

``vigil up`` starts what is not running and waits until every ``/ready`` answers; ``vigil down`` stops the
services (SIGTERM: each finishes its batch and commits) and then the broker; ``vigil status`` tells.

The stack is secured unless a person asks for development mode (``vigil up --dev``): the broker runs SASL_SSL
with ACLs, ``up`` creates the topics and ACLs as the administrator, and each service gets its own principal
(user name, CA file and a password file; never the password itself in its environment).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from vigil.credentials import ensure_secrets
from vigil.http_tokens import HttpSecrets
from vigil.kafka_local import LocalCluster, process_alive, vigil_home
from vigil_contracts.topics import Topics


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service."""

    name: str
    module: str
    port: int
    env_prefix: str


SERVICE_NAMES = ("registry", "ingest", "scorer", "shadow", "drift")
"""Start order: the registry first, so scorers find the production model at start."""
DEFAULT_PORTS = {"ingest": 8001, "scorer": 8002, "shadow": 8003, "drift": 8004, "registry": 8005}


@dataclass(frozen=True)
class Stack:
    """One local stack: where its state lives and which ports it uses."""

    home: Path = field(default_factory=vigil_home)
    kafka_port: int = 9092
    port_base: int = 8001
    """Port of ingest; the others follow in the order ingest, scorer, shadow, drift, registry."""
    development: bool = False
    """Development mode, only when a person asks for it (``--dev``): plaintext Kafka without ACLs."""

    @property
    def cluster(self) -> LocalCluster:
        return LocalCluster(
            name="default" if self.kafka_port == 9092 else f"stack-{self.kafka_port}",
            base_port=self.kafka_port,
            home=self.home,
            secured=not self.development,
        )

    @property
    def services(self) -> tuple[ServiceSpec, ...]:
        return tuple(
            ServiceSpec(n, f"vigil_{n}", self.port_base + DEFAULT_PORTS[n] - 8001, n.upper()) for n in SERVICE_NAMES
        )

    def spec(self, name: str) -> ServiceSpec:
        return next(s for s in self.services if s.name == name)

    def url(self, name: str) -> str:
        """Base URL of a service."""
        return f"http://127.0.0.1:{self.spec(name).port}"

    @property
    def run_dir(self) -> Path:
        # A second stack on other ports (the e2e tests) keeps its pid files apart from the default one.
        return self.home / "run" / ("" if self.port_base == 8001 else str(self.port_base))

    @property
    def log_dir(self) -> Path:
        return self.home / "logs" / ("" if self.port_base == 8001 else str(self.port_base))

    def pid(self, name: str) -> int | None:
        """The pid of a service started by ``up``, if it runs."""
        try:
            pid = int((self.run_dir / f"{name}.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if process_alive(pid) else None

    @property
    def http_secrets(self) -> HttpSecrets:
        """The callers' tokens and the registry's signing key (made on first use)."""
        return HttpSecrets(self.home / "secrets").ensure()

    def token(self, caller: str) -> str:
        """A caller's bearer token (``simulator``, ``operator``, ``scientist``...; see ``vigil/http_tokens.py``)."""
        return self.http_secrets.token(caller)

    def env(self, spec: ServiceSpec, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a service gets: the stack's broker, its own port, its neighbours' URLs, its secrets."""
        env = dict(os.environ)
        http = self.http_secrets
        # Paths only: the services read the secrets from the files, nothing secret goes into the environment.
        env["VIGIL_AUTH_TOKENS_FILE"] = str(http.table)
        env["REGISTRY_SIGNING_KEY_FILE"] = str(http.signing_key)
        env["VIGIL_LIFECYCLE_PUBLIC_KEY_FILE"] = str(http.public_key)
        env["SCORER_REGISTRY_TOKEN_FILE"] = str(http.token_file("scorer"))
        env["SHADOW_REGISTRY_TOKEN_FILE"] = str(http.token_file("shadow"))
        env["VIGIL_KAFKA_BOOTSTRAP_SERVERS"] = self.cluster.bootstrap_servers
        env["VIGIL_HOME"] = str(self.home)
        env[f"{spec.env_prefix}_HTTP_PORT"] = str(spec.port)
        env["VIGIL_REGISTRY_URL"] = self.url("registry")
        env["VIGIL_SCORER_URL"] = self.url("scorer")
        env["REGISTRY_SHADOW_URL"] = self.url("shadow")  # the console starts analysts' replays there
        # Each service connects as its own principal; development mode is never implied, only passed on.
        env.update(self.cluster.service_env(spec.env_prefix, spec.name))
        env.update(extra or {})
        return env

    def start_service(self, spec: ServiceSpec, extra_env: dict[str, str] | None = None) -> int:
        """Start one service in the background (its own session, so Ctrl-C reaches only ``vigil up``)."""
        pid = self.pid(spec.name)
        if pid is not None:
            return pid
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{spec.name}.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", spec.module],
                env=self.env(spec, extra_env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (self.run_dir / f"{spec.name}.pid").write_text(str(proc.pid))
        return proc.pid

    def ready(self, spec: ServiceSpec, timeout: float = 2.0) -> tuple[bool, dict[str, object] | None]:
        """Whether ``/ready`` answers 200, and its body."""
        try:
            r = httpx.get(f"http://127.0.0.1:{spec.port}/ready", timeout=timeout)
            return r.status_code == 200, r.json()
        except (httpx.HTTPError, ValueError):
            return False, None

    def wait_ready(self, timeout: float = 60.0, names: Collection[str] | None = None) -> dict[str, bool]:
        """Poll every ``/ready`` (or those of ``names``) until all answer 200 or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        state = {s.name: False for s in self.services if names is None or s.name in names}
        while time.monotonic() < deadline and not all(state.values()):
            for s in self.services:
                if s.name in state and not state[s.name]:
                    if self.pid(s.name) is None:
                        raise RuntimeError(f"{s.name} exited; see {self.log_dir / (s.name + '.log')}")
                    state[s.name] = self.ready(s)[0]
            if not all(state.values()):
                time.sleep(0.5)
        return state

    def up(
        self, extra_env: dict[str, str] | None = None, timeout: float = 60.0, wait_for: Collection[str] | None = None
    ) -> dict[str, bool]:
        """Make the secrets (first time), start the broker, create the topics and ACLs (as admin), start services."""
        ensure_secrets(self.home, kafka=not self.development)
        self.cluster.start()
        settings = {**os.environ, **(extra_env or {})}
        self.cluster.provision(
            Topics(settings.get("VIGIL_TOPIC_PREFIX", "vigil.")), partitions=int(settings.get("VIGIL_PARTITIONS", "6"))
        )
        for spec in self.services:
            self.start_service(spec, extra_env)
        return self.wait_ready(timeout=timeout, names=wait_for)

    def stop_service(self, name: str, timeout: float = 20.0) -> None:
        """SIGTERM a service (graceful: it finishes its batch and commits), SIGKILL after ``timeout``."""
        pid = self.pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.pid(name) is not None:
                time.sleep(0.2)
            if self.pid(name) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        (self.run_dir / f"{name}.pid").unlink(missing_ok=True)

    def down(self, *, keep_broker: bool = False) -> None:
        """Stop every service, then the broker."""
        for spec in reversed(self.services):
            self.stop_service(spec.name)
        if not keep_broker:
            self.cluster.stop()

    def status(self) -> list[dict[str, object]]:
        """One row per broker node and per service."""
        rows: list[dict[str, object]] = []
        for node in self.cluster.status():
            rows.append(
                {"name": f"kafka-{node['node']}", "pid": node["pid"], "port": node["port"], "ready": node["answers"]}
            )
        for spec in self.services:
            ok, body = self.ready(spec, timeout=1.0)
            rows.append(
                {
                    "name": spec.name,
                    "pid": self.pid(spec.name),
                    "port": spec.port,
                    "ready": ok,
                    "checks": (body or {}).get("checks"),
                }
            )
        return rows
