"""``GET /drift``: every monitored quantity and the open alerts (derived from patient data: a read scope)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from vigil_drift.api.deps import DriftDep
from vigil_runtime.auth import READ_SCOPE, requires
from vigil_runtime.responses import AUTH_RESPONSES

router = APIRouter(tags=["drift"], dependencies=[Depends(requires(READ_SCOPE))], responses=AUTH_RESPONSES)


@router.get("/drift", summary="Every monitored quantity and the open alerts")
async def drift_state(core: DriftDep) -> dict[str, Any]:
    """The drift core's snapshot."""
    return core.snapshot()
