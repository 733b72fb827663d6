"""Dependencies of the shadow service's routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

if TYPE_CHECKING:
    from vigil_shadow.app import ShadowService


def get_shadow(request: Request) -> ShadowService:
    """The app's shadow service."""
    service: ShadowService = request.app.state.shadow
    return service


ShadowDep = Annotated["ShadowService", Depends(get_shadow)]
