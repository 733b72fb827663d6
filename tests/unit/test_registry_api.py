"""The REST API (FastAPI TestClient, no Kafka): bearer tokens and roles, refusals as 403 with a reason, upload,
artifact download, the production endpoint, the four-eyes rule over HTTP, audit verification, OpenAPI."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from tests.pg import make_package
from vigil_registry.app import create_app
from vigil_registry.artifacts import file_sha256, pack_folder
from vigil_registry.settings import DEMO_TOKENS, Settings

TOKENS = {
    "scientist-token-0123456789abcdef": {"user": "dana", "role": "data_scientist"},
    "approver-token-0123456789abcdefg": {"user": "dr-alice", "role": "clinical_approver"},
    "approver2-token-0123456789abcdef": {"user": "dr-bob", "role": "clinical_approver"},
    "dual-scientist-0123456789abcdefg": {"user": "dr-carol", "role": "data_scientist"},
    "dual-approver-0123456789abcdefgh": {"user": "dr-carol", "role": "clinical_approver"},
    "viewer-token-0123456789abcdefghi": {"user": "vic", "role": "viewer"},
    "admin-token-0123456789abcdefghij": {"user": "root-admin", "role": "admin"},
    "mallory-scientist-0123456789abcd": {"user": "Mallory ", "role": "data_scientist"},
    "mallory-approver-0123456789abcde": {"user": "mallory", "role": "clinical_approver"},
}
SCI, APP, APP2, DUAL_SCI, DUAL_APP, VIEW, ADMIN, MALLORY_SCI, MALLORY_APP = (
    {"Authorization": f"Bearer {t}"} for t in TOKENS
)


def settings_for(tmp_path: Path, **extra: Any) -> Settings:
    fields: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'api.db'}",
        "artifact_root": tmp_path / "artifacts",
        "public_url": "http://registry.test:8005",
        "tokens": TOKENS,
        "kafka_enabled": False,
        "development": False,
    }
    fields.update(extra)
    return Settings(**fields)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path))) as c:
        yield c


def upload(
    client: TestClient, tmp_path: Path, version: str, headers: dict[str, str] = SCI, name: str = "sepsis"
) -> Any:
    archive = pack_folder(make_package(tmp_path, name=name, version=version))
    return client.post(
        f"/models/{name}/versions",
        content=archive,
        headers={**headers, "Content-Type": "application/gzip"},
        params={"tag": ["api"]},
    )


def test_requests_need_a_valid_bearer_token(client: TestClient) -> None:
    assert client.get("/models").status_code == 401
    response = client.get("/models", headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert client.get("/models", headers=VIEW).json() == []
    assert client.get("/health").status_code == 200


def test_upload_show_download_and_production(client: TestClient, tmp_path: Path) -> None:
    created = upload(client, tmp_path, "1")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["stage"] == "registered" and "api" in body["tags"]
    assert body["artifact_url"] == "http://registry.test:8005/models/sepsis/versions/1/artifact"
    assert client.get("/models/sepsis/production", headers=VIEW).status_code == 404

    download = client.get("/models/sepsis/versions/1/artifact", headers=VIEW)
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/gzip"
    assert download.headers["x-artifact-sha256"] == body["artifact_sha256"]
    extracted = tmp_path / "downloaded"
    with tarfile.open(fileobj=io.BytesIO(download.content)) as archive:
        archive.extractall(extracted, filter="data")
    assert file_sha256(extracted / "model.onnx") == body["artifact_sha256"]
    assert sorted(p.name for p in extracted.iterdir()) == ["card.json", "card.md", "manifest.json", "model.onnx"]

    for path, payload, headers in [
        ("/models/sepsis/versions/1/stage", {"to": "shadow"}, SCI),
        ("/models/sepsis/versions/1/proposals", {"reason": "first version"}, SCI),
        ("/models/sepsis/versions/1/approve", {"reason": "ok"}, APP),
        ("/models/sepsis/versions/1/promote", {"reason": "go live"}, APP),
    ]:
        response = client.post(path, json=payload, headers=headers)
        assert response.status_code in (200, 201), (path, response.text)
    production = client.get("/models/sepsis/production", headers=VIEW).json()
    assert production["version"] == "1" and production["stage"] == "production"
    assert client.get("/models/sepsis", headers=VIEW).json()["production_version"] == "1"


def test_uploads_are_checked(client: TestClient, tmp_path: Path) -> None:
    assert upload(client, tmp_path, "1", headers=VIEW).status_code == 403
    wrong_name = upload(client, tmp_path, "1", name="other")
    assert wrong_name.status_code == 201
    mismatch = client.post(
        "/models/sepsis/versions",
        content=pack_folder(make_package(tmp_path, name="other", version="2")),
        headers={**SCI, "Content-Type": "application/gzip"},
    )
    assert mismatch.status_code == 409
    garbage = client.post("/models/sepsis/versions", content=b"not an archive", headers=SCI)
    assert garbage.status_code == 422
    assert "neither" in garbage.json()["detail"][0]["msg"]  # every 422 in FastAPI's validation shape


def test_oversized_uploads_are_refused(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path, max_upload_bytes=100))) as c:
        response = upload(c, tmp_path, "1")
        assert response.status_code == 413
        streamed = c.post("/models/sepsis/versions", content=iter([b"x" * 60, b"y" * 60]), headers=SCI)
        assert streamed.status_code == 413


def test_refusals_are_403_with_their_reason_and_the_four_eyes_rule_holds(client: TestClient, tmp_path: Path) -> None:
    upload(client, tmp_path, "1")
    forbidden = client.post("/models/sepsis/versions/1/stage", json={"to": "shadow"}, headers=APP)
    assert forbidden.status_code == 403
    assert "may not stage" in forbidden.json()["detail"]
    client.post("/models/sepsis/versions/1/stage", json={"to": "shadow"}, headers=SCI)
    assert client.post("/models/sepsis/versions/1/proposals", json={}, headers=DUAL_SCI).status_code == 201
    same_person = client.post("/models/sepsis/versions/1/approve", json={}, headers=DUAL_APP)
    assert same_person.status_code == 403
    assert "four-eyes" in same_person.json()["detail"]
    not_approved = client.post("/models/sepsis/versions/1/promote", json={}, headers=APP)
    assert not_approved.status_code == 403
    assert client.post("/models/sepsis/versions/1/approve", json={}, headers=ADMIN).status_code == 403
    assert client.post("/models/sepsis/versions/1/approve", json={}, headers=APP2).status_code == 200
    assert client.post("/models/sepsis/versions/1/promote", json={}, headers=APP).status_code == 200


def test_mallory_with_a_capital_and_a_trailing_space_is_still_mallory(client: TestClient, tmp_path: Path) -> None:
    upload(client, tmp_path, "1")
    client.post("/models/sepsis/versions/1/stage", json={"to": "shadow"}, headers=SCI)
    assert client.post("/models/sepsis/versions/1/proposals", json={}, headers=MALLORY_SCI).status_code == 201
    own = client.post("/models/sepsis/versions/1/approve", json={}, headers=MALLORY_APP)
    assert own.status_code == 403 and "four-eyes" in own.json()["detail"]
    assert client.post("/models/sepsis/versions/1/approve", json={}, headers=APP2).status_code == 200


def test_forbidden_transition_is_409_and_ineligible_promotion_carries_the_report(
    client: TestClient, tmp_path: Path
) -> None:
    upload(client, tmp_path, "1")
    response = client.post("/models/sepsis/versions/1/stage", json={"to": "production"}, headers=SCI)
    assert response.status_code == 409
    for step in (
        ("/models/sepsis/versions/1/stage", {"to": "shadow"}, SCI),
        ("/models/sepsis/versions/1/proposals", {}, SCI),
        ("/models/sepsis/versions/1/approve", {}, APP),
        ("/models/sepsis/versions/1/promote", {}, APP),
    ):
        client.post(step[0], json=step[1], headers=step[2])
    upload(client, tmp_path, "2")
    client.post("/models/sepsis/versions/2/stage", json={"to": "shadow"}, headers=SCI)
    client.post("/models/sepsis/versions/2/proposals", json={}, headers=SCI)
    client.post("/models/sepsis/versions/2/approve", json={}, headers=APP)
    refused = client.post("/models/sepsis/versions/2/promote", json={}, headers=APP)
    assert refused.status_code == 409
    assert refused.json()["report"]["failed"] == ["comparison"]
    report = client.get("/models/sepsis/versions/2/eligibility", headers=VIEW).json()
    assert report["eligible"] is False
    retire = client.post("/models/sepsis/versions/1/retire", json={"reason": "x"}, headers=ADMIN)
    assert retire.status_code == 409


def test_policy_audit_and_verification_endpoints(client: TestClient, tmp_path: Path) -> None:
    upload(client, tmp_path, "1")
    assert client.put("/models/sepsis/policy", json={"auto_promote": True}, headers=APP).status_code == 403
    assert client.put("/models/sepsis/policy", json={"nonsense": 1}, headers=ADMIN).status_code == 422
    updated = client.put("/models/sepsis/policy", json={"min_shadow_hours": 1, "auto_rollback": True}, headers=ADMIN)
    assert updated.status_code == 200
    policy = client.get("/models/sepsis/policy", headers=VIEW).json()
    assert policy["auto_rollback"] is True and policy["max_calibration_error"] == 0.1
    entries = client.get("/audit", params={"model": "sepsis"}, headers=VIEW).json()
    assert [e["action"] for e in entries] == ["registered", "policy_changed"]
    assert entries[1]["evidence"]["after"]["min_shadow_hours"] == 1
    assert client.get("/audit/verify", headers=VIEW).json() == {
        "ok": True,
        "entries": 2,
        "first_bad_seq": None,
        "problem": "",
    }


def test_openapi_documents_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/models",
        "/models/{name}/versions",
        "/models/{name}/versions/{version}/artifact",
        "/models/{name}/production",
        "/models/{name}/versions/{version}/promote",
        "/models/{name}/rollback",
        "/models/{name}/versions/{version}/approve",
        "/audit/verify",
    ):
        assert path in paths


def test_no_default_secret_outside_development(tmp_path: Path) -> None:
    for token in DEMO_TOKENS:
        with pytest.raises(ValidationError, match="refused outside development"):
            settings_for(tmp_path, tokens={token: {"user": "x", "role": "admin"}})
    with pytest.raises(ValidationError, match="placeholder"):
        settings_for(tmp_path, tokens={"changethis": {"user": "x", "role": "admin"}})
    with pytest.raises(ValidationError, match="shorter than") as short:
        settings_for(tmp_path, tokens={"short-token": {"user": "x", "role": "admin"}})
    assert "short-token" not in str(short.value)  # a refused token is not echoed into logs
    production = settings_for(tmp_path, tokens={})
    assert production.effective_tokens() == {}
    with TestClient(create_app(production)) as c:
        assert c.get("/models", headers={"Authorization": "Bearer dev-admin-token"}).status_code == 401


def test_development_mode_accepts_the_documented_demo_tokens(tmp_path: Path) -> None:
    # Development mode is the subject of this test: the documented demo tokens work there and only there.
    settings = settings_for(tmp_path, tokens={}, development=True)
    with TestClient(create_app(settings)) as c:
        assert c.get("/models").status_code == 200  # anonymous reads in development
        # A demo token, on purpose: that it works in development mode is what this test checks.
        response = upload(c, tmp_path, "1", headers={"Authorization": "Bearer dev-scientist-token"})
        assert response.status_code == 201
        assert response.json()["created_by"] == "dana-scientist"
