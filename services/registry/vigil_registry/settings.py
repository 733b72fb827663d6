"""Settings of the registry service (env prefix ``REGISTRY_``, stack-wide values also from ``VIGIL_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict
from vigil_common.settings import VigilSettings


class Settings(VigilSettings):
    """The registry service's settings."""

    model_config = SettingsConfigDict(env_prefix="REGISTRY_", env_file=".env", extra="ignore")

    http_port: int = 8005
    group_id: str = "vigil-registry"
    """Kafka consumer group."""
