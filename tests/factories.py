"""Event factories with ``**overrides`` (one place that knows how to make a valid event of each kind)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from vigil_contracts import events as ev

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def source(**o: Any) -> ev.SourceRef:
    return ev.SourceRef(**{"resource_type": "Observation", "resource_id": "obs-1", "version_id": "1", **o})


def observation(**o: Any) -> ev.ObservationRecorded:
    src = o.pop("source", source())
    fields: dict[str, Any] = {
        "encounter": "enc-1",
        "patient": "pat-1",
        "feature": "heart_rate",
        "value": 88.0,
        "unit": "/min",
        "observed_at": T0,
        "source": src,
        "occurred_at": T0,
    }
    fields.update(o)
    fields.setdefault("key", fields["encounter"] or "unlinked")
    fields.setdefault("event_id", ev.ObservationRecorded.make_id(src, fields["feature"], fields["observed_at"]))
    return ev.ObservationRecorded(**fields)


def retraction(**o: Any) -> ev.ObservationRetracted:
    return ev.ObservationRetracted(
        **{
            "event_id": ev.deterministic_id("retract", "obs-1"),
            "occurred_at": T0,
            "key": "enc-1",
            "encounter": "enc-1",
            "patient": "pat-1",
            "feature": "temperature",
            "retracted_resource": source(),
            "reason": "entered-in-error",
            **o,
        }
    )


def encounter(**o: Any) -> ev.EncounterRecorded:
    return ev.EncounterRecorded(
        **{
            "event_id": ev.deterministic_id("enc", "enc-1", "1"),
            "occurred_at": T0,
            "key": "enc-1",
            "encounter": "enc-1",
            "patient": "pat-1",
            "status": "in-progress",
            "icu_admitted_at": T0,
            "unit": "MICU",
            "source": source(resource_type="Encounter", resource_id="enc-1"),
            **o,
        }
    )


def score(**o: Any) -> ev.RiskScored:
    fields: dict[str, Any] = {
        "occurred_at": T0,
        "encounter": "enc-1",
        "patient": "pat-1",
        "model_name": "sepsis",
        "model_version": "1",
        "stage": ev.Stage.PRODUCTION,
        "probability": 0.12,
        "risk_level": "low",
        "threshold": 0.3,
        "alert": False,
        "data_time": T0,
        "hour": 0,
        "observations": 3,
        "latency_ms": 4.2,
    }
    fields.update(o)
    fields.setdefault("key", fields["encounter"])
    fields.setdefault(
        "event_id",
        ev.RiskScored.make_id(
            fields["model_name"],
            fields["model_version"],
            fields["encounter"],
            fields["data_time"],
            fields["observations"],
        ),
    )
    return ev.RiskScored(**fields)


def outcome(**o: Any) -> ev.OutcomeRecorded:
    return ev.OutcomeRecorded(
        **{
            "event_id": ev.deterministic_id("outcome", "enc-1", "sepsis"),
            "occurred_at": T0,
            "key": "enc-1",
            "encounter": "enc-1",
            "patient": "pat-1",
            "outcome": "sepsis",
            "onset_at": T0 + timedelta(hours=10),
            "recorded_at": T0 + timedelta(hours=40),
            **o,
        }
    )


def alert(**o: Any) -> ev.AlertRaised:
    return ev.AlertRaised(
        **{
            "event_id": ev.deterministic_id("alert", "k", 1),
            "occurred_at": T0,
            "key": "sepsis",
            "alert_key": "data_drift:sepsis:temperature",
            "state": "open",
            "kind": "data_drift",
            "severity": ev.Severity.WARNING,
            "model_name": "sepsis",
            "feature": "temperature",
            "value": 0.42,
            "threshold": 0.3,
            "window": "last 2000 observations",
            **o,
        }
    )


TEST_TOKEN = "integration-tests-token-0123456789abcdef"
"""A bearer token every service built from ``settings_env`` accepts, with every scope."""
TEST_GRANTS: dict[str, Any] = {TEST_TOKEN: {"user": "integration-tests", "scopes": ["system/*.*"]}}
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


def allow_test_caller(app: Any) -> dict[str, str]:
    """Make a bare FastAPI app (routers mounted by hand) accept the tests' token; returns its headers."""
    from vigil_runtime.auth import Authenticator, Grant, TokenTable

    app.state.auth = Authenticator(TokenTable({TEST_TOKEN: Grant(user="unit-tests", scopes=["system/*.*"])}))
    return AUTH


def lifecycle(**o: Any) -> ev.ModelLifecycleChanged:
    return ev.ModelLifecycleChanged(
        **{
            "event_id": ev.deterministic_id("lifecycle", 1),
            "occurred_at": T0,
            "key": "sepsis",
            "action": ev.LifecycleAction.PROMOTED,
            "model_name": "sepsis",
            "model_version": "2",
            "from_stage": ev.Stage.SHADOW,
            "to_stage": ev.Stage.PRODUCTION,
            "actor": "dr-approver",
            "reason": "met policy",
            "artifact_sha256": "0" * 64,
            **o,
        }
    )


