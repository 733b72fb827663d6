"""compose.yaml: valid for the Compose client, and wired the way the README promises (no Docker engine here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "scorer", "shadow", "drift", "registry")
ENV = {"POSTGRES_PASSWORD": "test-only", "REGISTRY_TOKENS": "{}", "GRAFANA_ADMIN_PASSWORD": "test-only"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as the Compose client resolves it (anchors, merges and variables applied)."""
    client = shutil.which("docker-compose")
    if client is None:
        pytest.fail("docker-compose (Debian's Compose client) is missing: scripts/install-system-deps.sh installs it")
    done = subprocess.run(
        [client, "-f", str(ROOT / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_every_service_and_dependency_is_declared(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*SERVICES, "kafka", "postgres", "prometheus", "grafana"}
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_everything_has_a_healthcheck_and_waits_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "healthcheck" in service, name
        for dep, cond in service.get("depends_on", {}).items():
            assert cond["condition"] == "service_healthy", (name, dep)
    for name in SERVICES:
        assert "kafka" in compose["services"][name]["depends_on"], name
    assert "postgres" in compose["services"]["registry"]["depends_on"]


def test_prometheus_scrapes_every_service() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {
        t.split(":")[0] for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == set(SERVICES)


def test_no_default_secrets() -> None:
    done = subprocess.run(
        [shutil.which("docker-compose") or "docker-compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ENV},
        check=False,
    )
    assert done.returncode != 0
    assert any(name in done.stderr for name in ENV)
