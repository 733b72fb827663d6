"""The audit trail and its verification."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from vigil_registry.api.deps import CurrentUser, RegistryDep
from vigil_registry.audit import parse_evidence
from vigil_registry.auth import require
from vigil_registry.models import AuditEntryPublic
from vigil_runtime.responses import AUTH_RESPONSES

router = APIRouter(prefix="/audit", tags=["audit"], responses=AUTH_RESPONSES)


@router.get("", summary="Audit entries in chain order (optionally one model or version)")
def entries(
    registry: RegistryDep, user: CurrentUser, model: str | None = None, version: str | None = None
) -> list[AuditEntryPublic]:
    require(user, "read")
    return [
        AuditEntryPublic.model_validate({**e.model_dump(), "evidence": parse_evidence(e)})
        for e in registry.queries.audit_log(model, version)
    ]


@router.get("/verify", summary="Recompute the hash chain; names the first altered entry")
def verify(registry: RegistryDep, user: CurrentUser) -> dict[str, Any]:
    require(user, "read")
    return registry.queries.verify_audit().as_dict()
