"""Dependencies of the FHIR routes (``Annotated`` aliases) and the one error type they raise.

Errors carry their HTTP status and FHIR issue code (:class:`FhirError`); one handler turns them into an
OperationOutcome, so routes stay free of try/except ladders.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request, Response

from vigil_ingest.core import IngestCore
from vigil_ingest.fhir_http import operation_outcome
from vigil_ingest.mapping import strip_bom
from vigil_ingest.settings import Settings
from vigil_runtime.auth import AuthError, CurrentPrincipal, Forbidden, Principal

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


def fhir_response(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    """A FHIR JSON answer."""
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


async def fhir_error_handler(request: Request, error: FhirError) -> Response:
    """The OperationOutcome of a refused request."""
    return fhir_response(operation_outcome([("error", error.code, error.diagnostics)]), error.status, error.headers)


def fhir_write(request: Request, principal: CurrentPrincipal) -> Principal:
    """The caller must hold ``system/<type>.write`` for the resource type it writes (SMART Backend Services).

    A Bundle is checked as an Observation write: what ingest keeps from any Bundle is observations (and the
    encounter and demographic facts they are scored with). Runs before the body is read.
    """
    resource_type = request.path_params.get("resource_type") or "Observation"
    required = f"system/{resource_type}.write"
    if not principal.allows(required):
        raise Forbidden(f"this call needs the scope {required}", scope=required)
    return principal


async def auth_refused(request: Request, error: Exception) -> Response:
    """A 401/403 as a FHIR OperationOutcome (``login``/``forbidden``) with the ``WWW-Authenticate`` challenge."""
    if not isinstance(error, AuthError):  # registered for AuthError only: anything else is not ours to answer
        raise error
    code = "forbidden" if error.status == 403 else "login"
    body = operation_outcome([("error", code, error.reason)])
    return fhir_response(body, error.status, {"WWW-Authenticate": error.www_authenticate()})


FhirWriter = [Depends(fhir_write)]
"""The dependencies of every FHIR write route."""


def get_core(request: Request) -> IngestCore:
    """The app's ingest core (mapping, dedupe, publishing)."""
    core: IngestCore = request.app.state.ingest_core
    return core


def get_settings(request: Request) -> Settings:
    """The service's settings."""
    settings: Settings = request.app.state.ingest_settings
    return settings


CoreDep = Annotated[IngestCore, Depends(get_core)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def read_fhir_json(request: Request, settings: SettingsDep) -> Any:
    """The request's body as parsed JSON: FHIR JSON content type, at most ``max_body_bytes``, a BOM dropped."""
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
    try:
        return orjson.loads(strip_bom(b"".join(chunks)))
    except orjson.JSONDecodeError as error:
        raise FhirError(
            400, "invalid", f"invalid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from error


FhirBody = Annotated[Any, Depends(read_fhir_json)]
