"""``vigil registry`` commands against the API (the CLI's registry client talks to the app in process)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from tests.pg import make_package
from tests.unit.test_registry_api import settings_for
from vigil_registry import cli
from vigil_registry.app import create_app
from vigil_registry.artifacts import pack_folder
from vigil_runtime.registry_client import RegistryClient

runner = CliRunner()
SCIENTIST = "scientist-token-0123456789abcdef"
APPROVER = "approver-token-0123456789abcdefg"
ADMIN = "admin-token-0123456789abcdefghij"
VIEWER = "viewer-token-0123456789abcdefghi"


@pytest.fixture
def vigil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Result]]:
    app = create_app(settings_for(tmp_path))
    with TestClient(app):  # runs the app's lifespan (migrations); the CLI's requests go through an ASGI transport

        def make_client(url: str, token: str | None) -> RegistryClient[Any]:
            return RegistryClient(url, token=token, transport=httpx.ASGITransport(app=app))

        monkeypatch.setattr(cli, "make_client", make_client)

        def run(token: str, *args: str) -> Result:
            return runner.invoke(cli.app, ["--token", token, *args])

        yield run


def test_the_commands_drive_a_version_to_production_and_back(vigil: Callable[..., Result], tmp_path: Path) -> None:
    run = vigil
    one = make_package(tmp_path, version="1")
    result = run(SCIENTIST, "register", str(one), "--tag", "cli")
    assert result.exit_code == 0, result.output
    assert "registered sepsis 1" in result.output
    archive = tmp_path / "two.tar.gz"
    archive.write_bytes(pack_folder(make_package(tmp_path, version="2")))
    assert run(SCIENTIST, "register", str(archive)).exit_code == 0
    assert run(SCIENTIST, "stage", "sepsis", "1", "shadow").exit_code == 0
    assert run(SCIENTIST, "propose", "sepsis", "1", "--reason", "first").exit_code == 0
    refused = run(SCIENTIST, "approve", "sepsis", "1")
    assert refused.exit_code == 1 and "may not approve" in refused.output
    assert run(APPROVER, "approve", "sepsis", "1").exit_code == 0
    eligibility = run(VIEWER, "eligibility", "sepsis", "1")
    assert "ELIGIBLE" in eligibility.output
    assert run(APPROVER, "promote", "sepsis", "1").exit_code == 0

    listed = run(VIEWER, "list", "--json")
    models = json.loads(listed.output)
    assert models[0]["production_version"] == "1" and models[0]["versions"] == {"1": "production", "2": "registered"}
    shown = json.loads(run(VIEWER, "show", "sepsis", "1", "--json").output)
    assert shown["stage"] == "production" and "cli" in shown["tags"]
    assert "artifact sha256" in run(VIEWER, "show", "sepsis", "1").output

    no_target = run(APPROVER, "rollback", "sepsis", "--reason", "test")
    assert no_target.exit_code == 1 and "nothing to roll back to" in no_target.output
    retire = run(ADMIN, "retire", "sepsis", "2", "--reason", "never used")
    assert retire.exit_code == 0, retire.output
    again = run(SCIENTIST, "stage", "sepsis", "2", "shadow")
    assert again.exit_code == 1 and "retired version can no longer be staged" in again.output

    entries = json.loads(run(VIEWER, "audit", "sepsis", "--json").output)
    assert [e["action"] for e in entries] == [
        "registered",
        "registered",
        "stage_changed",
        "proposed",
        "approved",
        "promoted",
        "retired",
    ]
    assert entries[-1]["reason"] == "never used" and entries[-1]["role"] == "admin"
    verified = run(VIEWER, "audit", "--verify")
    assert verified.exit_code == 0 and "intact" in verified.output
