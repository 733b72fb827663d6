"""What the FHIR routes share: the authorisation dependency, the body reader, the one error type they raise.

Errors carry their HTTP status and FHIR issue code (:class:`FhirError`); one handler turns them into an
OperationOutcome, so routes stay free of try/except ladders.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any, Literal

import orjson
from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from vigil_ingest.core import IngestCore
from vigil_ingest.fhir_http import operation_outcome
from vigil_ingest.large_body import LARGE_BODY_BYTES, gc_paused, parse_large, release
from vigil_ingest.mapping import strip_bom
from vigil_ingest.settings import Settings
from vigil_runtime.auth import AuthError, Forbidden, Principal, current_principal
from vigil_runtime.responses import DESCRIPTIONS

FHIR_JSON = "application/fhir+json"
ACCEPTED_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")


class FhirError(Exception):
    """A request refused as a whole: HTTP status, FHIR issue code, diagnostics (no values of the input)."""

    def __init__(self, status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.headers = headers


class Issue(BaseModel):
    """One issue of an OperationOutcome."""

    model_config = ConfigDict(extra="allow")
    severity: Literal["fatal", "error", "warning", "information"]
    code: str = Field(examples=["invalid"])
    diagnostics: str | None = None


class OperationOutcome(BaseModel):
    """FHIR R4 OperationOutcome: what ingest says about a refused request or a written resource."""

    model_config = ConfigDict(extra="allow")
    resourceType: Literal["OperationOutcome"]
    issue: list[Issue] = Field(min_length=1)


class BundleResponse(BaseModel):
    """FHIR R4 batch-response or transaction-response: one entry per entry posted, each with its status."""

    model_config = ConfigDict(extra="allow")
    resourceType: Literal["Bundle"]
    type: Literal["batch-response", "transaction-response"]
    entry: list[dict[str, Any]]


class FhirJSONResponse(JSONResponse):
    """The FHIR routes' response class: their documents list ``application/fhir+json``, what they send."""

    media_type = FHIR_JSON


def outcomes(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: each status answered with an OperationOutcome (in FHIR JSON on FHIR routes)."""
    return {
        status: {"model": OperationOutcome, "description": DESCRIPTIONS.get(status, "Refused")} for status in statuses
    }


WRITE_RESPONSES = outcomes(400, 401, 403, 413, 415, 422, 503)
"""What every FHIR write may answer besides its success: refusals and the broker not acknowledging, as FHIR."""
WRITE_RESPONSES[503]["headers"] = {
    "Retry-After": {
        "description": "Seconds to wait before a retry (safe: ids are deterministic)",
        "schema": {"type": "integer"},
    }
}


def fhir_response(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    """A FHIR JSON answer."""
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


async def fhir_error_handler(request: Request, error: FhirError) -> Response:
    """The OperationOutcome of a refused request."""
    return fhir_response(operation_outcome([("error", error.code, error.diagnostics)]), error.status, error.headers)


async def fhir_write(request: Request) -> Principal:
    """The caller must hold ``system/<type>.write`` for the resource type it writes (SMART Backend Services).

    A Bundle is checked as an Observation write: what ingest keeps from any Bundle is observations (and the
    encounter and demographic facts they are scored with). Runs before the body is read.

    A refusal is an OperationOutcome (``login``/``forbidden``) with the ``WWW-Authenticate`` challenge; the
    operations routes keep the frame's JSON refusals, as their documents say.

    The FHIR routes' one dependency (it decides before the body is read), and async: FastAPI runs a plain ``def``
    dependency in its thread pool, a hop per dependency per request (py-spy of single-resource posts: about a sixth
    of the loop's time in dependency solving and thread hand-overs). Static tokens are a lookup; a JWT with a remote
    JWKS, which may be fetched while verifying, still goes to the pool.
    """
    try:
        if request.app.state.auth.jwt is None:
            principal = current_principal(request)
        else:
            principal = await run_in_threadpool(current_principal, request)
        resource_type = request.path_params.get("resource_type") or "Observation"
        required = f"system/{resource_type}.write"
        if not principal.allows(required):
            raise Forbidden(f"this call needs the scope {required}", scope=required)
    except AuthError as error:
        code = "forbidden" if error.status == 403 else "login"
        raise FhirError(
            error.status, code, error.reason, headers={"WWW-Authenticate": error.www_authenticate()}
        ) from error
    return principal


FhirWriter = [Depends(fhir_write)]
"""The dependencies of every FHIR write route."""


def ingest_core(request: Request) -> IngestCore:
    """The app's ingest core (mapping, dedupe, publishing)."""
    core: IngestCore = request.app.state.ingest_core
    return core


def ingest_settings(request: Request) -> Settings:
    """The service's settings."""
    settings: Settings = request.app.state.ingest_settings
    return settings


Handler = Callable[[Any], Awaitable[Response]]
"""What a FHIR write does with the parsed body: map, publish, answer."""


async def with_fhir_json(request: Request, handle: Handler) -> Response:
    """Read the request's body as FHIR JSON, hand the parsed document to ``handle``, return its answer.

    FHIR JSON content type, at most ``max_body_bytes``, a BOM dropped; refusals are :class:`FhirError` (415, 413,
    400). A plain function the routes call, not a dependency: FastAPI solves every dependency per request (cache
    keys, scopes, an exit stack for a generator), 19% of a single-resource POST's samples in py-spy against 8% for
    its mapping; the routes keep the one dependency that decides before the body is read
    (:func:`fhir_write`).
    """
    settings = ingest_settings(request)
    content_type = request.headers.get("content-type", FHIR_JSON).split(";")[0].strip().lower()
    if content_type not in ACCEPTED_TYPES:
        raise FhirError(415, "not-supported", f"content type '{content_type[:60]}' is not FHIR JSON")
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FhirError(413, "too-costly", f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FhirError(413, "too-costly", f"body larger than {limit} bytes")
        chunks.append(chunk)
    if size < LARGE_BODY_BYTES:
        data = strip_bom(b"".join(chunks))
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            raise FhirError(
                400, "invalid", f"invalid JSON: {error.msg} at line {error.lineno} column {error.colno}"
            ) from error
        return await handle(payload)
    return await _large(chunks, handle)


async def _large(chunks: list[bytes], handle: Handler) -> Response:
    """A large body: parsed off the loop in chunks, the collector paused until its request is answered.

    ``vigil_ingest.large_body`` says why; ``/health`` must answer within 100 ms meanwhile. Once the answer is sent
    (the response's background task), the document is freed in pieces off the loop, not in one cascade on it, and
    only then does the collector resume.
    """
    pause = ExitStack()
    pause.enter_context(gc_paused())
    try:
        try:
            payload = await parse_large(chunks)  # the pieces as received: joining 15 MB on the loop was a stall
        except ValueError as error:
            # ijson's message quotes the text around the fault (possibly patient data): not echoed.
            raise FhirError(400, "invalid", "invalid JSON (a large body; its parser names no position)") from error
        chunks.clear()
        response = await handle(payload)
    except BaseException:
        pause.close()
        raise
    response.background = BackgroundTask(_release_then_resume, payload, pause, response.background)
    return response


async def _release_then_resume(payload: Any, pause: ExitStack, then: BackgroundTask | None) -> None:
    try:
        await release(payload)
    finally:
        pause.close()
    if then is not None:
        await then()
