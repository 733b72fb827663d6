"""The common auth module: tokens, JWTs against a JWKS with SMART scopes, user normalisation, 401/403 answers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from vigil_runtime.auth import (
    AuthSettings,
    Grant,
    JwtVerifier,
    Unauthenticated,
    build_authenticator,
    normalise_user,
    requires,
    same_person,
    scope_allows,
)

TOKEN = "a-static-token-for-the-tests-0123456789"


@pytest.mark.parametrize(
    ("granted", "required", "allowed"),
    [
        ("system/Observation.write", "system/Observation.write", True),
        ("system/*.write", "system/Observation.write", True),
        ("system/*.*", "system/Observation.write", True),
        ("system/Observation.cud", "system/Observation.write", True),
        ("system/Observation.cruds", "system/*.read", False),  # a type's scope does not cover every type
        ("system/Observation.read", "system/Observation.write", False),
        ("system/*.rs", "system/RiskAssessment.read", True),
        ("user/Observation.write", "system/Observation.write", False),
        ("patient/*.read", "system/*.read", False),
        ("system/Patient.write", "system/Observation.write", False),
    ],
)
def test_smart_scopes(granted: str, required: str, allowed: bool) -> None:
    assert scope_allows(granted, required) is allowed


@pytest.mark.parametrize("other", ["mallory", "Mallory ", "  MALLORY", "\uff2d\uff41\uff4c\uff4c\uff4f\uff52\uff59"])
def test_user_ids_are_one_person_once_normalised(other: str) -> None:
    assert normalise_user(other) == "mallory"
    assert same_person("Mallory ", other)
    assert not same_person("mallory", "mallory2") and not same_person(None, "mallory")


def settings(development: bool = False, **over: Any) -> AuthSettings:
    fields: dict[str, Any] = {
        "development": development,
        "tokens": {TOKEN: Grant(user="Sim ", scopes=["system/Observation.write"])},
        "tokens_file": None,
        "jwks": None,
        "jwt_issuer": None,
        "jwt_audience": None,
        "protect_operations": False,
    }
    fields.update(over)
    return AuthSettings(**fields)


@pytest.mark.parametrize("token", ["changeme", "dev-system-token", "short-token", ""])
def test_placeholder_demo_and_short_tokens_are_refused_outside_development(token: str) -> None:
    with pytest.raises(ValueError, match=r"placeholder|demo token|shorter"):
        build_authenticator(settings(tokens={token: Grant(user="x")}))
    # Development mode is the subject of this test: the same tokens are let through there and only there.
    build_authenticator(settings(development=True, tokens={token: Grant(user="x")}))


def test_demo_tokens_only_in_development() -> None:
    with pytest.raises(Unauthenticated):
        build_authenticator(settings()).authenticate("Bearer dev-system-token")  # refused when secured
    # Development mode is the subject of this test: the demo token works there and only there.
    assert build_authenticator(settings(development=True)).authenticate("Bearer dev-system-token").user == "dev-system"


def test_tokens_from_a_file_resolve_to_normalised_principals(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({TOKEN + "-file": {"user": "Dr. Alice", "scopes": ["system/*.read"]}}))
    auth = build_authenticator(settings(tokens={}, tokens_file=path))
    principal = auth.authenticate(f"Bearer {TOKEN}-file")
    assert principal.user == "dr. alice" and principal.allows("system/Observation.read")
    for header in (None, "", "Basic abc", "Bearer", f"Bearer {TOKEN}x"):
        with pytest.raises(Unauthenticated):
            auth.authenticate(header)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**public, "kid": "ehr-1", "alg": "RS384", "use": "sig"}]}))
    return path


def access_token(key: Any, **claims: Any) -> str:
    body = {
        "iss": "https://auth.hospital.example",
        "aud": "https://vigil.hospital.example",
        "sub": "epic-backend",
        "exp": int(time.time()) + 300,
        "scope": "system/Observation.write system/Patient.write",
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS384", headers={"kid": "ehr-1"})


def test_a_smart_backend_jwt_is_verified_against_the_jwks(jwks_file: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(
        str(jwks_file), issuer="https://auth.hospital.example", audience="https://vigil.hospital.example"
    )
    principal = verifier.verify(access_token(rsa_key))
    assert principal.kind == "jwt" and principal.user == "epic-backend"
    assert principal.allows("system/Observation.write") and not principal.allows("system/*.read")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for bad in (
        access_token(other),  # signed by someone else
        access_token(rsa_key, exp=int(time.time()) - 3600),  # expired
        access_token(rsa_key, aud="https://elsewhere.example"),
        access_token(rsa_key, iss="https://attacker.example"),
        jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "k" * 32, algorithm="HS256"),  # alg confusion
    ):
        with pytest.raises(Unauthenticated, match="invalid access token"):
            verifier.verify(bad)


def test_routes_answer_401_with_a_challenge_and_403_with_the_missing_scope(
    jwks_file: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    from vigil_runtime.auth import AuthError

    app = FastAPI()
    app.state.auth = build_authenticator(settings(jwks=str(jwks_file)))

    @app.exception_handler(AuthError)
    async def refused(_: Any, error: AuthError) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse(
            {"detail": error.reason}, status_code=error.status, headers={"WWW-Authenticate": error.www_authenticate()}
        )

    @app.get("/data", dependencies=[Depends(requires("system/*.read"))])
    async def data() -> dict[str, str]:
        return {"ok": "yes"}

    client = TestClient(app)
    missing = client.get("/data")
    assert missing.status_code == 401 and missing.json()["detail"] == "missing bearer token"
    assert missing.headers["www-authenticate"].startswith('Bearer realm="vigil", error="invalid_token"')
    writer = client.get("/data", headers={"Authorization": f"Bearer {TOKEN}"})
    assert writer.status_code == 403 and "system/*.read" in writer.json()["detail"]
    assert 'error="insufficient_scope"' in writer.headers["www-authenticate"]
    reader = access_token(rsa_key, scope="system/*.read", aud=None)
    assert client.get("/data", headers={"Authorization": f"Bearer {reader}"}).status_code == 200
