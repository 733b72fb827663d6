"""Bounded waits in ingest: a publish the broker does not acknowledge in time is refused with 503, Retry-After and
an OperationOutcome, and nothing of it counts as accepted (a retry publishes it as new)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.unit.test_ingest_http import EHR_TOKEN, FHIR, observation
from vigil_contracts.events import Event
from vigil_ingest.api import mount_fhir
from vigil_ingest.core import IngestCore
from vigil_ingest.settings import Settings
from vigil_runtime.auth import Authenticator, Grant, TokenTable
from vigil_runtime.metrics import ServiceMetrics


class StallingPublisher:
    """A broker that takes writes but never acknowledges them until ``stalled`` is cleared."""

    def __init__(self) -> None:
        self.stalled = True
        self.acknowledged: list[Event] = []

    async def publish_all(self, topic: str, events: Sequence[Event]) -> None:
        if self.stalled:
            await asyncio.Event().wait()  # never acknowledged (until the bound cancels the wait)
        self.acknowledged.extend(events)


def client_for(publisher: StallingPublisher) -> TestClient:
    settings = Settings(topic_prefix="unit.", publish_timeout_s=0.2, retry_after_s=7)
    core = IngestCore(settings, publisher, ServiceMetrics("ingest"))  # type: ignore[arg-type]
    app = FastAPI()
    app.state.auth = Authenticator(TokenTable({EHR_TOKEN: Grant(user="ehr", scopes=["system/*.write"])}))
    mount_fhir(app, core, settings)
    return TestClient(app, headers={"Authorization": f"Bearer {EHR_TOKEN}"})


def test_an_unacknowledged_publish_is_refused_with_503_and_a_retry_is_accepted_as_new() -> None:
    publisher = StallingPublisher()
    client = client_for(publisher)
    body = orjson.dumps(observation())
    refused = client.post("/fhir/Observation", content=body, headers=FHIR)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "7"
    issue = refused.json()["issue"][0]
    assert refused.json()["resourceType"] == "OperationOutcome" and issue["code"] == "transient"
    assert "within 0.2 s" in issue["diagnostics"] and "retrying the same request is safe" in issue["diagnostics"]
    assert publisher.acknowledged == []
    # The broker is back: the same request is new (not a 200 "already published" for what was never acknowledged).
    publisher.stalled = False
    accepted = client.post("/fhir/Observation", content=body, headers=FHIR)
    assert accepted.status_code == 201
    assert len(publisher.acknowledged) == 1
    again = client.post("/fhir/Observation", content=body, headers=FHIR)
    assert again.status_code == 200 and len(publisher.acknowledged) == 1


def test_a_refused_bundle_is_not_remembered_either() -> None:
    publisher = StallingPublisher()
    client = client_for(publisher)
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": observation(id=f"o{i}")} for i in range(3)],
    }
    refused = client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
    publisher.stalled = False
    accepted = client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR)
    assert [e["response"]["status"] for e in accepted.json()["entry"]] == ["201 Created"] * 3
    assert len(publisher.acknowledged) == 3
