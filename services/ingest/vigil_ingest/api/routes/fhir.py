"""The FHIR REST endpoints: POST a Bundle to the base, POST/PUT a resource to its type, the CapabilityStatement.

Routes parse and hand off: the caller's scope is checked by the ``FhirWriter`` dependency before the body is read,
the body is read by ``with_fhir_json`` and handed to the route's handler with the app's core; mapping and
publishing are the core's, the answers (OperationOutcome, batch/transaction-response) ``vigil_ingest.fhir_http``'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request, Response

from vigil_contracts.events import Event
from vigil_ingest.api import examples
from vigil_ingest.api.deps import (
    FHIR_JSON,
    WRITE_RESPONSES,
    BundleResponse,
    FhirError,
    FhirJSONResponse,
    FhirWriter,
    OperationOutcome,
    fhir_response,
    ingest_core,
    ingest_settings,
    outcomes,
    with_fhir_json,
)
from vigil_ingest.core import IngestCore, PublishTimeout, Undo
from vigil_ingest.fhir_http import entry_status, location, operation_outcome, rejection_issues
from vigil_ingest.large_body import release
from vigil_ingest.mapping import MapResult
from vigil_ingest.settings import Settings

SERVICE = "ingest"
RESOURCE_TYPES = frozenset({"Observation", "Patient", "Encounter", "Location", "DiagnosticReport", "Bundle"})

log = logging.getLogger(__name__)

ResourceType = Annotated[str, Path(examples=[examples.RESOURCE_TYPE])]
ResourceId = Annotated[str, Path(examples=[examples.RESOURCE_ID])]

router = APIRouter(default_response_class=FhirJSONResponse)
base_router = APIRouter(default_response_class=FhirJSONResponse)
"""``POST <base>`` without a trailing slash (only where the base is not the root)."""


async def ingest(core: IngestCore, settings: Settings, payload: Any, expected_type: str | None) -> Response:
    """Map one request's payload, publish its events (acknowledged), answer as FHIR."""
    started = time.perf_counter()
    if not isinstance(payload, dict):
        raise FhirError(400, "invalid", "body is not a JSON object (a FHIR resource or Bundle)")
    rtype = payload.get("resourceType")
    if not isinstance(rtype, str):
        raise FhirError(400, "required", "missing resourceType")
    if expected_type is not None and rtype != expected_type:
        raise FhirError(400, "invalid", f"resourceType '{rtype[:40]}' does not match the URL's '{expected_type}'")
    result, undo = await core.map_request(payload)  # in the mapping thread: the loop keeps answering
    core.count_result("http", result)
    if result.counts.get("rejected_payload"):
        return fhir_response(operation_outcome(rejection_issues(result.rejections)), 400)
    if rtype == "Bundle":
        response = await _bundle(core, settings, result, undo)
    else:
        response = await _single(core, settings, result, undo, payload)
    core.metrics.processing.labels(SERVICE, "http").observe(time.perf_counter() - started)
    return response


RETRY_IS_SAFE = (
    "nothing of this request was accepted; retrying the same request is safe (event ids are deterministic: "
    "anything that did reach the broker is deduplicated by id)"
)


async def _publish(core: IngestCore, settings: Settings, result: MapResult, undo: Undo) -> set[str]:
    """Publish and wait for the broker, within the bound; the ids of the events that were new.

    503 with ``Retry-After`` when the broker did not acknowledge every event in time: a 2xx means acks=all.
    """
    retry = {"Retry-After": str(settings.retry_after_s)}
    try:
        published, _ = await core.publish_mapped(result, undo, timeout=settings.publish_timeout_s)
    except PublishTimeout as error:
        log.error("publish timed out", extra={"count": len(result.events), "duration_ms": error.bound_s * 1000})
        diagnostics = f"the broker did not acknowledge the events within {error.bound_s:g} s; {RETRY_IS_SAFE}"
        raise FhirError(503, "transient", diagnostics, retry) from error
    except Exception as error:
        log.error("publish failed", extra={"error_type": type(error).__name__, "count": len(result.events)})
        diagnostics = f"the broker did not acknowledge the events; {RETRY_IS_SAFE}"
        raise FhirError(503, "transient", diagnostics, retry) from error
    return {e.event_id for e in published}


