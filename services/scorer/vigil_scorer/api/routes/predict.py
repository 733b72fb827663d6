"""``POST /predict``: a stateless score of one feature snapshot (patient data in: the caller needs a read scope)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException
from pydantic import BaseModel, Field, StrictFloat, WithJsonSchema

from vigil_runtime.auth import requires
from vigil_runtime.responses import AUTH_RESPONSES, errors, invalid
from vigil_scorer.api.deps import ScorerDep
from vigil_scoring.features import FEATURE_COLUMNS

PREDICT_SCOPE = "system/RiskAssessment.read"
"""A score is a RiskAssessment in FHIR terms; the caller reads one (``system/*.read`` covers it)."""

EXAMPLE: dict[str, float | None] = {
    "age": 64.0,
    "heart_rate_last": 112.0,
    "temperature_last": 38.6,
    "resp_rate_last": 24.0,
}
"""A snapshot the default model scores: a febrile, tachycardic patient of 64 (made up)."""
SNAPSHOT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {name: {"type": ["number", "null"]} for name in FEATURE_COLUMNS},
    # Names outside FEATURE_COLUMNS are refused (a typo would otherwise score as a missing value, silently).
    "additionalProperties": False,
}
"""The request body's schema: the feature names the model takes, each a number or null."""

router = APIRouter(tags=["scoring"], dependencies=[Depends(requires(PREDICT_SCOPE))], responses=AUTH_RESPONSES)


class PredictResponse(BaseModel):
    """A stateless score of one feature snapshot."""

    probability: float = Field(ge=0.0, le=1.0)
    risk_level: str = Field(examples=["low"])
    alert: bool
    threshold: float
    model_name: str
    model_version: str
    stage: str
    default_model: bool


@router.post(
    "/predict",
    summary="Score one feature snapshot (stateless)",
    responses=errors(400, 503),
)
async def predict(
    service: ScorerDep,
    features: Annotated[
        # Strict: in pydantic's lax mode `true` and "1.5" pass as numbers, which the schema refuses (schemathesis's
        # coverage phase found a boolean scored as 1.0).
        dict[str, StrictFloat | None],
        WithJsonSchema(SNAPSHOT_SCHEMA),
        Body(description="FEATURE_COLUMNS names to numbers (null or absent: missing).", examples=[EXAMPLE]),
    ],
) -> PredictResponse:
    """Score with the model in use; 503 while none is loaded or the one loaded is not confirmed in production."""
    core = service.core
    if core is None:
        raise HTTPException(503, "no model loaded yet")
    try:
        p, level, alert = core.predict_snapshot(features)
    except ValueError as error:
        raise invalid(str(error)) from error
    return PredictResponse(
        probability=p,
        risk_level=level,
        alert=alert,
        threshold=core.threshold,
        model_name=core.model_name,
        model_version=core.model_version,
        stage=core.stage.value,
        default_model=core.default_model,
    )
