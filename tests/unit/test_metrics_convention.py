"""One metrics convention, checked: every service's /metrics passes `promtool check metrics`, counts its HTTP
requests by route template (never the raw path), method and status with a latency histogram, and labels topics
by their kind, the same in every service and under any prefix."""

from __future__ import annotations

import contextlib
import importlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.promtool import promtool
from vigil_contracts.topics import Topic
from vigil_runtime.metrics import ServiceMetrics, topic_label

SERVICES = ("ingest", "scorer", "shadow", "drift", "registry")
# A request per service on a route with path parameters: its label must be the template.
TEMPLATED = {
    "ingest": ("/Observation/obs-123", "/{resource_type}/{resource_id}"),
    "registry": ("/models/sepsis/versions/7", "/models/{name}/versions/{version}"),
}


def scrape(service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The service's /metrics after a few requests; its HTTP app runs without its Kafka side."""
    # Development mode: each app is built without a broker or a registry (no Kafka credentials to give, the
    # scorer would otherwise fail closed and serve nothing); what is checked is only the /metrics text format.
    monkeypatch.setenv("VIGIL_DEVELOPMENT", "true")
    settings_cls: Any = importlib.import_module(f"vigil_{service}.settings").Settings
    kw: dict[str, Any] = {"kafka_bootstrap_servers": "127.0.0.1:1", "topic_prefix": "unit-7."}
    if service == "registry":
        kw |= {
            "database_url": f"sqlite:///{tmp_path / 'registry.db'}",
            "artifact_root": str(tmp_path / "artifacts"),
            "kafka_enabled": False,
        }
    app = importlib.import_module(f"vigil_{service}.app").create_app(settings_cls(**kw))
    with contextlib.ExitStack() as stack:
        client = TestClient(app)
        if service == "registry":
            stack.enter_context(client)  # its lifespan migrates the database (Kafka disabled: nothing else starts)
        assert client.get("/health").status_code == 200
        client.get("/no/such/path/42")
        if service in TEMPLATED:
            client.get(TEMPLATED[service][0])
        app.state.runtime.metrics.count(f"unit-7.{'observations' if service != 'ingest' else 'fhir.raw'}", "processed")
        return client.get("/metrics").text
    raise AssertionError("unreachable")


@pytest.mark.parametrize("service", SERVICES)
def test_metrics_pass_promtool_and_count_http_by_route_template(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = scrape(service, tmp_path, monkeypatch)
    checked = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked.stdout + checked.stderr
    samples = {f.name: f.samples for f in text_string_to_metric_families(text)}
    requests = [s for s in samples["vigil_http_requests"] if s.name == "vigil_http_requests_total"]
    routes = {(s.labels["route"], s.labels["method"], s.labels["status"]) for s in requests}
    assert ("/health", "GET", "200") in routes
    assert ("unmatched", "GET", "404") in routes, "an unknown path is not a label value of its own"
    if service in TEMPLATED:
        raw, template = TEMPLATED[service]
        assert any(r == template for r, _, _ in routes) and raw not in text
    assert all(s.labels["service"] == service for s in requests)
    latency = [s for s in samples["vigil_http_request_duration_seconds"] if s.name.endswith("_count")]
    assert sum(s.value for s in latency if s.labels["route"] == "/health") == 1
    messages = [s for s in samples["vigil_messages"] if s.name == "vigil_messages_total"]
    topics = {s.labels["topic"] for s in messages}
    assert ("fhir.raw" if service == "ingest" else "observations") in topics
    assert topics <= {t.value for t in Topic}, "the topic label is the kind, never the prefixed name"
    if service in ("scorer", "shadow", "drift"):
        # Declared at start, so the first dead letter is an increase Prometheus sees (VigilDeadLetters fires).
        parked = [s for s in messages if s.labels["outcome"] == "parked" and s.labels["topic"] == "observations"]
        assert [s.value for s in parked] == [0.0]


def test_the_topic_label_is_the_kind_under_any_prefix() -> None:
    assert topic_label("vigil.observations") == topic_label("demo-2026.observations") == "observations"
    assert topic_label("t1234.scores.live") == "scores.live"
    assert topic_label("vigil.models.lifecycle") == "models.lifecycle"
    assert topic_label("join") == "join"  # not a topic: unchanged
    metrics = ServiceMetrics("drift")
    metrics.count("x.scores.shadow", "processed", 3)
    assert metrics.messages.labels("drift", "scores.shadow", "processed")._value.get() == 3
