"""Each service installs alone from its own pyproject (with the common parts it names) and builds its app.

A fresh virtualenv per service (``uv venv``), ``uv pip install`` of the service and its local shared parts only,
then, inside that environment: import the service, build its app from its settings and ask ``/health`` (the
app is built without its lifespan, so no broker or database is needed). The environments must not hold what a
service does not import: no scikit-learn in shadow's, no onnxruntime or pandas in ingest's and registry's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
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


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.mark.parametrize("svc", sorted(PARTS))
def test_a_service_installs_alone_and_builds_its_app(svc: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    made = _run([*UV, "venv", "--python", sys.executable, str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    sources = [str(ROOT / "shared" / part) for part in PARTS[svc]] + [str(ROOT / "services" / svc)]
    installed = _run([*UV, "pip", "install", "--python", str(python), *sources])
    assert installed.returncode == 0, installed.stderr

    listing = _run([*UV, "pip", "list", "--python", str(python), "--format", "freeze"])
    assert listing.returncode == 0, listing.stderr
    names = {line.split("==")[0].lower() for line in listing.stdout.splitlines() if "==" in line}
    assert f"vigil-{svc}" in names
    leaked = sorted(names & set(ABSENT[svc]))
    assert not leaked, f"{svc}'s environment holds {leaked}"

    # Run from the temporary folder so the repository's own packages are not importable by accident.
    health = _run([str(python), "-c", HEALTH.format(svc=svc)], cwd=tmp_path, env={"PATH": str(venv / "bin")})
    assert health.returncode == 0, health.stdout + health.stderr
    assert "health" in health.stdout
