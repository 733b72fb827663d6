"""The settings base every service extends: one typed class per service, built once at start-up.

Each service's class sets its own ``env_prefix`` (``INGEST_``, ``SCORER_``...). Values common to the whole
stack (the broker address, the topic prefix) may also be given once with the ``VIGIL_`` prefix; a
service-specific variable wins over the ``VIGIL_`` one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from vigil_contracts.topics import Topics
from vigil_runtime.auth import AuthSettings, Grant
from vigil_runtime.kafka_security import KafkaConnection, KafkaSecurityError, SaslMechanism, SecurityProtocol

PLACEHOLDER_SECRETS = frozenset({"", "changethis", "changeme", "secret", "dev", "development"})


class VigilSettings(BaseSettings):
    """Settings shared by every Vigil service."""

    # Validation errors must not echo tokens back (they reach logs and terminals).
    model_config = SettingsConfigDict(env_prefix="VIGIL_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated."""
    topic_prefix: str = "vigil."
    """Prefix of every topic name; tests give each run its own prefix."""
    partitions: int = Field(default=6, ge=1)
    """Partitions of the topics Vigil creates; events are keyed by encounter, so order holds per encounter."""
    replication_factor: int | None = Field(default=None, ge=1)
    """Replication factor of the topics Vigil creates; None: three where the cluster has three brokers, else all
    it has (``vigil_runtime.replication``)."""
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    log_json: bool = True
    """Structured JSON logs (PHI-free fields only); plain text when false."""
    log_repeat_interval_s: float = Field(default=10.0, ge=0)
    """A repeated warning or error (same call site and message) is logged once per this interval, with the count of
    those held back (0: every one is logged)."""
    stop_timeout_s: float = Field(default=20.0, gt=0)
    """The bound of a graceful stop's steps (the broker's in-flight batch, the producers' flush...); with the 5 s
    HTTP drain before it, inside Kubernetes' default 30 s between SIGTERM and SIGKILL. A step that overruns is left
    behind and logged (``vigil_runtime.shutdown``)."""
    development: bool = False
    """Development mode: allows the built-in demo tokens and other conveniences refused in production."""
    kafka_security_protocol: SecurityProtocol = "SASL_SSL"
    """``SASL_SSL`` (TLS + SCRAM); ``PLAINTEXT`` is refused outside development mode."""
    kafka_ca_file: str | None = None
    """PEM file of the CA that signed the broker's certificate (None: the system's trust store)."""
    kafka_sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    kafka_username: str | None = None
    """This service's Kafka principal (``ingest``, ``scorer``...)."""
    kafka_password: SecretStr | None = None
    """The principal's password; prefer ``kafka_password_file`` (a 0600 file) over the environment."""
    kafka_password_file: str | None = None
    """File holding the principal's password (read at start; wins over ``kafka_password``)."""
    auth_tokens_file: Path | None = None
    """JSON ``{token: {"user", "role", "scopes"}}`` of the static bearer tokens this service accepts (the stack
    generates it under ``.vigil/secrets``). Demo tokens and tokens shorter than 24 characters are refused outside
    development mode."""
    auth_tokens: dict[str, Grant] = Field(default_factory=dict)
    """More static tokens, as JSON in the environment (same shape as the file)."""
    auth_jwks: str | None = None
    """JWKS for OAuth2 access tokens (SMART Backend Services): a file path or an https URL."""
    auth_jwt_issuer: str | None = None
    """Required ``iss`` of access tokens (None: not checked)."""
    auth_jwt_audience: str | None = None
    """Required ``aud`` of access tokens (None: not checked)."""
    auth_protect_operations: bool = False
    """Require a credential on ``/health``, ``/ready`` and ``/metrics`` too (open by default for probes)."""
    tracing_exporter: Literal["otlp", "console", "none"] | None = None
    """OpenTelemetry traces exporter: ``otlp`` (OTLP over HTTP/protobuf), ``console`` or ``none``. None (the default):
    the standard ``OTEL_TRACES_EXPORTER``, else ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else off."""
    tracing_endpoint: str | None = None
    """Full OTLP/HTTP traces URL (``http://collector:4318/v1/traces``); None: the exporter reads
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` itself."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Service prefix first, then the stack-wide ``VIGIL_`` prefix, then ``.env``."""
        stack_wide = EnvSettingsSource(settings_cls, env_prefix="VIGIL_")
        return init_settings, env_settings, stack_wide, dotenv_settings, file_secret_settings

    @property
    def topics(self) -> Topics:
        """The topic names under this stack's prefix."""
        return Topics(self.topic_prefix)

    @property
    def kafka(self) -> KafkaConnection:
        """How this service's Kafka clients connect (the one helper every client uses)."""
        password = self.kafka_password
        if self.kafka_password_file:
            try:
                password = SecretStr(Path(self.kafka_password_file).read_text().strip())
            except OSError as error:
                # The path is configuration, not a secret; the error says why it could not be read.
                raise KafkaSecurityError(f"kafka_password_file {self.kafka_password_file}: {error.strerror}") from None
        return KafkaConnection(
            bootstrap_servers=self.kafka_bootstrap_servers,
            security_protocol=self.kafka_security_protocol,
            ca_file=self.kafka_ca_file,
            sasl_mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_username,
            password=password,
        )

    @model_validator(mode="after")
    def _plaintext_only_in_development(self) -> VigilSettings:
        if self.kafka_security_protocol == "PLAINTEXT" and not self.development:
            raise ValueError("kafka_security_protocol PLAINTEXT is refused outside development mode")
        return self

    def auth(self) -> AuthSettings:
        """The authentication settings, gathered for ``vigil_runtime.auth.build_authenticator``."""
        return AuthSettings(
            development=self.development,
            tokens=self.auth_tokens,
            tokens_file=self.auth_tokens_file,
            jwks=self.auth_jwks,
            jwt_issuer=self.auth_jwt_issuer,
            jwt_audience=self.auth_jwt_audience,
            protect_operations=self.auth_protect_operations,
        )

    @model_validator(mode="after")
    def _check_prefix(self) -> VigilSettings:
        if self.topic_prefix and not self.topic_prefix.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError("topic_prefix may only hold letters, digits, '.', '_' and '-'")
        return self


def refuse_placeholder(value: str, *, name: str, development: bool) -> str:
    """Refuse an empty or placeholder secret outside development mode (the template's 'changethis' check)."""
    if not development and value.strip().lower() in PLACEHOLDER_SECRETS:
        raise ValueError(f"{name} is a placeholder; set a real secret or enable development mode")
    return value
