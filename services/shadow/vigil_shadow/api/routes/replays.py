"""The replay jobs routes: an analyst starts a replay of a time range against a version and reads its report.

``POST /replays`` answers 202 with the job (and its ``Location``); ``GET /replays/{id}`` gives its state and, when
done, the report (the replay's JSON document); ``GET /replays`` lists kept jobs without their reports.

Who may: the registry's ``analyst`` and ``admin`` roles (the role comes with the caller's token from the stack's
tokens table). A replay reads patient-derived data for any range and costs the service CPU, so a read scope alone
is not enough. The console forwards the signed-in analyst's own token, so the role checked here is the person's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from vigil_runtime.auth import CurrentPrincipal, Forbidden, Principal
from vigil_runtime.responses import AUTH_RESPONSES, errors
from vigil_shadow.api.deps import ShadowDep
from vigil_shadow.jobs import TooManyJobs

REPLAY_ROLES = frozenset({"analyst", "admin"})
"""Registry roles that may start and read replays (docs/security.md; the registry's ``replay`` permission)."""


def replay_role(principal: CurrentPrincipal) -> Principal:
    """The caller, when its registry role may replay (403 with the reason otherwise)."""
    if principal.role not in REPLAY_ROLES:
        raise Forbidden(f"role {principal.role!r} may not replay; it needs one of: {', '.join(sorted(REPLAY_ROLES))}")
    return principal


Analyst = Annotated[Principal, Depends(replay_role)]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

router = APIRouter(prefix="/replays", tags=["replay"], responses=AUTH_RESPONSES)


class ReplayJobRequest(BaseModel):
    """A replay to run: one version over a range of observation times."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    # A registry name and version only: replay also reads ``NAME:VERSION=PATH`` (a local folder), which an HTTP
    # caller must never be able to name, hence no ':' or '=' here.
    model: str = Field(pattern=NAME_PATTERN, max_length=128, examples=["sepsis"])
    version: str = Field(pattern=NAME_PATTERN, max_length=128, examples=["2"])
    start: datetime = Field(alias="from", description="Range start (observation time, UTC when no offset).")
    end: datetime = Field(alias="to", description="Range end, exclusive.")


@router.post("", status_code=202, summary="Start a replay job", responses=errors(400, 422, 429))
async def start_replay(
    body: ReplayJobRequest, service: ShadowDep, caller: Analyst, response: Response
) -> dict[str, Any]:
    """Queue a replay of ``from``..``to`` against ``model:version``; poll ``GET /replays/{id}`` for its report."""
    try:
        job = service.replays.submit(body.model, body.version, body.start, body.end, requested_by=caller.user)
    except TooManyJobs as error:
        raise HTTPException(status_code=429, detail=str(error), headers={"Retry-After": "60"}) from error
    except ValueError as error:
        raise HTTPException(status_code=422, detail=str(error)) from error
    response.headers["Location"] = f"/replays/{job.id}"
    return job.public(with_report=False)


@router.get("", summary="Replay jobs, newest first (without reports)")
async def list_replays(service: ShadowDep, _: Analyst) -> dict[str, Any]:
    """Every job the service still keeps."""
    return {"replays": [j.public(with_report=False) for j in service.replays.list()]}


@router.get("/{job_id}", summary="A replay job: its state, and its report once done", responses=errors(404))
async def get_replay(job_id: str, service: ShadowDep, _: Analyst) -> dict[str, Any]:
    """The job; 404 when unknown or forgotten (jobs live in the service's memory)."""
    job = service.replays.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no replay job {job_id} (unknown, or forgotten by a restart)")
    return job.public(with_report=True)
