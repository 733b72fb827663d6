"""The settings base every service extends: one typed class per service, built once at start-up.

Each service's class sets its own ``env_prefix`` (``INGEST_``, ``SCORER_``...). Values common to the whole
stack (the broker address, the topic prefix) may also be given once with the ``VIGIL_`` prefix; a
service-specific variable wins over the ``VIGIL_`` one.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from vigil_contracts.topics import Topics

PLACEHOLDER_SECRETS = frozenset({"", "changethis", "changeme", "secret", "dev", "development"})


class VigilSettings(BaseSettings):
    """Settings shared by every Vigil service."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_", env_file=".env", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated."""
    topic_prefix: str = "vigil."
    """Prefix of every topic name; tests give each run its own prefix."""
    partitions: int = Field(default=6, ge=1)
    """Partitions of the topics Vigil creates; events are keyed by encounter, so order holds per encounter."""
    replication_factor: int = Field(default=1, ge=1)
    """Replication factor of the topics Vigil creates (3 in production with three brokers)."""
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    log_json: bool = True
    """Structured JSON logs (PHI-free fields only); plain text when false."""
    development: bool = False
    """Development mode: allows the built-in demo tokens and other conveniences refused in production."""

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
