"""Each service installs alone from its own pyproject (with the common parts it names) and builds its app.

A fresh virtualenv per service (``uv venv``), ``uv pip install`` of the service and its local shared parts only,
then, inside that environment: import the service, build its app from its settings and ask ``/health`` (the
app is built without its lifespan, so no broker or database is needed). The environments must not hold what a
service does not import: no scikit-learn in shadow's, no onnxruntime or pandas in ingest's and registry's.

The five installs run side by side (a module fixture), each test judging its own service: they are mostly waiting on
uv's linking and the interpreter's imports, and one after the other they took 115 s of CI's slow lane.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# uv as the Makefile runs it (a module of the system Python) when no uv executable is on the PATH.
UV: list[str] = [str(shutil.which("uv"))] if shutil.which("uv") else ["python3", "-m", "uv"]

PARTS = {
    "ingest": ["contracts", "runtime"],
    "registry": ["contracts", "runtime"],
    "scorer": ["contracts", "runtime", "scoring"],
    "shadow": ["contracts", "runtime", "scoring"],
    "drift": ["contracts", "runtime", "scoring"],
}
ABSENT = {
    "ingest": ["onnxruntime", "pandas", "scikit-learn", "vigil-scoring"],
    "registry": ["onnxruntime", "pandas", "scikit-learn", "vigil-scoring"],
    "scorer": ["scikit-learn", "skl2onnx", "vigil-ml"],
    "shadow": ["scikit-learn", "skl2onnx", "onnx", "vigil-ml", "vigil-scorer"],
    "drift": ["scikit-learn", "vigil-ml"],
}

HEALTH = """
from fastapi.testclient import TestClient
from vigil_{svc}.app import create_app
from vigil_{svc}.settings import Settings

app = create_app(Settings())
response = TestClient(app).get("/health")
assert response.status_code == 200, response.text
print("health", response.json())
"""


UV_ENV = {
    **os.environ,
    # A throwaway environment imported once: uv's cache is on the same disk, so its files are hard-linked rather
    # than copied (the Makefile's copy mode is for the workspace), and no bytecode is compiled ahead for the whole
    # of pandas and scipy (the Makefile's setting, for services started many times) where one import compiles only
    # what it loads. The property tested is unchanged: what installs, from which pyproject, and that it imports.
    "UV_LINK_MODE": "hardlink",
    "UV_COMPILE_BYTECODE": "0",
}


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


@dataclass
class Install:
    """One service's steps in its own virtualenv, in order, up to the first that failed."""

    steps: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)


def install(svc: str, home: Path) -> Install:
    """A fresh virtualenv, the service and the local shared parts it names, its package list, its app's /health."""
    venv = home / "venv"
    python = str(venv / "bin" / "python")
    sources = [str(ROOT / "shared" / part) for part in PARTS[svc]] + [str(ROOT / "services" / svc)]
    plan: list[tuple[str, list[str], dict[str, object]]] = [
        ("venv", [*UV, "venv", "--python", sys.executable, str(venv)], {"env": UV_ENV}),
        ("install", [*UV, "pip", "install", "--python", python, *sources], {"env": UV_ENV}),
        ("list", [*UV, "pip", "list", "--python", python, "--format", "freeze"], {"env": UV_ENV}),
        # Run from the temporary folder so the repository's own packages are not importable by accident.
        ("health", [python, "-c", HEALTH.format(svc=svc)], {"cwd": home, "env": {"PATH": str(venv / "bin")}}),
    ]
    done = Install()
    for name, args, kwargs in plan:
        done.steps[name] = _run(args, **kwargs)
        if done.steps[name].returncode != 0:
            break
    return done


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Install]]]:
    with ThreadPoolExecutor(max_workers=len(PARTS)) as pool:
        yield {svc: pool.submit(install, svc, tmp_path_factory.mktemp(f"install-{svc}")) for svc in sorted(PARTS)}


@pytest.mark.parametrize("svc", sorted(PARTS))
def test_a_service_installs_alone_and_builds_its_app(svc: str, installs: dict[str, Future[Install]]) -> None:
    steps = installs[svc].result().steps
    for name in ("venv", "install", "list", "health"):
        assert name in steps, f"{svc}: {name} did not run"
        assert steps[name].returncode == 0, steps[name].stdout + steps[name].stderr

    listing = steps["list"].stdout
    names = {line.split("==")[0].lower() for line in listing.splitlines() if "==" in line}
    assert f"vigil-{svc}" in names
    leaked = sorted(names & set(ABSENT[svc]))
    assert not leaked, f"{svc}'s environment holds {leaked}"
    assert "health" in steps["health"].stdout
