"""Who acts on the registry, and what each role may do.

Credentials are resolved by the common auth module (``vigil_runtime.auth``: static bearer tokens compared in
constant time, OAuth2 JWTs against a JWKS); the registry adds its roles. Its tokens come from
``REGISTRY_TOKENS`` and the stack-wide tokens file, plus the documented demo tokens in development mode only.
"""

from __future__ import annotations

from vigil_registry.errors import Forbidden
from vigil_registry.settings import Role, TokenGrant
from vigil_runtime.auth import READ_SCOPE, Grant, Principal

__all__ = ["ANONYMOUS", "PERMISSIONS", "POLICY", "Principal", "grants", "require"]

POLICY = Principal(user="policy", role="system", kind="system")
ANONYMOUS = Principal(user="anonymous", role=Role.VIEWER.value)

_ALL = frozenset(Role)
PERMISSIONS: dict[str, frozenset[Role]] = {
    "read": _ALL,
    "register": frozenset({Role.DATA_SCIENTIST, Role.ADMIN}),
    "stage": frozenset({Role.DATA_SCIENTIST, Role.ADMIN}),
    "propose": frozenset({Role.DATA_SCIENTIST, Role.ADMIN}),
    "approve": frozenset({Role.CLINICAL_APPROVER}),
    "reject": frozenset({Role.CLINICAL_APPROVER}),
    "promote": frozenset({Role.CLINICAL_APPROVER, Role.ADMIN}),
    "rollback": frozenset({Role.CLINICAL_APPROVER, Role.ADMIN}),
    "retire": frozenset({Role.CLINICAL_APPROVER, Role.ADMIN}),
    "policy": frozenset({Role.ADMIN}),
    "replay": frozenset({Role.ANALYST, Role.ADMIN}),
}
"""Action -> roles allowed. Approval is the clinical approver's alone (not even an admin's). ``replay`` is run by
shadow (``POST /replays``), which checks the same two roles itself (vigil_shadow/api/routes/replays.py)."""


def require(principal: Principal, action: str) -> None:
    """Raise Forbidden (403, with the reason) unless the principal's role may perform ``action``.

    A principal without a registry role (an OAuth2 client) may read when it holds a read scope, nothing else.
    """
    if principal == POLICY:
        return
    if principal.role is None and action == "read" and principal.allows(READ_SCOPE):
        return
    allowed = PERMISSIONS[action]
    if principal.role not in {r.value for r in allowed}:
        names = ", ".join(sorted(r.value for r in allowed))
        raise Forbidden(f"role {principal.role!r} may not {action}; it needs one of: {names}")


def grants(tokens: dict[str, TokenGrant]) -> dict[str, Grant]:
    """The registry's token grants in the common module's shape (roles read everything)."""
    return {token: Grant(user=g.user, role=g.role.value, scopes=[READ_SCOPE]) for token, g in tokens.items()}
