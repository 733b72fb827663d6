"""`vigil kafka status|stop --port P` against a real broker started under another name (as `vigil up` names its
cluster ``stack-<port>``): found by its port, reported, stopped for real; a second stop says nothing ran."""

from __future__ import annotations

import os
import uuid

import pytest
from typer.testing import CliRunner

from vigil import kafka_local
from vigil.cli import app

# Beside this checkout's test broker (VIGIL_TEST_KAFKA_PORT and the next port), clear of it.
PORT = int(os.environ.get("VIGIL_TEST_KAFKA_PORT", "19092")) + 20


@pytest.mark.slow
def test_a_broker_is_found_by_its_port_and_stopped() -> None:
    cluster = kafka_local.LocalCluster(name=f"cli-{uuid.uuid4().hex[:6]}", base_port=PORT)
    cluster.start()
    try:
        runner = CliRunner()
        status = runner.invoke(app, ["kafka", "status", "--port", str(PORT)])
        assert status.exit_code == 0, status.output
        assert f'"cluster": "{cluster.name}"' in status.output and '"answers": true' in status.output
        stop = runner.invoke(app, ["kafka", "stop", "--port", str(PORT)])
        assert stop.exit_code == 0, stop.output
        assert f"Kafka cluster {cluster.name} stopped: 1 node(s) on port(s) {PORT}" in stop.output
        assert not cluster.nodes[0].answers() and cluster.nodes[0].pid() is None
        again = runner.invoke(app, ["kafka", "stop", "--name", cluster.name])
        assert again.exit_code == 1 and "was not running" in again.output
    finally:
        cluster.destroy()
