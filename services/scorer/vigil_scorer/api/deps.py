"""Dependencies of the scorer's routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from vigil_scorer.pipeline import ScorerService


def get_scorer(request: Request) -> ScorerService:
    """The app's scorer service."""
    service: ScorerService = request.app.state.scorer
    return service


ScorerDep = Annotated[ScorerService, Depends(get_scorer)]
