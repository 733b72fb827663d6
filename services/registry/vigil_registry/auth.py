"""Bearer tokens to principals, and what each role may do.

Tokens come from settings (``REGISTRY_TOKENS``), plus the documented demo tokens in development mode only.
Comparison is constant-time (``hmac.compare_digest``) against every configured token, so response time does
not reveal how much of a guessed token was right.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from vigil_registry.errors import Forbidden, Unauthorized
from vigil_registry.settings import Role, TokenGrant


@dataclass(frozen=True)
class Principal:
    """Who acts: a user and a role (the policy acts as user 'policy', role 'system')."""

    user: str
    role: str


POLICY = Principal(user="policy", role="system")
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
}
"""Action -> roles allowed. Approval is the clinical approver's alone (not even an admin's)."""


def require(principal: Principal, action: str) -> None:
    """Raise Forbidden (403, with the reason) unless the principal's role may perform ``action``."""
    if principal == POLICY:
        return
    allowed = PERMISSIONS[action]
    if principal.role not in {r.value for r in allowed}:
        names = ", ".join(sorted(r.value for r in allowed))
        raise Forbidden(f"role {principal.role!r} may not {action}; it needs one of: {names}")


class TokenTable:
    """Resolves bearer tokens in constant time per configured token."""

    def __init__(self, tokens: dict[str, TokenGrant]) -> None:
        self._entries = [(token.encode(), grant) for token, grant in tokens.items()]

    def resolve(self, token: str | None) -> Principal:
        """The principal a token stands for; Unauthorized when it stands for nobody."""
        if not token:
            raise Unauthorized("missing bearer token")
        given = token.encode()
        found: TokenGrant | None = None
        for candidate, grant in self._entries:
            # Compare against every token (no early exit) so timing tells nothing about which one matched.
            if hmac.compare_digest(candidate, given):
                found = grant
        if found is None:
            raise Unauthorized("unknown bearer token")
        return Principal(user=found.user, role=found.role.value)
