"""Dependencies of the routes: the registry core and the calling principal, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vigil_registry.auth import ANONYMOUS, Principal, TokenTable
from vigil_registry.core import Registry

bearer = HTTPBearer(auto_error=False, description="A registry token (REGISTRY_TOKENS; demo tokens in development).")


def get_registry(request: Request) -> Registry:
    """The app's registry core."""
    registry: Registry = request.app.state.registry
    return registry


def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """Who calls: the token's principal; anonymous reads only where the settings allow them."""
    tokens: TokenTable = request.app.state.tokens
    if credentials is None and request.method in ("GET", "HEAD") and request.app.state.anonymous_read:
        return ANONYMOUS
    return tokens.resolve(credentials.credentials if credentials else None)


RegistryDep = Annotated[Registry, Depends(get_registry)]
CurrentUser = Annotated[Principal, Depends(get_principal)]
