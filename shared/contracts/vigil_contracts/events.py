"""Typed event contracts: what services publish to each other, named for what happened.

Every event carries a ``type`` discriminator, a ``schema_version``, a deterministic ``event_id`` (a UUIDv5 of
the event's natural key, so a redelivered or recomputed event has the same id and consumers can dedupe), the
time it happened (``occurred_at``) and the ``key`` it is published under (the encounter; the model name for
lifecycle events). FastStream publishes these models as the AsyncAPI document's message schemas.

Patient identifiers travel inside events (the broker is inside the clinical network) but never in logs or
metric labels: log ``event_id`` values and counts only.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

VIGIL_NAMESPACE = uuid.UUID("5b1c3f0e-8a61-4c38-9a8e-7f2f0c6d9e21")
"""Namespace of every deterministic id Vigil makes."""


def deterministic_id(*parts: object) -> str:
    """A UUIDv5 over the parts' string forms: the same natural key always gives the same id."""
    return str(uuid.uuid5(VIGIL_NAMESPACE, "\x1f".join("" if p is None else str(p) for p in parts)))


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class Event(BaseModel):
    """Fields every event has."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    SCHEMA_VERSION: ClassVar[int] = 1

    schema_version: int = Field(default=1, description="Version of this event's schema.", examples=[1])
    event_id: str = Field(description="Deterministic id (UUIDv5 of the event's natural key).")
    occurred_at: datetime = Field(description="When the event happened (UTC).")
    key: str = Field(
        description="The Kafka key it is published under: the encounter id (model name for lifecycle events)."
    )

    def key_bytes(self) -> bytes:
        """The Kafka record key."""
        return self.key.encode()


# --- canonical clinical data (topic: observations) -------------------------------------------------


class SourceRef(BaseModel):
    """Where a canonical event came from: the FHIR resource, never its content."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    resource_type: str = Field(examples=["Observation"])
    resource_id: str = Field(examples=["blood-pressure"])
    version_id: str | None = Field(default=None, description="meta.versionId when the sender gave one.")
    system: str | None = Field(default=None, description="The sending system or bundle id, when known.")


class ObservationRecorded(Event):
    """A canonical reading: one feature of the vocabulary, in its canonical unit, at the time it was measured."""

    type: Literal["observation.recorded"] = "observation.recorded"
    encounter: str | None = Field(
        description="Encounter id; None when no encounter could be linked.", examples=["enc-1"]
    )
    patient: str | None = Field(description="Patient id as the EHR knows it.", examples=["pat-1"])
    feature: str = Field(description="Canonical feature name from the vocabulary.", examples=["heart_rate"])
    value: float = Field(description="Value in the feature's canonical unit.", examples=[88.0])
    unit: str = Field(description="Canonical UCUM unit.", examples=["/min"])
    observed_at: datetime = Field(description="Clinically relevant time (effective time, else issued).")
    status: Literal["final", "amended", "corrected", "preliminary", "registered"] = "final"
    comparator: Literal["<", "<=", ">=", ">"] | None = Field(
        default=None, description="When the source value was a bound, e.g. troponin '<0.01'."
    )
    source: SourceRef
    original_value: float | None = Field(default=None, description="Value as sent, before unit conversion.")
    original_unit: str | None = Field(default=None, description="Unit as sent, before conversion.")

    @staticmethod
    def make_id(source: SourceRef, feature: str, observed_at: datetime) -> str:
        """Id from the resource identity (id and version), feature and time."""
        return deterministic_id(
            "obs", source.resource_type, source.resource_id, source.version_id, feature, observed_at.isoformat()
        )


class ObservationRetracted(Event):
    """An earlier reading withdrawn (entered-in-error or cancelled); consumers drop it from their state."""

    type: Literal["observation.retracted"] = "observation.retracted"
    encounter: str | None
    patient: str | None
    feature: str | None = Field(default=None, description="Feature of the retracted reading, when known.")
    retracted_resource: SourceRef = Field(description="The resource whose readings are withdrawn.")
    reason: str = Field(examples=["entered-in-error"])


class EncounterRecorded(Event):
    """An encounter's linkage and timeline: patient, admission times, ICU unit, discharge."""

    type: Literal["encounter.recorded"] = "encounter.recorded"
    encounter: str
    patient: str | None
    status: str = Field(examples=["in-progress", "finished"])
    icu_admitted_at: datetime | None = Field(default=None, description="Start of the ICU stay (hour 0 of ICULOS).")
    hospital_admitted_at: datetime | None = None
    discharged_at: datetime | None = None
    unit: str | None = Field(default=None, description="ICU unit code (PhysioNet: MICU or SICU).", examples=["MICU"])
    source: SourceRef


CanonicalEvent = Annotated[ObservationRecorded | ObservationRetracted | EncounterRecorded, Field(discriminator="type")]
canonical_event_adapter: TypeAdapter[ObservationRecorded | ObservationRetracted | EncounterRecorded] = TypeAdapter(
    CanonicalEvent
)


# --- scores (topics: scores.live, scores.shadow) --------------------------------------------------


class Stage(StrEnum):
    """A model version's stage in the registry."""

    REGISTERED = "registered"
    SHADOW = "shadow"
    PRODUCTION = "production"
    ARCHIVED = "archived"
    RETIRED = "retired"


