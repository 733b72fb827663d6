"""The AsyncAPI documents in docs/asyncapi are the ones the services' brokers generate today."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vigil.docs import asyncapi_document
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
