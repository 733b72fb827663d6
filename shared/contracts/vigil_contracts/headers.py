"""The Kafka headers every message Vigil produces carries, and what each says.

Headers let a consumer, a broker tool or an operator tell what a record is and follow it across services without
parsing its value:

- ``vigil-event-type``: the event's ``type`` discriminator (``risk.scored``...), or ``scorer.state`` for the
  scorer's changelog snapshots (which are not events);
- ``vigil-schema-version``: the event class's ``SCHEMA_VERSION`` (decimal);
- ``vigil-correlation-id``: one id per request or message chain, made at the edge (ingest's HTTP request, or any
  service producing without an incoming message) and carried forward by every consumer that produces from a
  consumed message. A random UUID, never an encounter, patient or resource id;
- ``traceparent``: the W3C Trace Context of the producing step (https://www.w3.org/TR/trace-context/), carried
  whether or not OpenTelemetry tracing is switched on, so one trace id follows an observation to its scores.

Values are UTF-8 bytes. This module is the one source of truth: the producers set these names and the AsyncAPI
documents declare them (``headers_schema``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vigil_contracts.events import (
    AlertRaised,
    ComparisonSummarized,
    DeadLettered,
    EncounterRecorded,
    Event,
    ModelLifecycleChanged,
    ObservationRecorded,
    ObservationRetracted,
    OutcomeRecorded,
    RiskScored,
)
from vigil_contracts.topics import Topic

EVENT_TYPE = "vigil-event-type"
SCHEMA_VERSION = "vigil-schema-version"
CORRELATION_ID = "vigil-correlation-id"
TRACEPARENT = "traceparent"
HEADER_NAMES: tuple[str, ...] = (EVENT_TYPE, SCHEMA_VERSION, CORRELATION_ID, TRACEPARENT)
"""Every header Vigil sets, in the order it sets them."""

SCORER_STATE_TYPE = "scorer.state"
"""Event type header of the scorer's compacted changelog (per-encounter feature state; null value: a tombstone)."""
SCORER_STATE_VERSION = 1
"""Version of the scorer's snapshot format (``vigil_scoring.scoring.SNAPSHOT_VERSION`` is this)."""
SHADOW_STATE_TYPE = "shadow.state"
"""Event type header of shadow's compacted changelog: the same per-encounter feature snapshots as the scorer's."""
SHADOW_STATE_VERSION = SCORER_STATE_VERSION
DRIFT_STATE_TYPE = "drift.state"
"""Event type header of drift's compacted changelog (chunks of one group's detector state)."""
DRIFT_STATE_VERSION = 1
"""Version of drift's snapshot format (``vigil_drift.state.FORMAT`` is this)."""

CORRELATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
"""What an ``X-Correlation-ID`` from an HTTP client must look like to be kept (else a new one is made)."""
TRACEPARENT_PATTERN = r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$"
"""A version-00 W3C traceparent with non-zero ids."""


def event_type_of(cls: type[Event]) -> str:
    """The ``type`` discriminator an event class publishes under."""
    default = cls.model_fields["type"].default
    if not isinstance(default, str):
        raise TypeError(f"{cls.__name__} has no type discriminator")
    return default


def kind(cls: type[Event]) -> tuple[str, int]:
    """An event class's (event type, schema version)."""
    return event_type_of(cls), cls.SCHEMA_VERSION


TOPIC_KINDS: dict[Topic, tuple[tuple[str, int], ...]] = {
    Topic.FHIR_RAW: (),
    Topic.OBSERVATIONS: (kind(ObservationRecorded), kind(ObservationRetracted), kind(EncounterRecorded)),
    Topic.SCORES_LIVE: (kind(RiskScored),),
    Topic.SCORES_SHADOW: (kind(RiskScored),),
    Topic.OUTCOMES: (kind(OutcomeRecorded),),
    Topic.ALERTS: (kind(AlertRaised),),
    Topic.COMPARISONS: (kind(ComparisonSummarized),),
    Topic.LIFECYCLE: (kind(ModelLifecycleChanged),),
    Topic.SCORER_STATE: ((SCORER_STATE_TYPE, SCORER_STATE_VERSION),),
    Topic.SHADOW_STATE: ((SHADOW_STATE_TYPE, SHADOW_STATE_VERSION),),
    Topic.DRIFT_STATE: ((DRIFT_STATE_TYPE, DRIFT_STATE_VERSION),),
    Topic.DEAD_LETTER: (kind(DeadLettered),),
}
"""What each topic carries, by its headers. The raw FHIR topic is written by EHR integrations, not by Vigil: its
records need no Vigil headers (a correlation id and traceparent there are continued when present)."""


def headers_schema(kinds: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """The JSON schema of a message's headers, for the AsyncAPI documents; ``kinds`` are its (type, version) pairs.

    With no kinds (the raw FHIR topic) only the correlation id and traceparent are described, neither required.
    """
    types = sorted({t for t, _ in kinds})
    versions = sorted({str(v) for _, v in kinds})
    if not kinds:
        schema = headers_schema([("-", 0)])
        return {
            "type": "object",
            "description": "Written by EHR integrations: Vigil headers are optional; ingest continues these two.",
            "properties": {name: schema["properties"][name] for name in (CORRELATION_ID, TRACEPARENT)},
        }
    return {
        "type": "object",
        "required": list(HEADER_NAMES),
        "properties": {
            EVENT_TYPE: {"type": "string", "enum": types, "description": "The event's type discriminator."},
            SCHEMA_VERSION: {
                "type": "string",
                "enum": versions,
                "description": "The event's schema version (decimal).",
            },
            CORRELATION_ID: {
                "type": "string",
                "pattern": CORRELATION_ID_PATTERN,
                "description": "Made at the edge (HTTP X-Correlation-ID or new), carried forward by every consumer "
                "that produces from a consumed message; never a patient, encounter or resource id.",
            },
            TRACEPARENT: {
                "type": "string",
                "pattern": TRACEPARENT_PATTERN,
                "description": "W3C Trace Context of the producing step; its trace id follows an observation from "
                "the FHIR POST to its scores.",
            },
        },
    }
