"""Settings of the scorer service (env prefix ``SCORER_``, stack-wide values also from ``VIGIL_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from vigil_runtime.settings import VigilSettings


class Settings(VigilSettings):
    """The scorer service's settings."""

    model_config = SettingsConfigDict(env_prefix="SCORER_", env_file=".env", extra="ignore")

    http_port: int = 8002
    group_id: str = "vigil-scorer"
    """Kafka consumer group: scorer processes in one group share the observation partitions."""
    model_name: str = "sepsis"
    """The registry model whose production version this scorer serves."""
    registry_url: str = "http://127.0.0.1:8005"
    """Registry base URL (``GET /models/{name}/production``)."""
    registry_token: str | None = None
    """Bearer token for the registry, when it requires one for reads."""
    registry_timeout_s: float = Field(default=5.0, gt=0)
    default_model_path: Path | None = None
    """Package used when no registry answers on first start; None: the repository's default package."""
    model_cache_dir: Path = Path(".vigil/scorer/models")
    """Where downloaded packages are unpacked (one folder per sha256)."""
    batch_max_records: int = Field(default=2000, ge=1)
    """Records per consumed batch at most. A batch holds what has arrived, so at a steady load batches stay small
    and this cap only matters when a backlog is worked off: larger batches amortise the per-batch costs (the model
    call, the score publication's round trip), 2,000 gave ~20% more throughput than 1,000 in the benchmark."""
    batch_timeout_ms: int = Field(default=5, ge=0)
    """How long the consumer waits to fill a batch when records trickle in."""
    idle_hours: float = Field(default=24.0, gt=0)
    """Evict an encounter after this many hours without data (by wall time and by data time)."""
    evict_every_s: float = Field(default=60.0, gt=0)
    """How often idle encounters are looked for."""
    dedupe_ids: int = Field(default=1024, ge=16)
    """Applied event ids remembered per encounter (re-published duplicates are recognised among them)."""
    max_future_skew_s: float = Field(default=300.0, ge=0)
    """A reading dated more than this after the scorer's clock is parked, never applied (ingest refuses it too;
    the topic may have other producers)."""
    checkpoint_interval_s: float = Field(default=1.0, ge=0)
    """How often the states changed since the last checkpoint go to the changelog and the offsets processed since
    are committed (0: after every batch). Scores are published with every batch regardless; after a crash at most
    this much input is replayed, reproducing the same score ids."""
    checkpoint_failures_unready: int = Field(default=3, ge=1)
    """Checkpoints failed in a row after which /ready fails and a critical alert is published (resolved by the next
    checkpoint written): a scorer must never run on silently while its offsets stop advancing."""
    restore_timeout_s: float = Field(default=60.0, gt=0)
    """Longest time a partition's state restore from the changelog may take."""
    registry_poll_s: float = Field(default=30.0, gt=0)
    """While on the default model (no registry at start), how often to ask the registry again."""
