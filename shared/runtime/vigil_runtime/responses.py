"""The error answers every service's OpenAPI document lists, in one error model.

Two shapes, whatever the service (ingest's FHIR API answers OperationOutcomes instead, with the same statuses):

- :class:`ErrorBody` ``{"detail": "<reason>"}`` for refusals and failures (401, 403, 404, 409, 413, 503...);
- FastAPI's validation shape ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`` for every 422, including
  the ones a route raises after its own checks (:func:`invalid`), so a 422 body always matches the schema.

Routes declare what they answer with ``responses=`` built from these (:data:`AUTH_RESPONSES` on every
authenticated route, :func:`errors` for the rest); ``tests/unit/test_openapi_statuses.py`` walks every app's
routes and fails when a route raises or depends on a status its document does not list.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field


class ErrorBody(BaseModel):
    """Why a request was refused or failed (no values of the input, no patient data)."""

    detail: str = Field(examples=["model 'sepsis' not found"])


class ValidationIssue(BaseModel):
    """One problem of a request (FastAPI's and pydantic's shape; more fields may come along)."""

    loc: list[str | int] = Field(examples=[["query", "to"]])
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """Every 422: the request's problems, one per place (``loc``)."""

    detail: list[ValidationIssue]


DESCRIPTIONS: dict[int, str] = {
    400: "Bad request",
    401: "No bearer token, or one that is unknown, expired or badly signed (``WWW-Authenticate`` says why)",
    403: "A valid credential without the scope or role this call needs",
    404: "Not found",
    405: "Method not allowed",
    409: "Not allowed in the current state",
    413: "Body larger than the configured limit",
    415: "Unsupported content type",
    422: "Invalid input",
    500: "Internal error (a stored artifact no longer matches its digest)",
    503: "Not able to serve this now (retry later)",
}


def errors(*statuses: int, model: type[BaseModel] = ErrorBody) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: each status with ``model`` as its body (422 always :class:`ValidationErrorBody`)."""
    return {
        status: {
            "model": ValidationErrorBody if status == 422 else model,
            "description": DESCRIPTIONS.get(status, "Error"),
        }
        for status in statuses
    }


AUTH_RESPONSES = errors(401, 403)
"""What every authenticated route may answer before its own logic runs."""


def json_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Like :func:`errors`, for a route whose own answers are not JSON (``/metrics``).

    The schema is inline, so the document does not list the error body under the route's media type.
    """
    schema = ErrorBody.model_json_schema()
    return {
        status: {"description": DESCRIPTIONS.get(status, "Error"), "content": {"application/json": {"schema": schema}}}
        for status in statuses
    }


def invalid(message: str, *, loc: Sequence[str | int] = ("body",), kind: str = "value_error") -> RequestValidationError:
    """A 422 raised by a route after its own checks, in the shape of FastAPI's request validation errors."""
    return RequestValidationError([{"loc": tuple(loc), "msg": message, "type": kind}])


def _iso_text(value: Any) -> Any:
    # pydantic reads a number (or a numeric string, as every query value is) as Unix time: ``?to=0.5`` would be
    # 1970. The documents say ``date-time``; only ISO 8601 text is one.
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("expected an ISO 8601 date-time, not a number")
    if isinstance(value, int | float):
        raise ValueError("expected an ISO 8601 date-time, not a number")
    return value


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("expected a date-time with its UTC offset (Z or +hh:mm)")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(_aware)]
"""A query parameter's date-time: ISO 8601 text with its offset, never a number."""


__all__ = [
    "AUTH_RESPONSES",
    "DESCRIPTIONS",
    "ErrorBody",
    "IsoDatetime",
    "ValidationErrorBody",
    "ValidationIssue",
    "errors",
    "invalid",
    "json_errors",
]
