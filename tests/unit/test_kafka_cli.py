"""`vigil kafka stop|status` find the cluster they are asked about by port or name, and fail loudly otherwise.

The clusters here are state folders as `LocalCluster.start` writes them (no broker runs): the commands must find
them by the port in their server.properties, and refuse to claim a stop when nothing ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vigil import kafka_local
from vigil.cli import app


def fake_cluster(
    home: Path, name: str, base_port: int, brokers: int = 1, *, secured: bool = True
) -> kafka_local.LocalCluster:
    cluster = kafka_local.LocalCluster(name=name, brokers=brokers, base_port=base_port, home=home, secured=secured)
    if secured:
        cluster.secrets.ensure(cluster.principals)  # a secured node's properties carry the admin's login
    for node in cluster.nodes:
        node.directory.mkdir(parents=True)
        (node.directory / "server.properties").write_text(cluster._properties(node))
    return cluster


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    fake_cluster(tmp_path, "default", 9092)
    fake_cluster(tmp_path, "stack-29092", 29092)
    fake_cluster(tmp_path, "three", 39092, brokers=3)
    # A record of a cluster a person started with --dev: stop/status must find it as it was started.
    fake_cluster(tmp_path, "dev", 49092, secured=False)
    return tmp_path


def test_clusters_are_found_by_the_port_they_listen_on_or_by_name(home: Path) -> None:
    assert [c.name for c in kafka_local.find_clusters(port=29092)] == ["stack-29092"]
    assert [c.name for c in kafka_local.find_clusters(port=39096)] == ["three"]  # node 3 of three
    found = kafka_local.find_clusters(name="three")
    assert len(found) == 1 and found[0].brokers == 3 and found[0].base_port == 39092
    assert kafka_local.find_clusters(port=29092, name="default") == []
    assert kafka_local.find_clusters(port=12345) == []
    # Found as started: stop/status of a development-mode cluster need no --dev repeated.
    assert [c.secured for c in kafka_local.find_clusters(name="dev")] == [False]
    assert [c.secured for c in kafka_local.find_clusters(name="three")] == [True]


def test_stop_by_port_of_a_cluster_that_is_not_running_fails_and_says_so(home: Path) -> None:
    result = CliRunner().invoke(app, ["kafka", "stop", "--port", "29092"])
    assert result.exit_code == 1
    assert "stack-29092" in result.output and "was not running" in result.output
    assert "Kafka stopped" not in result.output


def test_stop_and_status_fail_loudly_when_no_cluster_matches(home: Path) -> None:
    for command in ("stop", "status"):
        result = CliRunner().invoke(app, ["kafka", command, "--port", "12345"])
        assert result.exit_code == 1
        assert "no local Kafka cluster with port 12345" in result.output
        assert "stack-29092 (port 29092)" in result.output  # what is known, to help the operator
    result = CliRunner().invoke(app, ["kafka", "status", "--name", "nope"])
    assert result.exit_code == 1 and "name 'nope'" in result.output


def test_status_of_a_known_cluster_that_is_down_exits_1_with_its_rows(home: Path) -> None:
    result = CliRunner().invoke(app, ["kafka", "status", "--port", "29092"])
    assert result.exit_code == 1
    assert '"cluster": "stack-29092"' in result.output and '"answers": false' in result.output