class RiskScored(Event):
    """A risk score for one encounter at one data time; live and shadow share this schema."""

    type: Literal["risk.scored"] = "risk.scored"
    encounter: str
    patient: str | None
    model_name: str = Field(examples=["sepsis-hgb"])
    model_version: str = Field(examples=["1"])
    stage: Stage = Field(description="The model's stage when it scored; only 'production' reaches the live topic.")
    default_model: bool = Field(
        default=False, description="True when scored by the repository's default model because no registry answered."
    )
    probability: float = Field(ge=0.0, le=1.0)
    risk_level: Literal["low", "medium", "high"]
    threshold: float = Field(description="The model card's operating threshold.")
    alert: bool = Field(description="probability >= threshold.")
    data_time: datetime = Field(description="Time of the newest observation included.")
    hour: int = Field(description="Whole hours since ICU admission at data_time (PhysioNet's ICULOS - 1).")
    observations: int = Field(description="Number of observations included so far for this encounter.")
    latency_ms: float = Field(description="From the newest observation's arrival in Kafka to this score's creation.")
    rescore: bool = Field(
        default=False,
        description="True when this encounter-hour may have been scored before a restart by another model version: "
        "this score replaces that one (same data, a different model version, so a different id).",
    )

    @staticmethod
    def make_id(model_name: str, model_version: str, encounter: str, data_time: datetime, observations: int) -> str:
        """Same model, encounter, data time and inputs give the same score id (dedupe downstream)."""
        return deterministic_id("score", model_name, model_version, encounter, data_time.isoformat(), observations)


# --- outcomes (topic: outcomes) -------------------------------------------------------------------


class OutcomeRecorded(Event):
    """A delayed outcome: sepsis onset (with its onset time) or the end of the stay."""

    type: Literal["outcome.recorded"] = "outcome.recorded"
    encounter: str
    patient: str | None
    outcome: Literal["sepsis", "discharged", "died"]
    onset_at: datetime | None = Field(default=None, description="Clinical onset time (sepsis: t_sepsis).")
    recorded_at: datetime = Field(description="When the outcome became known (hours or days after onset).")


# --- alerts (topic: alerts) -----------------------------------------------------------------------


class Severity(StrEnum):
    """How urgent an alert is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertRaised(Event):
    """A monitored condition opened or resolved; a persisting condition is one open alert."""

    type: Literal["alert.raised"] = "alert.raised"
    alert_key: str = Field(description="Stable id of the condition: kind, model and feature or metric.")
    state: Literal["open", "resolved"]
    kind: Literal[
        "data_drift",
        "missingness",
        "prediction_drift",
        "performance",
        "calibration",
        "fairness",
        "latency",
        "checkpoint",
    ]
    severity: Severity
    model_name: str | None = None
    model_version: str | None = None
    feature: str | None = None
    metric: str | None = None
    value: float
    threshold: float
    window: str = Field(description="The window the value was computed over.", examples=["last 2000 scores"])
    evidence: dict[str, Any] = Field(default_factory=dict)


# --- model lifecycle (topic: models.lifecycle) ----------------------------------------------------


class LifecycleAction(StrEnum):
    """What happened to a model version."""

    REGISTERED = "registered"
    STAGE_CHANGED = "stage_changed"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    RETIRED = "retired"


class ModelLifecycleChanged(Event):
    """A registry decision; scorers load or drop versions on it. Keyed by model name."""

    type: Literal["model.lifecycle"] = "model.lifecycle"
    action: LifecycleAction
    model_name: str
    model_version: str
    from_stage: Stage | None
    to_stage: Stage
    actor: str = Field(description="Who decided: a user name or 'policy'.")
    reason: str = ""
    artifact_sha256: str | None = None
    artifact_url: str | None = Field(default=None, description="Where scorers download the package from.")
    audit_id: int | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)


# --- shadow comparisons (topic: comparisons) ------------------------------------------------------


class ComparisonSummarized(Event):
    """A candidate judged against the live model on the same encounter-hours. Keyed by model name."""

    type: Literal["comparison.summarized"] = "comparison.summarized"
    model_name: str
    candidate_version: str
    live_version: str
    window_start: datetime | None
    window_end: datetime | None
    shadow_hours: float = Field(description="Hours the candidate has been scoring in shadow.")
    scored_hours: int = Field(description="Encounter-hours scored by both models.")
    labelled_hours: int
    labelled_encounters: int
    positive_encounters: int
    metrics: dict[str, Any] = Field(description="Per-model metrics and paired differences with CIs.")


# --- dead letters (topic: deadletter) -------------------------------------------------------------


class DeadLettered(Event):
    """A message that could not be processed, parked with its reason and origin."""

    type: Literal["dead.lettered"] = "dead.lettered"
    service: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    error_type: str
    error: str = Field(description="Why it was parked (no payload content).")
    payload: str = Field(description="The original payload, UTF-8 or base64 (see payload_encoding).")
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"


AnyEvent = Annotated[
    ObservationRecorded
    | ObservationRetracted
    | EncounterRecorded
    | RiskScored
    | OutcomeRecorded
    | AlertRaised
    | ModelLifecycleChanged
    | ComparisonSummarized
    | DeadLettered,
    Field(discriminator="type"),
]
any_event_adapter: TypeAdapter[Any] = TypeAdapter(AnyEvent)

ALL_EVENT_TYPES: tuple[type[Event], ...] = (
    ObservationRecorded,
    ObservationRetracted,
    EncounterRecorded,
    RiskScored,
    OutcomeRecorded,
    AlertRaised,
    ModelLifecycleChanged,
    ComparisonSummarized,
    DeadLettered,
)
