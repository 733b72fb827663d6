"""Strict FHIR JSON, one byte-order-mark rule, duplicates and corrections, over HTTP (a fake publisher)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from vigil_contracts.events import Event, ObservationRecorded, ObservationRetracted
from vigil_ingest.api import mount_fhir
from vigil_ingest.cli import map_files
from vigil_ingest.core import IngestCore
from vigil_ingest.settings import Settings
from vigil_runtime.metrics import ServiceMetrics

FHIR = {"content-type": "application/fhir+json"}


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[Event] = []
        self.fail = False

    async def publish_all(self, topic: str, events: Sequence[Event]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.published.extend(events)


@pytest.fixture
def setup() -> tuple[TestClient, FakePublisher]:
    settings = Settings(topic_prefix="unit.")
    publisher = FakePublisher()
    core = IngestCore(settings, publisher, ServiceMetrics("ingest"))  # type: ignore[arg-type]
    app = FastAPI()
    mount_fhir(app, core, settings)
    return TestClient(app), publisher


def hr(value: Any, rid: str = "hr-9", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2026-01-01T10:00:00Z",
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    base.update(overrides)
    return base


def values(publisher: FakePublisher) -> list[float]:
    return [e.value for e in publisher.published if isinstance(e, ObservationRecorded)]


@pytest.mark.parametrize(("raw", "kind"), [("88", "string"), (True, "boolean"), ({"value": 88}, "object")])
def test_a_quantity_value_that_is_not_a_json_number_is_refused(
    setup: tuple[TestClient, FakePublisher], raw: Any, kind: str
) -> None:
    client, publisher = setup
    r = client.post("/fhir/Observation", content=orjson.dumps(hr(raw)), headers=FHIR)
    assert r.status_code == 422
    assert r.json()["issue"][0]["diagnostics"] == (
        f"Observation/hr-9: heart_rate: valueQuantity.value is a JSON {kind}, not a number (FHIR decimal)"
    )
    assert publisher.published == []


def test_a_byte_order_mark_follows_one_rule_on_http_and_in_the_dry_run(
    setup: tuple[TestClient, FakePublisher], tmp_path: Path
) -> None:
    client, publisher = setup
    body = b"\xef\xbb\xbf" + orjson.dumps(hr(91))
    assert client.post("/fhir/Observation", content=body, headers=FHIR).status_code == 201
    path = tmp_path / "bom.json"
    path.write_bytes(body)
    out: list[str] = []

    class Sink:
        def write(self, line: str) -> None:
            out.append(line)

    map_files([path], Sink())
    dry = [orjson.loads(line) for line in out]
    assert [line["event_id"] for line in dry] == [e.event_id for e in publisher.published]


def test_conflicting_duplicates_in_one_bundle_refuse_the_later_entry(setup: tuple[TestClient, FakePublisher]) -> None:
    client, publisher = setup
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": hr(95)}, {"resource": hr(140)}, {"resource": hr(95)}],
    }
    r = client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR)
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201 Created", "409 Conflict", "200 OK"]
    assert "different content" in r.json()["entry"][1]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert values(publisher) == [95.0]


def test_a_known_id_with_new_content_is_published_as_a_correction(setup: tuple[TestClient, FakePublisher]) -> None:
    client, publisher = setup
    assert client.post("/fhir/Observation", content=orjson.dumps(hr(95)), headers=FHIR).status_code == 201
    r = client.post("/fhir/Observation", content=orjson.dumps(hr(140)), headers=FHIR)
    assert r.status_code == 200
    assert any("published as a correction" in i["diagnostics"] for i in r.json()["issue"])
    kinds = [type(e).__name__ for e in publisher.published]
    assert kinds == ["ObservationRecorded", "ObservationRetracted", "ObservationRecorded"]
    retraction = publisher.published[1]
    assert isinstance(retraction, ObservationRetracted) and retraction.reason == "amended"
    corrected = publisher.published[2]
    assert isinstance(corrected, ObservationRecorded) and corrected.value == 140.0
    assert corrected.source.version_id is not None and corrected.event_id != publisher.published[0].event_id
    # back to the first value: a correction again, never "already published" while dropped
    assert client.post("/fhir/Observation", content=orjson.dumps(hr(95)), headers=FHIR).status_code == 200
    assert values(publisher) == [95.0, 140.0, 95.0]


def test_an_identical_resubmission_is_200_with_the_resource(setup: tuple[TestClient, FakePublisher]) -> None:
    client, publisher = setup
    body = orjson.dumps(hr(95))
    assert client.post("/fhir/Observation", content=body, headers=FHIR).status_code == 201
    again = client.post("/fhir/Observation", content=body, headers=FHIR)
    assert again.status_code == 200 and again.json() == hr(95)
    assert len(publisher.published) == 1


def test_new_content_under_the_same_explicit_version_is_409(setup: tuple[TestClient, FakePublisher]) -> None:
    client, publisher = setup
    assert (
        client.post(
            "/fhir/Observation", content=orjson.dumps(hr(95, meta={"versionId": "3"})), headers=FHIR
        ).status_code
        == 201
    )
    r = client.post("/fhir/Observation", content=orjson.dumps(hr(140, meta={"versionId": "3"})), headers=FHIR)
    assert r.status_code == 409
    assert "already published with different content" in r.json()["issue"][0]["diagnostics"]
    assert values(publisher) == [95.0]


def test_a_correction_whose_publish_failed_is_retried_as_a_correction(setup: tuple[TestClient, FakePublisher]) -> None:
    client, publisher = setup
    client.post("/fhir/Observation", content=orjson.dumps(hr(95)), headers=FHIR)
    publisher.fail = True
    assert client.post("/fhir/Observation", content=orjson.dumps(hr(140)), headers=FHIR).status_code == 503
    publisher.fail = False
    assert client.post("/fhir/Observation", content=orjson.dumps(hr(140)), headers=FHIR).status_code == 200
    assert [type(e).__name__ for e in publisher.published][1:] == ["ObservationRetracted", "ObservationRecorded"]
