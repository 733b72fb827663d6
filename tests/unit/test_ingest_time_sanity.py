"""Time sanity at ingest: a reading dated after ingest's clock (plus skew), before birth or long before its
encounter is refused with its reason, over HTTP (OperationOutcome) and on the raw topic (dead letter)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from vigil_contracts.events import ObservationRecorded
from vigil_ingest.mapping import Mapper, TimeRules

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def obs(when: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "t1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/tp"},
        "encounter": {"reference": "Encounter/te"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": 90, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    base.update(overrides)
    return base


def mapper(**rules: Any) -> Mapper:
    return Mapper(time_rules=TimeRules(clock=lambda: NOW, **rules))


def test_the_2099_reading_is_refused_with_its_reason() -> None:
    result = mapper().map_payload(obs("2099-01-01T00:00:00Z"))
    assert result.events == []
    assert [r.reason for r in result.rejections] == [
        "effective time is later than ingest's clock plus the allowed skew (300 s): a clock error or a typo"
    ]
    assert result.rejections[0].issue == "value"


def test_skew_is_allowed_and_configurable() -> None:
    inside = (NOW + timedelta(minutes=4)).isoformat()
    outside = (NOW + timedelta(minutes=6)).isoformat()
    assert len(mapper().map_payload(obs(inside)).events) == 1
    assert mapper().map_payload(obs(outside)).events == []
    assert len(mapper(future_skew=timedelta(minutes=10)).map_payload(obs(outside)).events) == 1


def test_before_birth_is_refused() -> None:
    m = mapper()
    m.map_payload({"resourceType": "Patient", "id": "tp", "birthDate": "2000-05-01"})
    assert m.map_payload(obs("1999-12-31T10:00:00Z")).events == []
    assert [r.reason for r in m.map_payload(obs("1999-12-31T10:00:00Z")).rejections] == [
        "effective time is before the patient's birth"
    ]
    assert len(m.map_payload(obs("2000-05-02T10:00:00Z")).events) == 1


def test_long_before_the_encounter_is_refused_shortly_before_is_kept() -> None:
    m = mapper()
    m.map_payload(
        {"resourceType": "Encounter", "id": "te", "status": "in-progress", "period": {"start": "2026-05-20T00:00:00Z"}}
    )
    readings = m.map_payload(obs("2026-05-19T20:00:00Z")).events  # the emergency department, hours before
    assert [type(e) for e in readings] == [ObservationRecorded]
    assert m.map_payload(obs("2026-04-01T20:00:00Z")).events == []
