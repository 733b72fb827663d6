"""Settings of the shadow service (env prefix ``SHADOW_``, stack-wide values also from ``VIGIL_``).

The shadow service's only output topic for scores is the stack's shadow score topic. ``output_topic`` exists so
that a deployment can name it explicitly, and the validator refuses any value equal to the live score topic: a
misconfigured shadow fails at start-up instead of reaching clinicians.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from vigil_runtime.auth import check_token, read_secret
from vigil_runtime.settings import VigilSettings


class LiveTopicRefused(ValueError):
    """A shadow component was pointed at the live score topic."""


class Settings(VigilSettings):
    """The shadow service's settings."""

    model_config = SettingsConfigDict(env_prefix="SHADOW_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    http_port: int = 8003
    group_id: str = "vigil-shadow"
    """Kafka consumer group of the shadow scorer (never the live scorer's group)."""
    output_topic: str | None = None
    """Shadow score topic; None means ``topics.scores_shadow``. The live score topic is refused."""
    model_names: list[str] = Field(default_factory=lambda: ["sepsis"])
    """Registry models whose shadow-stage versions this service scores."""
    registry_url: str | None = "http://127.0.0.1:8005"
    """Registry base URL (``GET /models/{name}/versions?stage=shadow``); None: local models only."""
    registry_token: str | None = None
    """Bearer token for the registry's reads (prefer ``registry_token_file``)."""
    registry_token_file: Path | None = None
    """A file holding the registry token (the stack generates one per caller under ``.vigil/secrets``)."""
    lifecycle_public_key_file: Path | None = None
    """The registry's Ed25519 public key(s), PEM: lifecycle events are acted on only when signed by one
    (``VIGIL_LIFECYCLE_PUBLIC_KEY_FILE`` stack-wide). Without it every event is refused outside development."""
    registry_timeout_s: float = Field(default=5.0, gt=0)
    model_cache_dir: Path = Path(".vigil/shadow/models")
    """Where downloaded packages are unpacked."""
    local_models: list[str] = Field(default_factory=list)
    """Packages scored in shadow without a registry, as ``NAME:VERSION=PATH`` (development and tests)."""
    batch_max_records: int = Field(default=1000, ge=1)
    batch_timeout_ms: int = Field(default=5, ge=0)
    dedupe_ids: int = Field(default=1024, ge=16)
    checkpoint_interval_s: float = Field(default=1.0, ge=0)
    """How often feature-state snapshots go to the changelog, after which the offsets are committed."""
    restore_timeout_s: float = Field(default=60.0, gt=0)
    """How long reading an assigned partition's states back from the changelog may take."""
    horizon_hours: float = Field(default=6.0, ge=0)
    """A prediction at data time t is positive iff t >= onset - horizon (PhysioNet's SepsisLabel: 6 h)."""
    bootstrap_iterations: int = Field(default=200, ge=0)
    """Paired bootstrap resamples (of encounters) for the CIs of the differences; 0 disables the CIs."""
    bootstrap_seed: int = 2019
    """Fixed seed: the same data always gives the same CIs (live and replay reports are comparable)."""
    ci_level: float = Field(default=0.95, gt=0, lt=1)
    calibration_bins: int = Field(default=10, ge=2)
    min_subgroup_positives: int = Field(default=10, ge=1)
    """A subgroup enters the disparity ratio only with at least this many septic (positive) encounters."""
    publish_every_s: float = Field(default=300.0, gt=0)
    """How often comparison summaries are published to the comparisons topic."""
    min_labelled_hours_to_publish: int = Field(default=1, ge=0)
    """No summary is published for a candidate with fewer labelled joint hours."""
    replay_max_concurrent: int = Field(default=1, ge=1)
    """Replay jobs (``POST /replays``) running at once: each reads the observation log and scores in memory."""
    replay_max_pending: int = Field(default=4, ge=1)
    """Replay jobs queued or running at most; more is refused with 429."""
    replay_keep: int = Field(default=20, ge=1)
    """Finished replay jobs kept (with their reports) in memory."""
    replay_warmup_hours: float = Field(default=336.0, ge=0)
    """Hours before a replay's range applied without scoring (as ``vigil replay --warmup-hours``)."""

    home: Path | None = None
    """``VIGIL_HOME`` (set by ``vigil up``): when given, the default model cache lives under it."""

    @model_validator(mode="after")
    def _derive_locations(self) -> Settings:
        if self.home is not None and "model_cache_dir" not in self.model_fields_set:
            self.model_cache_dir = self.home / "shadow" / "models"
        return self

    @model_validator(mode="after")
    def _read_token(self) -> Settings:
        if self.registry_token is None and self.registry_token_file is not None:
            self.registry_token = read_secret(self.registry_token_file)
        if self.registry_token is not None:
            check_token(self.registry_token, name="the registry token", development=self.development)
        return self

    @property
    def shadow_topic(self) -> str:
        """The one topic shadow scores go to."""
        return self.output_topic or self.topics.scores_shadow

    @model_validator(mode="after")
    def _refuse_live_output(self) -> Settings:
        if self.shadow_topic == self.topics.scores_live:
            raise LiveTopicRefused(
                f"the shadow output topic may not be the live score topic ({self.topics.scores_live})"
            )
        return self
