"""Every route of every service declares the statuses it answers, each with a body schema (walks the routes).

A route that raises a status (``HTTPException(409, ...)``, ``FhirError(413, ...)``, ``invalid(...)`` for 422,
a registry error), directly, in a helper of its module or in one of its dependencies, must list it in its
OpenAPI document; an authenticated route lists 401 and 403; a route with parameters or a body lists 422, one
with a body 400. So the next route cannot forget. The schemathesis run
(``tests/integration/test_openapi_contracts.py``) checks the same against what the running services answer.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from tests.unit.test_http_auth import APPS
from vigil_ingest.api.deps import fhir_write
from vigil_registry.api.deps import get_principal
from vigil_registry.errors import Conflict, InvalidInput, NotFound, RegistryError
from vigil_runtime.auth import current_principal, operations_access

AUTH_DEPENDENCIES = (current_principal, get_principal, fhir_write, operations_access)
RAISES = [
    re.compile(r"HTTPException\(\s*(?:status_code=)?(\d{3})"),
    re.compile(r"FhirError\(\s*(\d{3})"),
    re.compile(r"status_code=(\d{3})"),
]


def registry_errors() -> dict[str, int]:
    """Every registry error class by name, with its status (read when the apps are built: routes define some)."""
    found: dict[str, int] = {}
    pending = list(RegistryError.__subclasses__())
    while pending:
        cls = pending.pop()
        found[cls.__name__] = int(cls.status)
        pending.extend(cls.__subclasses__())
    return found


LIFECYCLE = {NotFound.status, Conflict.status, InvalidInput.status}
"""What a registry decision (a POST) may refuse with (the lifecycle module raises these for unknown versions, forbidden
transitions, ineligible promotions and invalid input)."""


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def _source(function: Callable[..., Any], seen: set[Any]) -> str:
    """The function's source and that of the functions of its own package it calls (transitively).

    Its package, not only its module: a route may hand its body to a reader of the service's ``deps`` module
    (ingest's ``with_fhir_json``, whose 413 and 415 the route must document) or define its handler inside it.
    """
    function = inspect.unwrap(function)
    if function in seen or not (inspect.isfunction(function) or inspect.ismethod(function)):
        return ""
    seen.add(function)
    try:
        text = inspect.getsource(function)
    except (OSError, TypeError):
        return ""
    module = inspect.getmodule(function)
    package = function.__module__.split(".")[0]
    for name in set(re.findall(r"\b([A-Za-z_]\w*)\(", text)):
        called = getattr(module, name, None)
        if inspect.isfunction(called) and called.__module__.split(".")[0] == package:
            text += _source(called, seen)
    return text


def raised_statuses(route: Any) -> set[int]:
    """Statuses the route's code and dependencies raise, read from their source."""
    seen: set[Any] = set()
    text = "".join(_source(call, seen) for call in _calls(route.dependant))
    statuses = {int(s) for pattern in RAISES for s in pattern.findall(text)}
    if re.search(r"\binvalid\(", text):
        statuses.add(422)
    statuses |= {status for name, status in registry_errors().items() if re.search(rf"\b{name}\(", text)}
    if "registry.lifecycle." in text and "POST" in route.methods:
        statuses |= LIFECYCLE
    if "registry.queries." in text and "{name}" in route.path_format:
        statuses.add(NotFound.status)
    return statuses - {200, 201}


def authenticated(route: Any) -> bool:
    return any(call in AUTH_DEPENDENCIES for call in _calls(route.dependant))


def api_routes(app: FastAPI) -> Iterator[Any]:
    """Every API route as served (included routers resolved: prefixes, their dependencies), in the schema."""
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and route.include_in_schema:
            yield route


def routes(app: FastAPI) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    document = app.openapi()
    for route in api_routes(app):
        for method in route.methods:
            yield route, method, document["paths"][route.path_format][method.lower()]


@pytest.fixture(scope="module", params=list(APPS))
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return APPS[request.param](tmp_path_factory.mktemp(request.param))


def test_every_status_a_route_raises_is_documented(app: FastAPI) -> None:
    missing: list[str] = []
    for route, method, operation in routes(app):
        documented = {int(status) for status in operation["responses"]}
        needed = raised_statuses(route)
        if authenticated(route):
            needed |= {401, 403}
        if route.dependant.path_params or route.dependant.query_params or route.dependant.body_params:
            needed.add(422)
        if route.dependant.body_params:
            needed.add(400)  # FastAPI answers 400 for a body it cannot parse (bytes that are not UTF-8 JSON)
        if lacking := needed - documented:
            missing.append(f"{method} {route.path_format}: {sorted(lacking)} not in {sorted(documented)}")
    assert not missing, "\n".join(missing)


def test_every_documented_answer_has_a_body_schema(app: FastAPI) -> None:
    empty: list[str] = []
    for route, method, operation in routes(app):
        for status, response in operation["responses"].items():
            content = response.get("content") or {}
            if not content or any(not media.get("schema") for media in content.values()):
                empty.append(f"{method} {route.path_format} {status}: {content}")
    assert not empty, "\n".join(empty)


def test_metrics_are_documented_as_prometheus_text_not_json(app: FastAPI) -> None:
    answer = app.openapi()["paths"]["/metrics"]["get"]["responses"]["200"]
    assert list(answer["content"]) == ["text/plain"]


def test_the_walk_sees_what_routes_raise() -> None:
    # The walker itself: the scorer's 503 and 422, ingest's 413/415 (from the body dependency) and 503 (a helper).
    scorer, ingest = APPS["scorer"](Path("/nonexistent")), APPS["ingest"](Path("/nonexistent"))
    predict = next(r for r in api_routes(scorer) if r.path_format == "/predict")
    assert {422, 503} <= raised_statuses(predict) and authenticated(predict)
    post = next(r for r in api_routes(ingest) if r.path_format == "/fhir/{resource_type}")
    assert len(list(routes(ingest))) >= 6 and len(list(routes(APPS["registry"](Path("/nonexistent"))))) > 20
    assert {400, 404, 413, 415, 503} <= raised_statuses(post) and authenticated(post)


@pytest.mark.parametrize(
    "query",
    [
        {"to": "0.5"},  # pydantic alone reads a number as Unix time: 1970, silently
        {"from": "1767225600"},
        {"from": "2026-01-01T08:00:00"},  # naive: compared with aware data times it would be a 500
        {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},  # an empty window, backwards
    ],
)
def test_shadow_refuses_a_window_that_is_not_iso_date_times(query: dict[str, str]) -> None:
    from fastapi.testclient import TestClient

    from tests.unit.test_http_auth import READER

    client = TestClient(APPS["shadow"](Path("/nonexistent")))
    answer = client.get("/comparisons", params=query, headers=READER)
    assert answer.status_code == 422, answer.text
    assert isinstance(answer.json()["detail"], list) and answer.json()["detail"][0]["msg"]
