"""Settings of the registry service (env prefix ``REGISTRY_``, stack-wide values also from ``VIGIL_``)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from vigil_runtime.settings import VigilSettings, refuse_placeholder


class Role(StrEnum):
    """What a token holder may do (see docs/registry.md for the permission table)."""

    VIEWER = "viewer"
    DATA_SCIENTIST = "data_scientist"
    CLINICAL_APPROVER = "clinical_approver"
    ANALYST = "analyst"
    """Reads, and replays past ranges against versions (through shadow); decides nothing."""
    ADMIN = "admin"


class TokenGrant(BaseModel):
    """Who a bearer token stands for."""

    user: str = Field(min_length=1)
    role: Role


DEMO_TOKENS: dict[str, TokenGrant] = {
    "dev-viewer-token": TokenGrant(user="viewer", role=Role.VIEWER),
    "dev-scientist-token": TokenGrant(user="dana-scientist", role=Role.DATA_SCIENTIST),
    "dev-approver-token": TokenGrant(user="dr-alice", role=Role.CLINICAL_APPROVER),
    "dev-approver2-token": TokenGrant(user="dr-bob", role=Role.CLINICAL_APPROVER),
    "dev-analyst-token": TokenGrant(user="ann-analyst", role=Role.ANALYST),
    "dev-admin-token": TokenGrant(user="admin", role=Role.ADMIN),
}
"""Tokens accepted only in development mode (``VIGIL_DEVELOPMENT=true``); refused anywhere else."""

MIN_TOKEN_LENGTH = 24
"""Outside development a token must be at least this long (a guessable token is a placeholder)."""


class Settings(VigilSettings):
    """The registry service's settings."""

    # Validation errors must not echo tokens back (they reach logs and terminals).
    model_config = SettingsConfigDict(
        env_prefix="REGISTRY_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    http_port: int = 8005
    group_id: str = "vigil-registry"
    """Kafka consumer group."""
    database_url: str = "sqlite:///.vigil/registry/registry.db"
    """SQLAlchemy URL: a SQLite file by default, ``postgresql+psycopg://user:pw@host/db`` in production."""
    artifact_root: Path = Path(".vigil/registry/artifacts")
    """Content-addressed store of model packages: ``<root>/<sha[:2]>/<package sha256>/``."""
    public_url: str = "http://127.0.0.1:8005"
    """Base URL scorers reach the registry at; lifecycle events carry artifact URLs under it."""
    tokens: dict[str, TokenGrant] = Field(default_factory=dict)
    """``REGISTRY_TOKENS``: JSON ``{token: {"user": ..., "role": ...}}``. Development mode adds DEMO_TOKENS."""
    anonymous_read: bool = False
    """Allow GET requests without a token (always allowed in development mode)."""
    kafka_enabled: bool = True
    """Run the Kafka side (consumer and lifecycle outbox relay); the core works without it."""
    migrate_on_start: bool = True
    """Run Alembic ``upgrade head`` at start-up."""
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    """How often the outbox relay looks for unpublished lifecycle events when not woken by a commit."""
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    """Largest package archive accepted."""
    console_enabled: bool = True
    """Serve the web console under ``/ui`` (sign-in with the same tokens as the API)."""
    console_idle_minutes: float = Field(default=30.0, gt=0)
    """A console session left idle this long is signed out."""
    shadow_url: str | None = "http://127.0.0.1:8003"
    """The shadow service's base URL: the console starts replays there (``POST /replays``); None hides them."""
    shadow_timeout_s: float = Field(default=10.0, gt=0)
    """How long the console waits for shadow's answer (starting a job is quick; the job runs in shadow)."""

    signing_key_file: Path = Path(".vigil/secrets/lifecycle/registry-signing.key")
    """The Ed25519 key lifecycle events are signed with: made on first use (mode 0600), its public key written
    beside it (``.pub``) for the scorers and shadow (``VIGIL_LIFECYCLE_PUBLIC_KEY_FILE``)."""

    home: Path | None = None
    """``VIGIL_HOME`` (set by ``vigil up``): when given, the default database and artifact store live under it."""
    registry_url: str | None = None
    """``VIGIL_REGISTRY_URL`` (set by ``vigil up``): the default ``public_url``."""

    @model_validator(mode="after")
    def _derive_locations(self) -> Settings:
        if self.home is not None:
            if "database_url" not in self.model_fields_set:
                self.database_url = f"sqlite:///{self.home / 'registry' / 'registry.db'}"
            if "artifact_root" not in self.model_fields_set:
                self.artifact_root = self.home / "registry" / "artifacts"
            if "signing_key_file" not in self.model_fields_set:
                self.signing_key_file = self.home / "secrets" / "lifecycle" / "registry-signing.key"
        if "public_url" not in self.model_fields_set:
            self.public_url = self.registry_url or f"http://127.0.0.1:{self.http_port}"
        return self

    @model_validator(mode="after")
    def _check_tokens(self) -> Settings:
        for token, grant in self.tokens.items():
            refuse_placeholder(token, name=f"REGISTRY_TOKENS token of {grant.user}", development=self.development)
            if not self.development:
                if token in DEMO_TOKENS:
                    raise ValueError(f"the demo token of {grant.user} is refused outside development mode")
                if len(token) < MIN_TOKEN_LENGTH:
                    raise ValueError(
                        f"the token of {grant.user} is shorter than {MIN_TOKEN_LENGTH} characters "
                        "(outside development mode)"
                    )
        return self

    def effective_tokens(self) -> dict[str, TokenGrant]:
        """Configured tokens, plus the documented demo tokens in development mode only."""
        return {**DEMO_TOKENS, **self.tokens} if self.development else dict(self.tokens)

    def artifact_url(self, name: str, version: str) -> str:
        """Where a scorer downloads a version's package (a tar.gz of the package folder)."""
        return f"{self.public_url.rstrip('/')}/models/{name}/versions/{version}/artifact"
