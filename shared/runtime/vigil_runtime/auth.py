"""Who may call a service's HTTP API: one module for all five services (FastAPI dependencies).

Two kinds of credential arrive as ``Authorization: Bearer <credential>``:

- **static bearer tokens** for the stack's own callers (the simulator, the demo, the CLI, the registry client of
  the scorer and shadow). They are generated like the other secrets (``vigil/http_tokens.py``), read from a
  JSON file ``{token: {"user": ..., "role": ..., "scopes": [...]}}`` (``VIGIL_AUTH_TOKENS_FILE``) or the
  ``*_AUTH_TOKENS`` setting, and compared in constant time against every configured token;
- **OAuth2 JWTs** for EHR integrations (SMART Backend Services: the EHR's client obtains an access token from
  the hospital's authorisation server with scopes like ``system/Observation.write``). They are verified with
  PyJWT against a configured JWKS (a file or an https URL), with the issuer and audience checked when set.

A route states what it needs with :func:`requires` (``Depends(requires("system/Observation.write"))``): no or an
unusable credential is a 401 with ``WWW-Authenticate``, a valid one without the scope a 403; both carry the
reason. Scopes follow SMART: v1 ``system/<Type|*>.<read|write|*>`` and v2 ``system/<Type|*>.<cruds letters>``.

User ids are normalised (NFKC, case-folded, trimmed) when a principal is made, and :func:`same_person` compares
normalised ids, so "Mallory " and "mallory" are one person wherever identities are compared (four eyes).
"""

from __future__ import annotations

import hmac
import json
import logging
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

DEV_TOKENS_PREFIX = "dev-"
"""Demo tokens start with this; refused outside development mode."""
MIN_TOKEN_LENGTH = 24
"""Outside development a token must be at least this long (a guessable token is a placeholder)."""
PLACEHOLDERS = frozenset({"", "changethis", "changeme", "secret", "dev", "development", "token"})

READ_SCOPE = "system/*.read"
"""The scope of data reads (``GET /drift``, ``GET /comparisons``)."""


def normalise_user(user: str) -> str:
    """The form user ids are compared in: NFKC, case-folded, surrounding whitespace removed."""
    return unicodedata.normalize("NFKC", user).casefold().strip()


def same_person(a: str | None, b: str | None) -> bool:
    """Whether two user ids name one person (compared normalised; None is nobody)."""
    if a is None or b is None:
        return False
    return normalise_user(a) == normalise_user(b)


class Grant(BaseModel):
    """What a static token stands for."""

    user: str = Field(min_length=1)
    role: str | None = Field(default=None, description="The registry's role (viewer, data_scientist, ...).")
    scopes: list[str] = Field(default_factory=list, examples=[["system/Observation.write"]])


@dataclass(frozen=True)
class Principal:
    """Who calls: a normalised user id, an optional registry role, and SMART scopes."""

    user: str
    role: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    kind: str = "token"
    """``token`` (a static bearer token), ``jwt`` (an OAuth2 access token) or ``system`` (the service itself)."""

    def allows(self, required: str) -> bool:
        """Whether any of the principal's scopes grants ``required``."""
        return any(scope_allows(granted, required) for granted in self.scopes)


