"""Settings of the drift service (env prefix ``DRIFT_``, stack-wide values also from ``VIGIL_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from vigil_runtime.settings import VigilSettings


class Settings(VigilSettings):
    """The drift service's settings."""

    model_config = SettingsConfigDict(env_prefix="DRIFT_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    http_port: int = 8004
    group_id: str = "vigil-drift"
    """Kafka consumer group."""
    reference_path: str = ""
    """The production model's ``reference.json`` (from its package). Without one, inputs are not judged and
    prediction and performance baselines come from each model's first live windows."""
    model_name: str = ""
    """The model the reference belongs to (its score baseline applies to that model's scores)."""
    thresholds: str = ""
    """Per-model threshold overrides as JSON, e.g. ``{"*": {"open_after": 3}, "sepsis-hgb": {"ece": 0.08}}``
    (``inputs`` for the feature detectors); a path to a JSON file works too."""
    max_records: int = 1000
    """Records per consumed batch."""
    batch_timeout_ms: int = 200
    checkpoint_interval_s: float = Field(default=10.0, ge=0)
    """How often the detectors' state goes to the changelog, after which the offsets are committed. The whole state
    is written each time (megabytes once the windows are full, compressed), so less often than shadow's per-encounter
    snapshots; a crash replays at most this much of the stream."""
    restore_timeout_s: float = Field(default=60.0, gt=0)
    """How long reading the state back from the changelog may take."""
