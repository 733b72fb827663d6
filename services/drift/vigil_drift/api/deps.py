"""Dependencies of the drift service's routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from vigil_drift.core import DriftCore


def get_core(request: Request) -> DriftCore:
    """The app's drift core."""
    core: DriftCore = request.app.state.drift
    return core


DriftDep = Annotated[DriftCore, Depends(get_core)]
