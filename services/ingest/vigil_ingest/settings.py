"""Settings of the ingest service (env prefix ``INGEST_``, stack-wide values also from ``VIGIL_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from vigil_common.settings import VigilSettings


class Settings(VigilSettings):
    """The ingest service's settings."""

    model_config = SettingsConfigDict(env_prefix="INGEST_", env_file=".env", extra="ignore")

    http_port: int = 8001
    group_id: str = "vigil-ingest"
    """Kafka consumer group."""
