"""Settings of the scorer service (env prefix ``SCORER_``, stack-wide values also from ``VIGIL_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict
from vigil_common.settings import VigilSettings


class Settings(VigilSettings):
    """The scorer service's settings."""

    model_config = SettingsConfigDict(env_prefix="SCORER_", env_file=".env", extra="ignore")

    http_port: int = 8002
    group_id: str = "vigil-scorer"
    """Kafka consumer group."""
