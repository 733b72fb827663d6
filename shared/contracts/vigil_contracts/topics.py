"""Topic names: constants beside the event contracts, under a configurable prefix.

Every topic is keyed by encounter (the lifecycle topic by model name), so each encounter's events stay in
order on one partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    """Topic suffixes; the full name is ``<prefix><suffix>``."""

    FHIR_RAW = "fhir.raw"
    """Raw FHIR R4 JSON published directly by EHR integrations (ingest consumes)."""
    OBSERVATIONS = "observations"
    """Canonical events: observations, retractions and encounter updates (ingest publishes)."""
    SCORES_LIVE = "scores.live"
    """Risk scores from the production model; bedside systems consume this topic only."""
    SCORES_SHADOW = "scores.shadow"
    """Risk scores from shadow candidates; never read by bedside systems."""
    OUTCOMES = "outcomes"
    """Delayed outcomes: sepsis onset, discharge, death."""
    ALERTS = "alerts"
    """Drift and performance alerts (opened and resolved)."""
    COMPARISONS = "comparisons"
    """Shadow-versus-live comparison summaries, consumed by the registry's promotion policy."""
    LIFECYCLE = "models.lifecycle"
    """Model lifecycle events from the registry; scorers act on them. Keyed by model name."""
    SCORER_STATE = "scorer.state"
    """Compacted changelog of the scorer's per-encounter feature state."""
    SHADOW_STATE = "shadow.state"
    """Compacted changelog of shadow's per-encounter feature state (restored on assignment, not re-read)."""
    DRIFT_STATE = "drift.state"
    """Compacted changelog of drift's detectors and counters (one snapshot per consumer group, in chunks)."""
    DEAD_LETTER = "deadletter"
    """Messages that could not be processed, with their reason."""


COMPACTED = frozenset({Topic.SCORER_STATE, Topic.SHADOW_STATE, Topic.DRIFT_STATE})


@dataclass(frozen=True)
class Topics:
    """Full topic names for one stack (one prefix)."""

    prefix: str = "vigil."

    def name(self, topic: Topic) -> str:
        """The full name of ``topic`` under this prefix."""
        return f"{self.prefix}{topic.value}"

    @property
    def fhir_raw(self) -> str:
        return self.name(Topic.FHIR_RAW)

    @property
    def observations(self) -> str:
        return self.name(Topic.OBSERVATIONS)

    @property
    def scores_live(self) -> str:
        return self.name(Topic.SCORES_LIVE)

    @property
    def scores_shadow(self) -> str:
        return self.name(Topic.SCORES_SHADOW)

    @property
    def outcomes(self) -> str:
        return self.name(Topic.OUTCOMES)

    @property
    def alerts(self) -> str:
        return self.name(Topic.ALERTS)

    @property
    def comparisons(self) -> str:
        return self.name(Topic.COMPARISONS)

    @property
    def lifecycle(self) -> str:
        return self.name(Topic.LIFECYCLE)

    @property
    def scorer_state(self) -> str:
        return self.name(Topic.SCORER_STATE)

    @property
    def shadow_state(self) -> str:
        return self.name(Topic.SHADOW_STATE)

    @property
    def drift_state(self) -> str:
        return self.name(Topic.DRIFT_STATE)

    @property
    def dead_letter(self) -> str:
        return self.name(Topic.DEAD_LETTER)

    def all(self) -> dict[Topic, str]:
        """Every topic of the stack by its suffix."""
        return {t: self.name(t) for t in Topic}
