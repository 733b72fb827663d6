"""Settings of the ingest service (env prefix ``INGEST_``, stack-wide values also from ``VIGIL_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from vigil_runtime.settings import VigilSettings


class Settings(VigilSettings):
    """The ingest service's settings."""

    model_config = SettingsConfigDict(env_prefix="INGEST_", env_file=".env", extra="ignore", hide_input_in_errors=True)

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
    publish_timeout_s: float = Field(default=5.0, gt=0, le=120)
    """Longest an HTTP request waits for the broker to acknowledge its events (metadata, buffer and acks=all
    included). Past it the request is refused with 503 and ``Retry-After``: nothing it carried counts as accepted,
    and a retry is safe (event ids are deterministic, so anything that did reach the broker is deduplicated)."""
    retry_after_s: int = Field(default=5, ge=1)
    """``Retry-After`` (seconds) on a 503 refusal while the broker cannot take a write."""
    consume_raw_topic: bool = True
    """Run the Kafka consumer of the raw FHIR topic (off: HTTP only)."""