def comparison(**o: Any) -> ev.ComparisonSummarized:
    return ev.ComparisonSummarized(
        **{
            "event_id": ev.deterministic_id("cmp", 1),
            "occurred_at": T0,
            "key": "sepsis",
            "model_name": "sepsis",
            "candidate_version": "2",
            "live_version": "1",
            "window_start": T0,
            "window_end": T0 + timedelta(days=1),
            "shadow_hours": 24.0,
            "scored_hours": 1000,
            "labelled_hours": 800,
            "labelled_encounters": 40,
            "positive_encounters": 4,
            "metrics": {"auroc_diff": {"estimate": 0.02, "ci": [0.0, 0.04]}},
            **o,
        }
    )


def dead_letter(**o: Any) -> ev.DeadLettered:
    return ev.DeadLettered(
        **{
            "event_id": ev.deterministic_id("dlq", 1),
            "occurred_at": T0,
            "key": "enc-1",
            "service": "ingest",
            "source_topic": "vigil.fhir.raw",
            "source_partition": 0,
            "source_offset": 7,
            "error_type": "ValueError",
            "error": "not JSON",
            "resource_ids": ["Observation/hr-1"],
            **o,
        }
    )


ALL = {
    "observation": observation,
    "retraction": retraction,
    "encounter": encounter,
    "score": score,
    "outcome": outcome,
    "alert": alert,
    "lifecycle": lifecycle,
    "comparison": comparison,
    "dead_letter": dead_letter,
}


def stay_stream(
    stay: Any, encounter: str, *, admitted: datetime = T0, with_outcome: bool = True
) -> tuple[list[ev.EncounterRecorded | ev.ObservationRecorded], list[ev.OutcomeRecorded]]:
    """One PhysioNet stay as an EHR and an outcome feed would send it: its events, a discharge, its outcome.

    The outcome is the simulator's (``vigil.simulate.outcome_event``): onset t_sepsis for a septic stay, else the
    discharge at the end of its last row hour.
    """
    from vigil_scoring.physionet import sepsis_onset_hour, stay_events

    events: list[ev.EncounterRecorded | ev.ObservationRecorded] = list(
        stay_events(stay, encounter=encounter, patient=f"pat-{encounter}", icu_admitted_at=admitted)
    )
    end = admitted + timedelta(hours=int(stay["hour"].max()) + 1)
    events.append(
        ev.EncounterRecorded(
            event_id=ev.deterministic_id("enc", encounter, "2"),
            occurred_at=end,
            key=encounter,
            encounter=encounter,
            patient=f"pat-{encounter}",
            status="finished",
            icu_admitted_at=admitted,
            discharged_at=end,
            source=ev.SourceRef(resource_type="Encounter", resource_id=encounter, version_id="2"),
        )
    )
    if not with_outcome:
        return events, []
    onset = sepsis_onset_hour(stay)
    onset_at = None if onset is None else admitted + timedelta(hours=onset)
    out = ev.OutcomeRecorded(
        event_id=ev.deterministic_id("outcome", encounter),
        occurred_at=onset_at or end,
        key=encounter,
        encounter=encounter,
        patient=f"pat-{encounter}",
        outcome="sepsis" if onset_at else "discharged",
        onset_at=onset_at,
        recorded_at=(onset_at or end) + timedelta(hours=6),
    )
    return events, [out]


VITAL_CODES = (
    ("8867-4", "/min", 60, 80),
    ("9279-1", "/min", 12, 20),
    ("8310-5", "Cel", 36, 3),
    ("59408-5", "%", 90, 9),
)


def fhir_bundle(
    readings: int, *, encounters: int = 50, prefix: str = "b", start: datetime | None = None
) -> dict[str, Any]:
    """A FHIR batch Bundle of ``readings`` vital-sign Observations over ``encounters`` encounters (~400 bytes each).

    Ids are ``<prefix>-<i>``, so two bundles with the same prefix carry the same resources (a resend).
    """
    start = start or datetime.now(UTC) - timedelta(hours=12)
    entries = []
    for i in range(readings):
        code, unit, base, spread = VITAL_CODES[i % len(VITAL_CODES)]
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": f"{prefix}-{i}",
                    "meta": {"versionId": "1"},
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "subject": {"reference": f"Patient/{prefix}-p{i % encounters}"},
                    "encounter": {"reference": f"Encounter/{prefix}-e{i % encounters}"},
                    "effectiveDateTime": (start + timedelta(seconds=i)).isoformat(),
                    "valueQuantity": {
                        "value": base + (i * 7) % spread,
                        "unit": unit,
                        "system": "http://unitsofmeasure.org",
                        "code": unit,
                    },
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}