def _fresh(events: list[Any], fresh_ids: set[str]) -> int:
    return sum(1 for e in events if isinstance(e, Event) and e.event_id in fresh_ids)


async def _single(
    core: IngestCore, settings: Settings, result: MapResult, undo: Undo, payload: dict[str, Any]
) -> Response:
    entry = result.entries[0]
    if entry.outcome == "rejected":  # nothing of it was remembered (remember skips rejected entries)
        status_line, issues = entry_status(entry, 0)
        return fhir_response(operation_outcome(issues), int(status_line[:3]))
    fresh = _fresh(entry.events, await _publish(core, settings, result, undo))
    status_line, issues = entry_status(entry, fresh)
    headers = {"Location": loc} if (loc := location(entry)) else None
    if entry.events and not fresh and not entry.rejections:
        # An identical resubmission: 200 with the resource as it stands (the same content as sent).
        return fhir_response(payload, 200, headers)
    return fhir_response(operation_outcome(issues), int(status_line[:3]), headers)


async def _bundle(core: IngestCore, settings: Settings, result: MapResult, undo: Undo) -> Response:
    transaction = result.bundle_type == "transaction"
    if not core.publishable(result):  # a strict transaction with a rejected entry (nothing was remembered)
        return fhir_response(operation_outcome(rejection_issues(result.rejections)), 422)
    fresh_ids = await _publish(core, settings, result, undo)
    if len(result.entries) < RELEASE_IN_PIECES:
        return fhir_response(_bundle_answer(result, fresh_ids, transaction), 200)  # small: a thread hop costs more
    # One answer per entry: for a Bundle of tens of thousands of readings that is a while; built and encoded off
    # the loop, entry by entry (one orjson call over the whole answer holds the interpreter lock throughout).
    content = await asyncio.to_thread(_encoded_answer, result, fresh_ids, transaction)
    # Freed in pieces off the loop: tens of thousands of events at once would stall it (large_body.release).
    await release(result.events, result.entries, result.rejections)
    return Response(content, status_code=200, media_type=FHIR_JSON)


RELEASE_IN_PIECES = 1_000
"""Entries from which a Bundle's mapping result is freed in pieces in a worker thread."""


def _encoded_answer(result: MapResult, fresh_ids: set[str], transaction: bool) -> bytes:
    """``orjson.dumps`` of the Bundle answer, one entry per call: the interpreter may switch between them."""
    body = _bundle_answer(result, fresh_ids, transaction)
    head = orjson.dumps({k: v for k, v in body.items() if k != "entry"})
    entries = b",".join([orjson.dumps(entry) for entry in body["entry"]])
    return head[:-1] + b',"entry":[' + entries + b"]}"


def _bundle_answer(result: MapResult, fresh_ids: set[str], transaction: bool) -> dict[str, Any]:
    entries = []
    for entry in result.entries:
        fresh = _fresh(entry.events, fresh_ids)
        response: dict[str, Any]
        if (
            fresh
            and fresh == len(entry.events)
            and not entry.rejections
            and entry.note is None
            and not entry.correction
        ):
            # The common case, kept small (a Bundle of thousands of readings): created, nothing to say.
            response = {"status": "201 Created"}
        else:
            status_line, issues = entry_status(entry, fresh)
            response = {"status": status_line, "outcome": operation_outcome(issues)}
        if (loc := location(entry)) is not None and not response["status"].startswith("4"):
            response["location"] = loc
        entries.append({"response": response})
    return {
        "resourceType": "Bundle",
        "type": "transaction-response" if transaction else "batch-response",
        "entry": entries,
    }


async def post_base(request: Request) -> Response:
    """Post a Bundle (transaction, batch, collection, searchset, message) to the base."""

    async def handle(payload: Any) -> Response:
        if isinstance(payload, dict) and payload.get("resourceType") not in (None, "Bundle"):
            raise FhirError(400, "not-supported", "POST to the base takes a Bundle; post resources to their type")
        return await ingest(ingest_core(request), ingest_settings(request), payload, "Bundle")

    return await with_fhir_json(request, handle)