class AuthError(Exception):
    """A refused request; carries its HTTP status and the reason given to the caller."""

    status = 401

    def __init__(self, reason: str, *, scope: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.scope = scope

    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` challenge (RFC 6750 section 3)."""
        error = "insufficient_scope" if self.status == 403 else "invalid_token"
        value = f'Bearer realm="vigil", error="{error}", error_description="{_quote(self.reason)}"'
        if self.scope:
            value += f', scope="{self.scope}"'
        return value


class Unauthenticated(AuthError):
    """401: no credential, or one that is unknown, expired or badly signed."""

    status = 401


class Forbidden(AuthError):
    """403: a valid credential without the scope or role the route needs."""

    status = 403


def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")


_V1_PERMISSIONS = {"read": set("rs"), "write": set("cud"), "*": set("cruds")}


def _permissions(text: str) -> set[str] | None:
    if text in _V1_PERMISSIONS:
        return _V1_PERMISSIONS[text]
    letters = set(text.split("?")[0])
    return letters if letters and letters <= set("cruds") else None


def scope_allows(granted: str, required: str) -> bool:
    """Whether a granted SMART scope covers a required one (v1 ``.read/.write/.*`` and v2 ``.cruds``)."""
    try:
        g_context, g_rest = granted.split("/", 1)
        r_context, r_rest = required.split("/", 1)
        g_type, g_perm = g_rest.rsplit(".", 1)
        r_type, r_perm = r_rest.rsplit(".", 1)
    except ValueError:
        return granted == required
    if g_context != r_context or g_type not in ("*", r_type):
        return False
    have, need = _permissions(g_perm), _permissions(r_perm)
    return have is not None and need is not None and need <= have


def check_token(token: str, *, name: str, development: bool) -> None:
    """Refuse a placeholder, demo or short token outside development mode."""
    if development:
        return
    if token.strip().lower() in PLACEHOLDERS:
        raise ValueError(f"{name} is a placeholder; set a real token or enable development mode")
    if token.startswith(DEV_TOKENS_PREFIX):
        raise ValueError(f"{name} is a demo token, refused outside development mode")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"{name} is shorter than {MIN_TOKEN_LENGTH} characters (outside development mode)")


def read_token_file(path: Path) -> dict[str, Grant]:
    """A tokens file: JSON ``{token: grant}``."""
    raw = json.loads(path.read_text())
    return {str(token): Grant.model_validate(grant) for token, grant in raw.items()}


def read_secret(path: Path | None) -> str | None:
    """A one-line secret from a file (a caller's token), stripped; None when no file is named."""
    if path is None:
        return None
    return path.read_text().strip() or None


class TokenTable:
    """Resolves static bearer tokens in constant time per configured token."""

    def __init__(self, tokens: dict[str, Grant]) -> None:
        # Each token's principal made once (it is immutable): not a normalisation and a frozenset per request.
        self._entries = [(token.encode(), _principal(grant)) for token, grant in tokens.items()]

    def __len__(self) -> int:
        return len(self._entries)

    def resolve(self, token: str) -> Principal | None:
        """The principal a token stands for; None when it stands for nobody."""
        given = token.encode()
        found: Principal | None = None
        for candidate, principal in self._entries:
            # Compare against every token (no early exit) so timing tells nothing about which one matched.
            if hmac.compare_digest(candidate, given):
                found = principal
        return found


def _principal(grant: Grant) -> Principal:
    return Principal(user=normalise_user(grant.user), role=grant.role, scopes=frozenset(grant.scopes))


class JwtVerifier:
    """Verifies OAuth2 access tokens (JWTs) against a JWKS from a file or a URL (PyJWT does the cryptography)."""

    def __init__(
        self,
        jwks: str,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        algorithms: Iterable[str] = ("RS384", "ES384", "RS256", "ES256"),
        leeway_s: float = 30.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(algorithms)
        self.leeway_s = leeway_s
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        if jwks.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(jwks, cache_keys=True, lifespan=300)
        else:
            self._keys = jwt.PyJWKSet.from_json(Path(jwks).read_text())

    def _key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        if self._keys is None:
            raise jwt.InvalidTokenError("no JWKS is configured to verify the token with")
        kid = jwt.get_unverified_header(token).get("kid")
        keys = [k for k in self._keys.keys if kid is None or k.key_id == kid]
        if not keys:
            raise jwt.InvalidTokenError("no key of the JWKS matches the token's kid")
        return keys[0].key

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; raises Unauthenticated with the reason otherwise."""
        try:
            claims = jwt.decode(
                token,
                self._key(token),
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except (jwt.PyJWTError, ValueError) as error:
            raise Unauthenticated(f"invalid access token: {type(error).__name__}") from error
        scopes = claims.get("scope", claims.get("scp", ""))
        scope_list = scopes.split() if isinstance(scopes, str) else [str(s) for s in scopes]
        user = str(claims.get("client_id") or claims["sub"])
        return Principal(user=normalise_user(user), scopes=frozenset(scope_list), kind="jwt")


class Authenticator:
    """Static tokens first, then JWTs; one per service, built from its settings."""

    def __init__(
        self,
        tokens: TokenTable,
        jwt_verifier: JwtVerifier | None = None,
        *,
        protect_operations: bool = False,
    ) -> None:
        self.tokens = tokens
        self.jwt = jwt_verifier
        self.protect_operations = protect_operations

    @property
    def configured(self) -> bool:
        """Whether any credential can be accepted at all."""
        return len(self.tokens) > 0 or self.jwt is not None

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header; Unauthenticated (with the reason) otherwise."""
        if not authorization:
            raise Unauthenticated("missing bearer token")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("the Authorization header is not 'Bearer <token>'")
        principal = self.tokens.resolve(credential)
        if principal is not None:
            return principal
        if self.jwt is not None and credential.count(".") == 2:
            return self.jwt.verify(credential)
        raise Unauthenticated("unknown bearer token")


class AuthSettings(BaseModel):
    """The authentication settings every service has (fields of ``VigilSettings``, gathered here)."""

    development: bool
    tokens: dict[str, Grant]
    tokens_file: Path | None
    jwks: str | None
    jwt_issuer: str | None
    jwt_audience: str | None
    protect_operations: bool


DEMO_TOKENS: dict[str, Grant] = {
    "dev-system-token": Grant(user="dev-system", scopes=["system/*.*"]),
}
"""Accepted only in development mode: every scope, for trying the API by hand."""


def build_authenticator(config: AuthSettings, *, extra: dict[str, Grant] | None = None) -> Authenticator:
    """The service's authenticator: configured tokens (file and setting), demo tokens in development, JWKS."""
    tokens: dict[str, Grant] = dict(DEMO_TOKENS) if config.development else {}
    if config.tokens_file is not None:
        tokens.update(read_token_file(config.tokens_file))
    tokens.update(config.tokens)
    tokens.update(extra or {})
    for token, grant in tokens.items():
        check_token(token, name=f"the token of {grant.user}", development=config.development)
    verifier = JwtVerifier(config.jwks, issuer=config.jwt_issuer, audience=config.jwt_audience) if config.jwks else None
    authenticator = Authenticator(TokenTable(tokens), verifier, protect_operations=config.protect_operations)
    if not authenticator.configured:
        log.warning("no HTTP credentials configured: every protected route answers 401")
    return authenticator


def current_principal(request: Request) -> Principal:
    """The caller (FastAPI dependency); 401 without a usable credential."""
    authenticator: Authenticator = request.app.state.auth
    principal = authenticator.authenticate(request.headers.get("authorization"))
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def requires(*scopes: str) -> Callable[[Principal], Principal]:
    """A dependency: the caller must hold every one of ``scopes`` (403 with the missing one otherwise)."""

    def check(principal: CurrentPrincipal) -> Principal:
        for scope in scopes:
            if not principal.allows(scope):
                raise Forbidden(f"this call needs the scope {scope}", scope=scope)
        return principal

    return check


async def operations_access(request: Request) -> None:
    """``/health``, ``/ready`` and ``/metrics``: open unless the service is configured to protect them.

    Async, so FastAPI runs it on the loop: a plain ``def`` dependency costs every liveness probe a hop through the
    thread pool (and its waits for the interpreter lock while a worker thread maps a large Bundle). A remote JWKS may
    be fetched while verifying, so that case still goes to the pool.
    """
    authenticator: Authenticator | None = getattr(request.app.state, "auth", None)
    if authenticator is None or not authenticator.protect_operations:
        return
    if authenticator.jwt is None:
        authenticator.authenticate(request.headers.get("authorization"))  # static tokens: a lookup, no I/O
    else:
        await run_in_threadpool(authenticator.authenticate, request.headers.get("authorization"))
