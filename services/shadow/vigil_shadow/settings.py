"""Settings of the shadow service (env prefix ``SHADOW_``, stack-wide values also from ``VIGIL_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict
from vigil_common.settings import VigilSettings


class Settings(VigilSettings):
    """The shadow service's settings."""

    model_config = SettingsConfigDict(env_prefix="SHADOW_", env_file=".env", extra="ignore")

    http_port: int = 8003
    group_id: str = "vigil-shadow"
    """Kafka consumer group."""
