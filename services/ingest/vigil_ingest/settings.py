"""Settings of the ingest service (env prefix ``INGEST_``, stack-wide values also from ``VIGIL_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from vigil_runtime.settings import VigilSettings


class Settings(VigilSettings):
    """The ingest service's settings."""

    model_config = SettingsConfigDict(env_prefix="INGEST_", env_file=".env", extra="ignore")

    http_port: int = 8001
    group_id: str = "vigil-ingest"
    """Kafka consumer group of the raw FHIR topic."""
    fhir_base: str = "/fhir"
    """Path of the FHIR REST base: Bundles are posted here, single resources to ``<base>/<type>``."""
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest accepted HTTP body; larger ones get 413 with an OperationOutcome."""
    dedupe_size: int = Field(default=500_000, ge=1)
    """Event ids remembered to drop redeliveries (bounded LRU; downstream dedupes by event id across restarts)."""
    state_size: int = Field(default=200_000, ge=100)
    """Patients, encounters and identifiers remembered for linkage (bounded)."""
    max_records: int = Field(default=500, ge=1)
    """Raw FHIR records per consumed batch."""
    batch_timeout_ms: int = Field(default=100, ge=1)
    """Longest wait to fill a batch."""
    strict_transactions: bool = False
    """Refuse a whole transaction Bundle (422, nothing published) when any entry is rejected. Off by default:
    ingest stores nothing, so a rejected reading is reported per entry and the rest is published."""
    max_future_skew_s: float = Field(default=300.0, ge=0)
    """A reading dated more than this after ingest's clock is refused (a clock error or a typo in the EHR)."""
    max_days_before_encounter: float = Field(default=14.0, gt=0)
    """A reading dated more than this before its encounter began is refused."""
    consume_raw_topic: bool = True
    """Run the Kafka consumer of the raw FHIR topic (off: HTTP only)."""
