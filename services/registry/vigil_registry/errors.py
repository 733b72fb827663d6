"""Errors that carry their HTTP status, so routes stay free of try/except ladders."""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """Base error; ``status`` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(RegistryError):
    """The model, version or proposal does not exist."""

    status = 404


class Forbidden(RegistryError):
    """The caller's role or identity does not allow the action (the four-eyes rule included)."""

    status = 403


class Unauthorized(RegistryError):
    """No valid bearer token."""

    status = 401


class Conflict(RegistryError):
    """The action is not allowed from the version's current state (a forbidden transition)."""

    status = 409


class InvalidInput(RegistryError):
    """A request's content is invalid (a policy with unknown keys, say)."""

    status = 422


class InvalidPackage(InvalidInput):
    """An uploaded model package is malformed or its digests do not match."""


class NotEligible(RegistryError):
    """The policy's evidence criteria are not met; ``report`` says which failed."""

    status = 409

    def __init__(self, reason: str, report: dict[str, Any]) -> None:
        super().__init__(reason)
        self.report = report


class StoreCorrupted(RegistryError):
    """A stored package no longer matches its digest (bit rot or tampering): never serve it."""

    status = 500
