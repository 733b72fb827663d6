"""The package boundaries hold, and breaking one fails the check (`lint-imports`, as `make lint` runs it).

The contracts are in pyproject.toml (``[tool.importlinter]``). The second test copies the packages to a temporary
folder, makes the shadow service import the scorer there and runs the same command on the copy: it must fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = [
    "shared/contracts/vigil_contracts",
    "shared/runtime/vigil_runtime",
    "shared/scoring/vigil_scoring",
    "services/ingest/vigil_ingest",
    "services/scorer/vigil_scorer",
    "services/shadow/vigil_shadow",
    "services/drift/vigil_drift",
    "services/registry/vigil_registry",
    "ml/vigil_ml",
    "bench",
    "vigil",
]


def _lint_imports(config: Path, path: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH comes before the workspace's editable installs, so the copies are the packages analysed.
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy_packages(into: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, into / Path(package).name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", into / "pyproject.toml")


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed in this environment")
def test_the_repository_keeps_its_import_contracts(tmp_path: Path) -> None:
    _copy_packages(tmp_path)
    result = _lint_imports(tmp_path / "pyproject.toml", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed in this environment")
def test_a_service_importing_another_service_fails_the_check(tmp_path: Path) -> None:
    _copy_packages(tmp_path)
    (tmp_path / "vigil_shadow" / "borrowed.py").write_text(
        '"""A shortcut the contracts forbid."""\n\n'
        'from vigil_scorer.settings import Settings\n\n__all__ = ["Settings"]\n'
    )
    result = _lint_imports(tmp_path / "pyproject.toml", tmp_path)
    assert result.returncode != 0
    assert "Services are independent of each other BROKEN" in result.stdout
    assert "vigil_shadow.borrowed -> vigil_scorer.settings" in result.stdout
