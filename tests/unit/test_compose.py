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
ENV = {"POSTGRES_PASSWORD": "test-only", "GRAFANA_ADMIN_PASSWORD": "test-only"}


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


ONE_SHOT = ("kafka-init", "kafka-provision")
"""Services that run once and exit: the secrets and broker configuration, then the topics and ACLs."""


def test_every_service_and_dependency_is_declared(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*SERVICES, *ONE_SHOT, "kafka", "postgres", "prometheus", "grafana"}
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert "/secrets/server.properties" in " ".join(compose["services"]["kafka"]["command"])


def test_everything_has_a_healthcheck_and_waits_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
        else:
            assert "healthcheck" in service, name
        for dep, cond in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond["condition"] == wanted, (name, dep)
    for name in SERVICES:
        assert "kafka" in compose["services"][name]["depends_on"], name
        assert "kafka-provision" in compose["services"][name]["depends_on"], name
    assert "postgres" in compose["services"]["registry"]["depends_on"]
    assert "kafka-init" in compose["services"]["kafka"]["depends_on"]


def test_the_broker_is_secured_like_the_native_one(tmp_path: Path) -> None:
    """compose's broker configuration comes from the native broker's generator: SASL_SSL, ACLs, one super user."""
    from vigil.credentials import KafkaSecrets
    from vigil.kafka_local import server_properties

    secrets = KafkaSecrets(tmp_path).ensure(hosts=("kafka",))
    text = server_properties(
        node_id=1,
        voters="1@kafka:9093",
        listen_host="0.0.0.0",
        advertised_host="kafka",
        port=9092,
        controller_port=9093,
        log_dir="/var/lib/kafka/data",
        replication=1,
        secrets=secrets,
    )
    props = dict(line.split("=", 1) for line in text.splitlines() if line)
    assert props["listeners"] == "SASL_SSL://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin"
    assert "PLAINTEXT" not in text


def test_each_service_connects_as_its_own_principal_over_tls(compose: dict[str, Any]) -> None:
    for name in SERVICES:
        service = compose["services"][name]
        env = service["environment"]
        assert env["VIGIL_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["VIGIL_KAFKA_CA_FILE"] == "/secrets/ca.pem"
        assert env[f"{name.upper()}_KAFKA_USERNAME"] == name
        assert env[f"{name.upper()}_KAFKA_PASSWORD_FILE"] == f"/secrets/{name}.password"
        assert not any("PASSWORD" in k and "FILE" not in k and "POSTGRES" not in k for k in env), name
        # The Compose client prints short volume syntax (v1) or long (v2): accept either, read-only in both.
        mounts = [
            v if isinstance(v, str) else f"{v['source']}:{v['target']}:{'ro' if v.get('read_only') else 'rw'}"
            for v in service["volumes"]
        ]
        assert any(m.endswith(":/secrets:ro") for m in mounts), (name, mounts)


def test_http_secrets_come_from_kafka_init_as_files(compose: dict[str, Any]) -> None:
    """Tokens, the token table and the signing key are files made by kafka-init; no token in the environment."""
    for name in SERVICES:
        env = compose["services"][name]["environment"]
        assert env["VIGIL_AUTH_TOKENS_FILE"] == "/secrets/http/tokens.json", name
        assert env["VIGIL_LIFECYCLE_PUBLIC_KEY_FILE"] == "/secrets/lifecycle/registry-signing.pub", name
        assert not any(k.endswith("TOKENS") or k.endswith("_TOKEN") for k in env), name
    assert compose["services"]["registry"]["environment"]["REGISTRY_SIGNING_KEY_FILE"] == (
        "/secrets/lifecycle/registry-signing.key"
    )
    for name in ("scorer", "shadow"):
        assert compose["services"][name]["environment"][f"{name.upper()}_REGISTRY_TOKEN_FILE"] == (
            f"/secrets/http/{name}.token"
        )


def test_kafka_init_makes_the_http_secrets_for_the_services_user(tmp_path: Path, monkeypatch: Any) -> None:
    """compose-init writes the token table, the services' registry tokens and the signing key, and hands to the
    services' user only what they read (os.chown recorded: the test does not run as root)."""
    from vigil import credentials

    owned: dict[str, int] = {}
    monkeypatch.setattr(credentials.os, "chown", lambda path, uid, _gid: owned.__setitem__(str(path), uid))
    credentials.compose_init(tmp_path)
    service = credentials.SERVICE_UID
    for path in ("http/tokens.json", "http/scorer.token", "http/shadow.token", "lifecycle/registry-signing.key"):
        assert (tmp_path / path).exists(), path
        assert owned[str(tmp_path / path)] == service, path
    for person in ("admin", "scientist", "approver", "simulator", "operator"):
        assert str(tmp_path / "http" / f"{person}.token") not in owned, person
    assert oct((tmp_path / "http" / "tokens.json").stat().st_mode & 0o777) == "0o600"


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
