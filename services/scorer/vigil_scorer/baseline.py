"""The benchmark's baseline: the same model served the article's way, one HTTP request per prediction.

The article's ``serve.py`` is a FastAPI app whose ``/predict`` runs one scikit-learn ``predict_proba`` per request.
The packages carry no scikit-learn estimator (only the ONNX export), so each request here runs one single-row
onnxruntime call instead, which is faster than scikit-learn's predict_proba for one row (STACK.md: ~10 us against
0.6-2.9 ms): the baseline is, if anything, flattered.

Run: ``uvicorn vigil_scorer.baseline:app`` with ``BASELINE_MODEL_PATH`` pointing at a package folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from vigil_scoring.model_package import ModelPackage, default_package_path

package = ModelPackage.load(Path(os.environ.get("BASELINE_MODEL_PATH") or default_package_path()))
app = FastAPI(title="Sepsis model, served the article's way (baseline)")


class PredictionRequest(BaseModel):
    """One feature snapshot (FEATURE_COLUMNS order, null for missing)."""

    features: list[float | None]


class PredictionResponse(BaseModel):
    """The article's response."""

    risk_score: float
    risk_level: str
    model_version: str


@app.post("/predict")
def predict(req: PredictionRequest) -> PredictionResponse:
    """One request, one single-row model call."""
    x = np.array([[np.nan if v is None else v for v in req.features]], dtype=np.float32)
    proba = float(package.predict(x)[0])
    return PredictionResponse(
        risk_score=round(proba, 4), risk_level=package.risk_level(proba), model_version=package.version
    )


@app.get("/health")
def health() -> dict[str, str]:
    """Liveness."""
    return {"status": "healthy"}
