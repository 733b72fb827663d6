"""docs/architecture.md names every package, and its import table agrees with the code's own declarations.

"May import" for a distribution (the common parts, the services, ``vigil_ml``) must be exactly the Vigil
distributions its ``pyproject.toml`` depends on (what its image installs), and nothing a ``lint-imports`` contract
forbids it; the repository-only packages (``bench``, ``vigil``) are only checked against the contracts.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
OURS: list[str] = CONFIG["root_packages"]
DISTRIBUTIONS = {
    "vigil_contracts": "shared/contracts",
    "vigil_runtime": "shared/runtime",
    "vigil_scoring": "shared/scoring",
    "vigil_ingest": "services/ingest",
    "vigil_scorer": "services/scorer",
    "vigil_shadow": "services/shadow",
    "vigil_drift": "services/drift",
    "vigil_registry": "services/registry",
    "vigil_ml": "ml",
}


def _table() -> dict[str, set[str]]:
    """Package -> the packages of ours its row says it may import (``everything`` -> all)."""
    section = DOC[DOC.index("## What may import what") :]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        may = set(re.findall(r"`(\w+)`", cells[1].split("(no ")[0]))
        if "everything" in cells[1] or "the common parts" in cells[1]:
            may |= {"vigil_contracts", "vigil_runtime", "vigil_scoring"}
        if "everything" in cells[1]:
            may |= set(OURS)
        if "the services" in cells[1]:
            may |= {p for p, d in DISTRIBUTIONS.items() if d.startswith("services/")}
        for name in re.findall(r"`(\w+)`", cells[0]):
            rows[name] = may - {name}
    return rows


def _forbidden(package: str) -> set[str]:
    """What the import-linter contracts forbid ``package`` to import."""
    out: set[str] = set()
    for contract in CONFIG["contracts"]:
        if contract["type"] == "forbidden" and package in contract["source_modules"]:
            out |= set(contract["forbidden_modules"])
        if contract["type"] == "independence" and package in contract["modules"]:
            out |= set(contract["modules"]) - {package}
    return out


def _declared(package: str) -> set[str]:
    """The Vigil distributions a package's pyproject depends on, as import names."""
    project = tomllib.loads((ROOT / DISTRIBUTIONS[package] / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0] for d in project["dependencies"]}
    return {n.replace("-", "_") for n in names if n.startswith("vigil-")}


def test_every_package_and_sub_package_is_named() -> None:
    rows = _table()
    assert set(OURS) <= set(rows), f"missing from the import table: {sorted(set(OURS) - set(rows))}"
    for package in OURS:
        folder = ROOT / DISTRIBUTIONS.get(package, "") / package if package in DISTRIBUTIONS else ROOT / package
        for sub in sorted(p.parent for p in folder.glob("*/__init__.py")):
            assert f"{sub.name}/" in DOC, f"{package}.{sub.name} is not named in docs/architecture.md"


@pytest.mark.parametrize("package", sorted(DISTRIBUTIONS))
def test_a_distributions_row_is_what_its_pyproject_declares(package: str) -> None:
    assert _table()[package] == _declared(package)


@pytest.mark.parametrize("package", ["vigil_contracts", "vigil_runtime", "vigil_scoring", *sorted(DISTRIBUTIONS)])
def test_no_row_allows_what_a_contract_forbids(package: str) -> None:
    assert not _table()[package] & _forbidden(package)
