"""The AsyncAPI documents in docs/asyncapi are the ones the services' brokers generate today."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vigil.docs import asyncapi_document, runtime_of
from vigil.stack import SERVICE_NAMES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "asyncapi"
PUBLISHES = {
    "ingest": "ObservationRecorded",
    "scorer": "RiskScored",
    "shadow": "RiskScored",
    "drift": "AlertRaised",
    "registry": "ModelLifecycleChanged",
}


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_committed_document_matches_the_code(service: str) -> None:
    generated = asyncapi_document(service)
    committed = json.loads((DOCS / f"{service}.json").read_text())
    assert committed == generated, f"docs/asyncapi/{service}.json is stale: run `vigil asyncapi`"


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_document_describes_the_event_contracts(service: str) -> None:
    document = asyncapi_document(service)
    assert document["asyncapi"].startswith("3.")
    assert document["channels"], service
    assert PUBLISHES[service] in json.dumps(document["components"]), service


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_no_subscriber_creates_a_topic(service: str) -> None:
    # The stack's topics are made by ensure_topics or the administrator with its partitions and replication; a
    # FastStream subscriber left to declare its own makes one partition and one replica, and on a secured stack
    # logged a refusal for every topic at each start.
    import importlib

    app = importlib.import_module(f"vigil_{service}.app")
    overrides = {"database_url": "sqlite://"} if service == "registry" else {}
    settings = importlib.import_module(f"vigil_{service}.settings").Settings(**overrides)
    broker = runtime_of(app.bootstrap(settings)).broker
    assert broker is not None
    subscribers = list(broker.subscribers)
    assert subscribers
    # Kafka subscribers (``topics_to_create``) are not in FastStream's generic subscriber type.
    assert [s.topics_to_create for s in subscribers] == [[] for _ in subscribers]  # type: ignore[attr-defined]