def _fhir(model: type[Any] | None, description: str) -> dict[str, Any]:
    if model is not None:
        return {"model": model, "description": description}
    return {"description": description, "content": {FHIR_JSON: {"schema": {"type": "object"}}}}


def _body(description: str, example: dict[str, Any]) -> dict[str, Any]:
    """A FHIR write's request body (read by ``with_fhir_json``: FastAPI cannot infer it), with an accepted example."""
    schema = {"type": "object", "required": ["resourceType"], "properties": {"resourceType": {"type": "string"}}}
    examples = {"accepted": {"summary": "Accepted (201; 200 when posted again)", "value": example}}
    content = {media: {"schema": schema, "examples": examples} for media in (FHIR_JSON, "application/json")}
    return {"requestBody": {"required": True, "description": description, "content": content}}


BUNDLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _fhir(BundleResponse, "A batch-response or transaction-response: each entry's status and outcome"),
    **WRITE_RESPONSES,
}
RESOURCE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _fhir(None, "Nothing new (an identical resubmission: the resource as it stands), or a Bundle's response"),
    201: _fhir(OperationOutcome, "Created: the resource's events are acknowledged by the broker"),
    **WRITE_RESPONSES,
    **outcomes(404, 409),
}
"""A resource's answers; 404 for a type ingest does not take, 409 for a version conflict."""

_SUMMARY = "Post a Bundle (transaction, batch, collection, searchset, message) to the base"
base_router.add_api_route(
    "",
    post_base,
    methods=["POST"],
    summary=_SUMMARY,
    dependencies=FhirWriter,
    responses=BUNDLE_RESPONSES,
    openapi_extra=_body("A FHIR R4 Bundle", examples.BUNDLE),
)
router.add_api_route(
    "/", post_base, methods=["POST"], summary=_SUMMARY, include_in_schema=False, dependencies=FhirWriter
)


@router.get(
    "/metadata",
    summary="A minimal CapabilityStatement",
    responses={200: _fhir(None, "The CapabilityStatement (FHIR JSON)")},
)
async def metadata() -> Response:
    """What this FHIR endpoint accepts."""
    types = sorted(RESOURCE_TYPES - {"Bundle"})
    return fhir_response(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "application/json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [{"type": t, "interaction": [{"code": "create"}, {"code": "update"}]} for t in types],
                    "interaction": [{"code": "transaction"}, {"code": "batch"}],
                }
            ],
        },
        200,
    )


@router.post(
    "/{resource_type}",
    summary="Post one resource (Observation, Patient, Encounter...) to its type",
    dependencies=FhirWriter,
    responses=RESOURCE_RESPONSES,
    openapi_extra=_body("A FHIR R4 resource of the URL's type (or a Bundle)", examples.OBSERVATION),
)
async def post_resource(request: Request, resource_type: ResourceType) -> Response:
    """Post one resource to its type."""

    async def handle(payload: Any) -> Response:
        if resource_type not in RESOURCE_TYPES:
            raise FhirError(404, "not-supported", f"resource type '{resource_type[:40]}' is not accepted here")
        return await ingest(ingest_core(request), ingest_settings(request), payload, resource_type)

    return await with_fhir_json(request, handle)


@router.put(
    "/{resource_type}/{resource_id}",
    summary="Put one resource (an update: amended, corrected...)",
    dependencies=FhirWriter,
    responses=RESOURCE_RESPONSES,
    openapi_extra=_body("A FHIR R4 resource of the URL's type; its id, when given, is the URL's", examples.OBSERVATION),
)
async def put_resource(request: Request, resource_type: ResourceType, resource_id: ResourceId) -> Response:
    """Put one resource: the URL's id wins (a different id in the body is refused)."""

    async def handle(payload: Any) -> Response:
        if resource_type not in RESOURCE_TYPES - {"Bundle"}:
            raise FhirError(404, "not-supported", f"resource type '{resource_type[:40]}' is not accepted here")
        if isinstance(payload, dict):
            if payload.get("id") not in (None, resource_id):
                raise FhirError(400, "invalid", "the resource's id does not match the URL's id")
            payload["id"] = resource_id
        return await ingest(ingest_core(request), ingest_settings(request), payload, resource_type)

    return await with_fhir_json(request, handle)
