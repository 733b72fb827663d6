"""Registry test support shared by the unit and integration tiers.

- ``PostgresServer``: a throwaway PostgreSQL server (initdb + pg_ctl) in a temporary folder on a free port,
  run as the ``postgres`` OS user when the tests run as root (PostgreSQL refuses to run as root). It fails
  loudly when it cannot start: the registry's PostgreSQL tests must run, never skip.
- ``postgres_server`` (session fixture) and ``postgres_url`` (a fresh database per test).
- ``make_package``: a model package folder as shared/scoring/vigil_scoring/model_package.py describes it (the registry
  checks digests only; the ONNX bytes need not be a real model).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _bindir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    pytest.fail("PostgreSQL is not installed (scripts/install-system-deps.sh installs it): the registry tier needs it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A PostgreSQL server of the test session's own; ``stop`` removes every trace."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="vigil-pg-"))
        self.data = self.root / "data"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, user="postgres", group="postgres")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120, cwd=self.root)

    def start(self) -> str:
        """initdb, then start on 127.0.0.1:<port>; returns the admin URL."""
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
            )
            self._run(
                "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "-t", "60", "start"
            )
        except subprocess.CalledProcessError as error:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            self.stop()
            pytest.fail(f"PostgreSQL did not start: {error.stderr or error.stdout}\n{log[-2000:]}")
        return self.url("postgres")

    def url(self, database: str) -> str:
        """A psycopg (v3) SQLAlchemy URL of one database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database on the session's server."""
    return postgres_server.create_database()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_package(
    root: Path,
    *,
    name: str = "sepsis",
    version: str = "1",
    columns: tuple[str, ...] = ("heart_rate", "temperature", "lactate"),
    card: dict[str, Any] | None = None,
    onnx: bytes | None = None,
) -> Path:
    """Write a model package folder (model.onnx, card.json, card.md, manifest.json) and return its path."""
    folder = root / f"{name}-{version}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    model = onnx if onnx is not None else f"fake onnx {name} {version}".encode()
    (folder / "model.onnx").write_bytes(model)
    card_data = card or {
        "description": "Sepsis risk within 6 hours",
        "metrics": {"auroc": 0.81, "ece": 0.03},
        "lineage": {"training_data_sha256": "ab" * 32, "parameters": {"max_depth": 4}},
        "tags": ["sepsis", "hgb"],
    }
    (folder / "card.json").write_text(json.dumps(card_data))
    (folder / "card.md").write_text(f"# {name} {version}\n")
    files = {f: _sha((folder / f).read_bytes()) for f in ("model.onnx", "card.json", "card.md")}
    manifest = {
        "name": name,
        "version": version,
        "feature_set_version": "fs-1",
        "input_schema": {"columns": list(columns), "dtype": "float32"},
        "sha256": files["model.onnx"],
        "files": files,
        "created_at": "2026-11-27T00:00:00+00:00",
        "thresholds": {"operating": 0.3, "medium": 0.2, "high": 0.5},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
