"""Settings of the drift service (env prefix ``DRIFT_``, stack-wide values also from ``VIGIL_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict
from vigil_common.settings import VigilSettings


class Settings(VigilSettings):
    """The drift service's settings."""

    model_config = SettingsConfigDict(env_prefix="DRIFT_", env_file=".env", extra="ignore")

    http_port: int = 8004
    group_id: str = "vigil-drift"
    """Kafka consumer group."""
