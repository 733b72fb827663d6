"""Models, versions, stages, promotion, rollback, retirement, artifacts and policies."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from vigil_contracts.events import Stage
from vigil_registry.api.deps import CurrentUser, RegistryDep
from vigil_registry.auth import require
from vigil_registry.errors import RegistryError
from vigil_registry.models import ModelPublic, ModelVersionPublic
from vigil_runtime.responses import AUTH_RESPONSES, DESCRIPTIONS, ErrorBody, errors

router = APIRouter(prefix="/models", tags=["models"], responses=AUTH_RESPONSES)

FOUND = errors(404)
"""A read of a named model or version: 404 when it does not exist."""


class NotEligibleBody(ErrorBody):
    """A promotion refused by the policy: which evidence criteria failed."""

    report: dict[str, Any] | None = Field(default=None, description="The eligibility report (on a refused promotion)")


DECISION = {**errors(400, 404, 422), 409: {"model": NotEligibleBody, "description": DESCRIPTIONS[409]}}
"""A lifecycle decision: 400 (a body that is not JSON), 404 (no such version), 409 (not from this stage, or not
eligible), 422 (invalid body)."""


class StageChange(BaseModel):
    """Move a version to shadow or archived."""

    to: Stage = Field(examples=["shadow"])
    reason: str = ""


class Reason(BaseModel):
    """A decision's reason (required for retirement and rollback)."""

    reason: str = ""


class TooLarge(RegistryError):
    """The upload exceeds the configured limit."""

    status = 413


@router.get("", summary="List models")
def list_models(registry: RegistryDep, user: CurrentUser) -> list[ModelPublic]:
    require(user, "read")
    return registry.queries.list_models()


@router.get("/{name}", summary="A model with its versions' stages and its policy", responses=FOUND)
def show_model(name: str, registry: RegistryDep, user: CurrentUser) -> ModelPublic:
    require(user, "read")
    return registry.queries.show_model(name)


@router.get("/{name}/versions", summary="A model's versions", responses=FOUND)
def list_versions(name: str, registry: RegistryDep, user: CurrentUser) -> list[ModelVersionPublic]:
    require(user, "read")
    return registry.queries.list_versions(name)


@router.post(
    "/{name}/versions",
    status_code=201,
    summary="Register a model package (body: a tar.gz, tar or zip of the package folder)",
    responses=errors(404, 409, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/zip": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def register(
    name: str,
    request: Request,
    registry: RegistryDep,
    user: CurrentUser,
    tag: list[str] = Query(default_factory=list, description="Tags to add (repeatable)."),
) -> ModelVersionPublic:
    require(user, "register")
    declared = int(request.headers.get("content-length") or 0)
    if declared > registry.max_upload_bytes:
        raise TooLarge("package archive too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # bounded even when the client sends no Content-Length
        size += len(chunk)
        if size > registry.max_upload_bytes:
            raise TooLarge("package archive too large")
        chunks.append(chunk)
    body = b"".join(chunks)
    return await run_in_threadpool(registry.lifecycle.register_archive, user, body, expected_name=name, tags=tag)


@router.get(
    "/{name}/versions/{version}", summary="One version: stage, card, lineage, metrics, digests", responses=FOUND
)
def show_version(name: str, version: str, registry: RegistryDep, user: CurrentUser) -> ModelVersionPublic:
    require(user, "read")
    return registry.queries.get_version(name, version)


@router.get(
    "/{name}/versions/{version}/artifact",
    summary="Download a version's package as a tar.gz (X-Artifact-Sha256: sha256 of model.onnx)",
    response_class=Response,
    responses={
        200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}},
        **errors(404, 500),
    },
)
def artifact(name: str, version: str, registry: RegistryDep, user: CurrentUser) -> Response:
    require(user, "read")
    data, public = registry.queries.artifact(name, version)
    return Response(
        data,
        media_type="application/gzip",
        headers={
            "X-Artifact-Sha256": public.artifact_sha256,
            "X-Package-Sha256": public.package_sha256,
            "Content-Disposition": f'attachment; filename="{name}-{version}.tar.gz"',
        },
    )


@router.get("/{name}/production", summary="The model's current production version (404 when none)", responses=FOUND)
def production(name: str, registry: RegistryDep, user: CurrentUser) -> ModelVersionPublic:
    require(user, "read")
    return registry.queries.production(name)


@router.post("/{name}/versions/{version}/stage", summary="Move a version to shadow or archived", responses=DECISION)
def set_stage(
    name: str, version: str, body: StageChange, registry: RegistryDep, user: CurrentUser
) -> ModelVersionPublic:
    return registry.lifecycle.set_stage(user, name, version, body.to, body.reason)


@router.get(
    "/{name}/versions/{version}/eligibility", summary="The promotion policy's report on a candidate", responses=FOUND
)
def eligibility(name: str, version: str, registry: RegistryDep, user: CurrentUser) -> dict[str, Any]:
    require(user, "read")
    return registry.queries.eligibility(name, version).as_dict()


@router.get(
    "/{name}/versions/{version}/history", summary="Comparisons and alerts received about a version", responses=FOUND
)
def history(name: str, version: str, registry: RegistryDep, user: CurrentUser) -> dict[str, Any]:
    require(user, "read")
    return registry.queries.history(name, version)


@router.post(
    "/{name}/versions/{version}/promote", summary="Promote an approved, eligible shadow version", responses=DECISION
)
def promote(name: str, version: str, body: Reason, registry: RegistryDep, user: CurrentUser) -> ModelVersionPublic:
    return registry.lifecycle.promote(user, name, version, body.reason)


@router.post("/{name}/versions/{version}/retire", summary="Retire a version (with a reason)", responses=DECISION)
def retire(name: str, version: str, body: Reason, registry: RegistryDep, user: CurrentUser) -> ModelVersionPublic:
    return registry.lifecycle.retire(user, name, version, body.reason)


@router.post("/{name}/rollback", summary="Restore the previous production version, in one call", responses=DECISION)
def rollback(name: str, body: Reason, registry: RegistryDep, user: CurrentUser) -> ModelVersionPublic:
    return registry.lifecycle.rollback(user, name, body.reason or "manual rollback")


@router.get("/{name}/policy", summary="The model's effective promotion policy", responses=FOUND)
def get_policy(name: str, registry: RegistryDep, user: CurrentUser) -> dict[str, Any]:
    require(user, "read")
    return registry.queries.policy(name).model_dump(mode="json")


@router.put("/{name}/policy", summary="Set the model's policy overrides (admin)", responses=errors(400, 404, 422))
def put_policy(name: str, body: dict[str, Any], registry: RegistryDep, user: CurrentUser) -> dict[str, Any]:
    return registry.lifecycle.set_policy(user, name, body).model_dump(mode="json")


@router.get(
    "/{name}/adaptation", summary="Whether site adaptation is due by the model's policy, and why", responses=FOUND
)
def adaptation(name: str, registry: RegistryDep, user: CurrentUser) -> dict[str, Any]:
    require(user, "read")
    return registry.queries.adaptation(name)
