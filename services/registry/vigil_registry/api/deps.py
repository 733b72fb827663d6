"""Dependencies of the routes: the registry core and the calling principal, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vigil_registry.auth import ANONYMOUS, Principal
from vigil_registry.core import Registry
from vigil_runtime.auth import Authenticator

bearer = HTTPBearer(auto_error=False, description="A registry token (REGISTRY_TOKENS; demo tokens in development).")


def get_registry(request: Request) -> Registry:
    """The app's registry core."""
    registry: Registry = request.app.state.registry
    return registry


def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """Who calls: the token's principal; anonymous reads only where the settings allow them."""
    authenticator: Authenticator = request.app.state.auth
    if credentials is None and request.method in ("GET", "HEAD") and request.app.state.anonymous_read:
        return ANONYMOUS
    return authenticator.authenticate(request.headers.get("authorization"))


RegistryDep = Annotated[Registry, Depends(get_registry)]
CurrentUser = Annotated[Principal, Depends(get_principal)]
