"""Proposals for production and the clinical decision on them (the four-eyes rule)."""

from __future__ import annotations

from fastapi import APIRouter

from vigil_registry.api.deps import CurrentUser, RegistryDep
from vigil_registry.api.routes.models import DECISION, FOUND, Reason
from vigil_registry.auth import require
from vigil_registry.models import ProposalPublic
from vigil_runtime.responses import AUTH_RESPONSES

router = APIRouter(prefix="/models", tags=["proposals"], responses=AUTH_RESPONSES)


@router.get("/{name}/proposals", summary="A model's proposals, newest first", responses=FOUND)
def list_proposals(name: str, registry: RegistryDep, user: CurrentUser) -> list[ProposalPublic]:
    require(user, "read")
    return registry.queries.proposals(name)


@router.post(
    "/{name}/versions/{version}/proposals", status_code=201, summary="Propose a shadow version", responses=DECISION
)
def propose(name: str, version: str, body: Reason, registry: RegistryDep, user: CurrentUser) -> ProposalPublic:
    return registry.lifecycle.propose(user, name, version, body.reason)


@router.post(
    "/{name}/versions/{version}/approve", summary="Approve the open proposal (a clinical approver)", responses=DECISION
)
def approve(name: str, version: str, body: Reason, registry: RegistryDep, user: CurrentUser) -> ProposalPublic:
    return registry.lifecycle.approve(user, name, version, body.reason)


@router.post(
    "/{name}/versions/{version}/reject", summary="Reject the open proposal (a clinical approver)", responses=DECISION
)
def reject(name: str, version: str, body: Reason, registry: RegistryDep, user: CurrentUser) -> ProposalPublic:
    return registry.lifecycle.reject(user, name, version, body.reason)
