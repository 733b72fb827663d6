"""The FHIR REST endpoints with a fake publisher: answers, per-entry outcomes, size and type limits, no PHI logged."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from vigil_contracts.events import Event
from vigil_ingest.api import mount_fhir
from vigil_ingest.core import IngestCore
from vigil_ingest.settings import Settings
from vigil_runtime.auth import Authenticator, Grant, TokenTable
from vigil_runtime.logging import JsonFormatter
from vigil_runtime.metrics import ServiceMetrics

TESTDATA = Path(__file__).resolve().parents[1] / "testdata" / "fhir"
FHIR = {"content-type": "application/fhir+json"}
EHR_TOKEN = "ehr-token-for-the-unit-tests-0123456789"
READER_TOKEN = "reader-token-for-the-unit-tests-0123456"


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
    settings = Settings(max_body_bytes=4096 * 4, topic_prefix="unit.")
    publisher = FakePublisher()
    core = IngestCore(settings, publisher, ServiceMetrics("ingest"))  # type: ignore[arg-type]
    app = FastAPI()
    app.state.auth = Authenticator(
        TokenTable(
            {
                EHR_TOKEN: Grant(user="ehr", scopes=["system/*.write"]),
                READER_TOKEN: Grant(user="reader", scopes=["system/*.read"]),
            }
        )
    )
    mount_fhir(app, core, settings)
    return TestClient(app, headers={"Authorization": f"Bearer {EHR_TOKEN}"}), publisher


@pytest.mark.parametrize("path", ["/fhir", "/fhir/Observation", "/fhir/Observation/hr-1", "/"])
def test_writes_without_credentials_are_401_operation_outcomes(
    setup: tuple[TestClient, FakePublisher], path: str
) -> None:
    client, publisher = setup
    method = "PUT" if path.endswith("hr-1") else "POST"
    body = orjson.dumps(observation() if "Observation" in path else {"resourceType": "Bundle", "type": "batch"})
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer not-a-known-token-at-all-000"}):
        r = client.request(method, path, content=body, headers={**FHIR, **headers})
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('Bearer realm="vigil"')
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "login"
    assert publisher.published == []


def test_a_token_without_the_write_scope_is_403(setup: tuple[TestClient, FakePublisher]) -> None:
    client, publisher = setup
    r = client.post(
        "/fhir/Observation",
        content=orjson.dumps(observation()),
        headers={**FHIR, "Authorization": f"Bearer {READER_TOKEN}"},
    )
    assert r.status_code == 403
    issue = r.json()["issue"][0]
    assert issue["code"] == "forbidden" and "system/Observation.write" in issue["diagnostics"]
    assert publisher.published == []


def observation(**overrides: Any) -> dict[str, Any]:
    base = {
        "resourceType": "Observation",
        "id": "hr-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2026-01-01T10:00:00Z",
        "valueQuantity": {"value": 90, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_bundle_gets_per_entry_outcomes(setup: tuple[TestClient, FakePublisher]) -> None:
    client, publisher = setup
    bundle = json.loads((TESTDATA / "icu-bundle.json").read_text())
    bundle["entry"].append({"resource": observation(id="bad", valueQuantity={"value": 900, "unit": "/min"})})
    bundle["entry"].append({"resource": observation(id="weight", code={"coding": [{"code": "29463-7"}]})})
    r = client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    # the Patient entry is linkage only: its age and sex are published with the encounter's entry
    assert statuses == ["201 Created", "201 Created", "200 OK", "201 Created", "422 Unprocessable Entity", "200 OK"]
    bad = body["entry"][4]["response"]["outcome"]["issue"][0]
    assert bad["severity"] == "error" and "heart_rate outside plausible range" in bad["diagnostics"]
    assert len(publisher.published) == 5  # encounter, heart rate, age, sex, lactate; nothing for the bad ones
    assert {getattr(e, "type", None) for e in publisher.published} == {"encounter.recorded", "observation.recorded"}
    again = client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR).json()
    assert [e["response"]["status"] for e in again["entry"]][:4] == ["200 OK"] * 4  # duplicates: nothing new
    assert "already published" in again["entry"][0]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert len(publisher.published) == 5


def test_single_resource_created_then_duplicate(setup: tuple[TestClient, FakePublisher]) -> None:
    client, publisher = setup
    r = client.post("/fhir/Observation", content=orjson.dumps(observation()), headers=FHIR)
    assert r.status_code == 201 and r.headers["location"] == "Observation/hr-1"
    assert r.json()["resourceType"] == "OperationOutcome"
    r = client.post(
        "/fhir/Observation", content=orjson.dumps(observation()), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    assert len(publisher.published) == 1


def test_put_amends(setup: tuple[TestClient, FakePublisher]) -> None:
    client, publisher = setup
    amended = observation(status="amended", meta={"versionId": "2"})
    del amended["id"]
    r = client.put("/fhir/Observation/hr-1", content=orjson.dumps(amended), headers=FHIR)
    assert r.status_code == 201
    assert [getattr(e, "type", None) for e in publisher.published] == ["observation.retracted", "observation.recorded"]
    r = client.put("/fhir/Observation/other", content=orjson.dumps(observation()), headers=FHIR)
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [
        ("/fhir/Observation", b"{not json", FHIR, 400, "invalid"),
        ("/fhir/Observation", b"[]", FHIR, 400, "invalid"),
        ("/fhir/Observation", orjson.dumps({"id": "x"}), FHIR, 400, "required"),
        ("/fhir/Observation", orjson.dumps(observation(resourceType="Patient")), FHIR, 400, "invalid"),
        ("/fhir/Observation", orjson.dumps(observation()), {"content-type": "text/plain"}, 415, "not-supported"),
        ("/fhir/Observation", orjson.dumps(observation(effectiveDateTime=None)), FHIR, 422, "required"),
        ("/fhir/Medication", orjson.dumps(observation()), FHIR, 404, "not-supported"),
        ("/fhir", orjson.dumps(observation()), FHIR, 400, "not-supported"),
        ("/fhir", b"x" * 20000, FHIR, 413, "too-costly"),
    ],
)
def test_bad_input_gets_an_operation_outcome_and_publishes_nothing(
    setup: tuple[TestClient, FakePublisher], path: str, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    client, publisher = setup
    r = client.post(path, content=body, headers=headers)
    assert r.status_code == status
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == code and outcome["issue"][0]["diagnostics"]
    assert publisher.published == []


def test_broker_failure_is_503_and_not_remembered(setup: tuple[TestClient, FakePublisher]) -> None:
    client, publisher = setup
    publisher.fail = True
    assert client.post("/fhir/Observation", content=orjson.dumps(observation()), headers=FHIR).status_code == 503
    publisher.fail = False
    assert client.post("/fhir/Observation", content=orjson.dumps(observation()), headers=FHIR).status_code == 201
    assert len(publisher.published) == 1


def test_no_phi_in_logs(setup: tuple[TestClient, FakePublisher], caplog: pytest.LogCaptureFixture) -> None:
    client, publisher = setup
    caplog.set_level(logging.DEBUG)
    publisher.fail = True
    bundle = (TESTDATA / "icu-bundle.json").read_bytes()
    client.post("/fhir", content=bundle, headers=FHIR)
    publisher.fail = False
    client.post("/fhir", content=bundle, headers=FHIR)
    formatter = JsonFormatter()
    # The time stamp is left out: its milliseconds ("...:20.112") matched "112" about once in a hundred runs.
    lines = [orjson.loads(formatter.format(record)) for record in caplog.records]
    text = "\n".join(orjson.dumps({k: v for k, v in line.items() if k != "ts"}).decode() for line in lines)
    assert caplog.records  # the broker failure was logged
    for secret in ("Doe", "Jane", "MRN-0001", "1960-05-17", "pat-icu-1", "enc-icu-1", "112", "4.1"):
        assert secret not in text


def test_root_is_a_fhir_base_too_and_metadata(setup: tuple[TestClient, FakePublisher]) -> None:
    client, publisher = setup
    r = client.post("/", content=(TESTDATA / "icu-bundle.json").read_bytes(), headers=FHIR)
    assert r.status_code == 200 and r.json()["type"] == "transaction-response"
    assert client.post("/Observation", content=orjson.dumps(observation(id="root")), headers=FHIR).status_code == 201
    assert client.get("/fhir/metadata").json()["resourceType"] == "CapabilityStatement"
    assert len(publisher.published) == 6


async def test_raw_records_are_processed_or_parked_with_reasons() -> None:
    from types import SimpleNamespace

    from vigil_runtime.kafka import Parsed, Rejected

    publisher = FakePublisher()
    core = IngestCore(Settings(topic_prefix="unit."), publisher, ServiceMetrics("ingest"))  # type: ignore[arg-type]
    bundle = json.loads((TESTDATA / "icu-bundle.json").read_text())
    partial = json.loads((TESTDATA / "icu-bundle.json").read_text())
    partial["entry"][0]["resource"]["valueQuantity"]["value"] = 999
    ignored = {"resourceType": "Practitioner", "id": "dr"}
    records = [SimpleNamespace(offset=i) for i in range(3)]
    items = [Parsed(records[0], bundle), Parsed(records[1], partial), Parsed(records[2], ignored)]
    failures = await core.handle_records(items)  # type: ignore[arg-type]
    assert all(isinstance(rejected, Rejected) for _, rejected in failures)
    assert [(r.offset, rejected.reason, rejected.resource_ids) for r, rejected in failures] == [  # type: ignore[union-attr]
        (
            1,
            "partly processed (6 canonical events mapped): Observation/7a0e0c55-0000-4000-8000-000000000001: "
            "heart_rate outside plausible range [10, 300] /min",
            ["Observation/7a0e0c55-0000-4000-8000-000000000001"],
        )
    ]
    assert len(publisher.published) == 5  # the partial bundle's good events are the same ids: deduped


def test_strict_transactions_refuse_the_whole_bundle() -> None:
    settings = Settings(topic_prefix="unit.", strict_transactions=True)
    publisher = FakePublisher()
    core = IngestCore(settings, publisher, ServiceMetrics("ingest"))  # type: ignore[arg-type]
    app = FastAPI()
    app.state.auth = Authenticator(TokenTable({EHR_TOKEN: Grant(user="ehr", scopes=["system/Observation.write"])}))
    mount_fhir(app, core, settings)
    client = TestClient(app, headers={"Authorization": f"Bearer {EHR_TOKEN}"})
    bundle = json.loads((TESTDATA / "icu-bundle.json").read_text())
    bundle["entry"].append({"resource": observation(id="bad", valueQuantity={"value": 900, "unit": "/min"})})
    r = client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR)
    assert r.status_code == 422 and "Observation/bad" in r.json()["issue"][0]["diagnostics"]
    assert publisher.published == []
    bundle["type"] = "batch"  # a batch is per entry even in strict mode
    assert client.post("/fhir", content=orjson.dumps(bundle), headers=FHIR).status_code == 200
    assert len(publisher.published) == 5


def test_every_kit_bundle_type_gets_one_outcome_per_entry(
    setup: tuple[TestClient, FakePublisher], shared_kit: Path
) -> None:
    client, _ = setup
    seen_types: set[str | None] = set()
    for path in sorted((shared_kit / "fhir" / "hl7-examples").rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if not isinstance(data, dict) or data.get("resourceType") != "Bundle" or path.stat().st_size > 16_000:
            continue
        seen_types.add(data.get("type"))
        r = client.post("/fhir", content=path.read_bytes(), headers=FHIR)
        assert r.status_code == 200, path.name
        assert len(r.json()["entry"]) == len(data.get("entry", [])), path.name
    assert {"transaction", "batch", "collection", "searchset", "message", None} <= seen_types
