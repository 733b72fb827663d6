"""The comparisons routes: a read of patient-derived evidence, and publishing it.

``POST /comparisons/publish`` publishes the evidence the registry promotes on: only a caller with its scope.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query

from vigil_runtime.auth import READ_SCOPE, requires
from vigil_runtime.responses import AUTH_RESPONSES, IsoDatetime, errors, invalid
from vigil_shadow.api.deps import ShadowDep

PUBLISH_SCOPE = "system/ComparisonSummary.write"
"""Publishing comparisons moves models towards production: its own scope, not implied by data writes
(``system/*.write`` still covers it, as SMART wildcards do)."""

router = APIRouter(prefix="/comparisons", tags=["shadow"], responses=AUTH_RESPONSES)


@router.get(
    "", summary="Every candidate against live (optionally over a window)", dependencies=[Depends(requires(READ_SCOPE))]
)
async def comparisons(
    service: ShadowDep,
    start: IsoDatetime | None = Query(default=None, alias="from", description="Window start (data time, UTC)."),
    end: IsoDatetime | None = Query(default=None, alias="to", description="Window end, exclusive."),
    model: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Every candidate's comparison with live, computed now."""
    if start is not None and end is not None and end <= start:
        raise invalid("the window's end ('to') must come after its start ('from')", loc=("query", "to"))
    found = await service.desk.compute(window_start=start, window_end=end)
    rows = [
        c.summary()
        for c in found
        if (model is None or c.model_name == model) and (version is None or c.candidate_version == version)
    ]
    return {
        "comparisons": rows,
        "candidates": [f"{n}:{v}" for n, v in sorted(service.catalog.models)],
        "join": dict(service.join.counts),
        "join_rebuilt": service.join_rebuilt,
    }


@router.post(
    "/publish",
    summary="Publish every candidate's summary now",
    dependencies=[Depends(requires(PUBLISH_SCOPE))],
    responses=errors(409),
)
async def publish_now(service: ShadowDep) -> dict[str, Any]:
    """Publish the summaries the registry judges candidates by."""
    if not service.join_rebuilt:
        raise HTTPException(status_code=409, detail="the join is still re-reading its topics; try again")
    events = await service.desk.publish()
    return {"published": [e.model_dump(mode="json") for e in events]}
