"""Every service's HTTP app as built for production (development mode off, no lifespan: no broker needed):
patient-data routes refuse callers without credentials, operations stay open, docs load nothing from a CDN."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

TOKENS = {
    "ehr-writer-token-0123456789abcdef": {"user": "ehr", "scopes": ["system/Observation.write"]},
    "reader-token-0123456789abcdefghij": {"user": "analyst", "scopes": ["system/*.read"]},
}
WRITER, READER = ({"Authorization": f"Bearer {t}"} for t in TOKENS)
COMMON: dict[str, Any] = {"kafka_bootstrap_servers": "127.0.0.1:9", "auth_tokens": TOKENS, "development": False}


def ingest(tmp_path: Path) -> FastAPI:
    from vigil_ingest.app import create_app
    from vigil_ingest.settings import Settings

    return create_app(Settings(**COMMON))


def scorer(tmp_path: Path) -> FastAPI:
    from vigil_scorer.app import create_app
    from vigil_scorer.settings import Settings

    return create_app(Settings(**COMMON, model_cache_dir=tmp_path))


def shadow(tmp_path: Path) -> FastAPI:
    from vigil_shadow.app import create_app
    from vigil_shadow.settings import Settings

    return create_app(Settings(**COMMON, model_cache_dir=tmp_path))


def drift(tmp_path: Path) -> FastAPI:
    from vigil_drift.app import create_app
    from vigil_drift.settings import Settings

    return create_app(Settings(**COMMON))


def registry(tmp_path: Path) -> FastAPI:
    from vigil_registry.app import create_app
    from vigil_registry.settings import Settings

    return create_app(
        Settings(
            **COMMON,
            database_url=f"sqlite:///{tmp_path / 'r.db'}",
            artifact_root=tmp_path / "a",
            kafka_enabled=False,
        )
    )


APPS: dict[str, Callable[[Path], FastAPI]] = {
    "ingest": ingest,
    "scorer": scorer,
    "shadow": shadow,
    "drift": drift,
    "registry": registry,
}

PROTECTED = [
    ("ingest", "POST", "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": []}),
    ("ingest", "POST", "/fhir/Observation", {"resourceType": "Observation"}),
    ("ingest", "PUT", "/fhir/Observation/x", {"resourceType": "Observation"}),
    ("scorer", "POST", "/predict", {"age": 70.0}),
    ("shadow", "POST", "/comparisons/publish", None),
    ("shadow", "GET", "/comparisons", None),
    ("shadow", "POST", "/replays", {"model": "sepsis", "version": "2", "from": "2026-01-01", "to": "2026-01-02"}),
    ("shadow", "GET", "/replays", None),
    ("drift", "GET", "/drift", None),
    ("registry", "GET", "/models", None),
    ("registry", "POST", "/models/sepsis/versions/1/approve", {}),
]


@pytest.mark.parametrize(("service", "method", "path", "body"), PROTECTED)
def test_without_credentials_patient_data_routes_answer_401(
    tmp_path: Path, service: str, method: str, path: str, body: Any
) -> None:
    client = TestClient(APPS[service](tmp_path))  # no context manager: no lifespan, so no broker
    for headers in ({}, {"Authorization": "Bearer not-a-known-token-000000000"}):
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (service, path, r.text)
        assert r.headers["www-authenticate"].startswith('Bearer realm="vigil"')
        reason = r.json()["issue"][0]["diagnostics"] if service == "ingest" else r.json()["detail"]
        assert "bearer token" in reason


@pytest.mark.parametrize(
    ("service", "method", "path", "headers", "scope"),
    [
        ("shadow", "POST", "/comparisons/publish", READER, "system/ComparisonSummary.write"),
        ("shadow", "GET", "/comparisons", WRITER, "system/*.read"),
        ("drift", "GET", "/drift", WRITER, "system/*.read"),
        ("scorer", "POST", "/predict", WRITER, "system/RiskAssessment.read"),
        ("ingest", "POST", "/fhir/Patient", WRITER, "system/Patient.write"),
    ],
)
def test_a_valid_token_without_the_scope_is_403_naming_it(
    tmp_path: Path, service: str, method: str, path: str, headers: dict[str, str], scope: str
) -> None:
    client = TestClient(APPS[service](tmp_path))
    r = client.request(method, path, json={}, headers=headers)
    assert r.status_code == 403
    assert f'scope="{scope}"' in r.headers["www-authenticate"]


def test_with_the_scope_the_route_is_reached(tmp_path: Path) -> None:
    # No model is loaded without the lifespan: past authentication, the scorer says so (503), not 401/403.
    assert TestClient(scorer(tmp_path)).post("/predict", json={}, headers=READER).status_code == 503
    assert TestClient(drift(tmp_path)).get("/drift", headers=READER).status_code == 200


@pytest.mark.parametrize("service", list(APPS))
def test_operations_stay_open_and_docs_come_from_the_service_itself(tmp_path: Path, service: str) -> None:
    client = TestClient(APPS[service](tmp_path))
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn." not in html and "fonts.googleapis" not in html and "https://" not in html.split("<body")[0]
        assert "/docs-assets/" in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        r = client.get(f"/docs-assets/{asset}")
        assert r.status_code == 200 and len(r.content) > 100_000


def test_operations_can_be_protected(tmp_path: Path) -> None:
    from vigil_drift.app import create_app
    from vigil_drift.settings import Settings

    client = TestClient(create_app(Settings(**COMMON, auth_protect_operations=True)))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=READER).status_code == 200


WRONG_METHODS = [
    # The root aliases' /{type}/{id} takes this path too; as in OpenAPI, the concrete path wins over
    # /fhir/{resource_type} (whose POST would match it).
    ("ingest", "PUT", "/fhir/metadata", {"GET"}),
    ("ingest", "POST", "/fhir/metadata", {"GET"}),
    ("ingest", "POST", "/health", {"GET"}),  # ... and their /{type} this one
    ("ingest", "DELETE", "/fhir/Observation/x", {"PUT"}),
    ("scorer", "GET", "/predict", {"POST"}),
    ("shadow", "OPTIONS", "/replays", {"GET", "POST"}),  # two routes at one path: both methods
    ("drift", "DELETE", "/drift", {"GET"}),
    ("registry", "PATCH", "/models/sepsis/policy", {"GET", "PUT"}),
]


@pytest.mark.parametrize(("service", "method", "path", "allow"), WRONG_METHODS)
def test_a_wrong_method_is_405_with_allow_before_authentication(
    tmp_path: Path, service: str, method: str, path: str, allow: set[str]
) -> None:
    # No credentials: a wrong method is refused for what it is, not as an unauthenticated call (401).
    answer = TestClient(APPS[service](tmp_path)).request(method, path)
    assert answer.status_code == 405, answer.text
    assert set(answer.headers["Allow"].split(", ")) == allow


def test_undocumented_aliases_still_answer(tmp_path: Path) -> None:
    # The FHIR routes at the root (integrations configured with the server's address as their base) are not
    # documented: the 405 rule leaves paths no documented route matches to them.
    client = TestClient(ingest(tmp_path))
    assert client.post("/Observation", json={"resourceType": "Observation"}).status_code == 401
    assert client.put("/Observation/x", json={"resourceType": "Observation"}).status_code == 401
