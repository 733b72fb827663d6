"""Property-based tests (hypothesis) of ingest over generated FHIR: times, units, codes, value types, duplicates.

Whatever is generated, the mapper never raises, answers every entry once, and publishes only readings it can
stand behind: a feature of the vocabulary in its canonical unit and plausible range, a believable time, a number
that was a JSON number, no systemic blood pressure from a pressure of another site, and one value per id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigil_contracts.events import ObservationRecorded
from vigil_contracts.vocabulary import SYSTEMIC_PRESSURE_FEATURES, VOCABULARY
from vigil_ingest.mapping import Mapper, TimeRules

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
L, S = "http://loinc.org", "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"

CODES = [
    ("8867-4", "/min"),
    ("8480-6", "mm[Hg]"),
    ("8462-4", "mm[Hg]"),
    ("8478-0", "mm[Hg]"),
    ("8310-5", "Cel"),
    ("8310-5", "[degF]"),
    ("2524-7", "mmol/L"),
    ("2160-0", "mg/dL"),
    ("2160-0", "umol/L"),
    ("59408-5", "%"),
    ("9279-1", "/min"),
    ("12345-6", "kg"),  # not in the vocabulary
]
OTHER_SITES = [
    {"code": {"coding": [{"system": L, "code": "76284-9"}]}},
    {"code": {"coding": [{"system": S, "code": "276755008"}]}},
    {"bodySite": {"coding": [{"system": S, "code": "53085002"}]}},
    {"code": {"coding": [{"system": S, "code": "75367002"}], "text": "Pulmonary artery pressure"}},
    {"code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150104"}]}},
]

values = st.one_of(
    st.integers(-50, 400),
    st.floats(-50, 400, allow_nan=False),
    st.sampled_from(["88", "1e2", "", "NaN"]),
    st.booleans(),
    st.just({"value": 88}),
    st.none(),
)
times = st.one_of(
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)).map(
        lambda t: t.isoformat()
    ),
    st.sampled_from(["2026-05-31", "2099-01-01T00:00:00Z", "yesterday", "2026-05-31T10:00:00"]),
)


@st.composite
def observation(draw: st.DrawFn, rid: str) -> dict[str, Any]:
    code, unit = draw(st.sampled_from(CODES))
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid,
        "status": draw(st.sampled_from(["final", "final", "amended", "preliminary", "entered-in-error", "unknown"])),
        "code": {"coding": [{"system": L, "code": code}]},
        "subject": {"reference": "Patient/gp"},
        "encounter": {"reference": "Encounter/ge"},
        "effectiveDateTime": draw(times),
        "valueQuantity": {"value": draw(values), "unit": unit, "system": UCUM, "code": unit},
    }
    if draw(st.booleans()):
        # a panel: the value moves to a component, the panel's code and site are drawn
        panel_code = draw(st.sampled_from(["85354-9", "55284-4", "76284-9", "60996-6", "99999-9"]))
        component = {"code": resource["code"], "valueQuantity": resource.pop("valueQuantity")}
        resource["code"] = {"coding": [{"system": L, "code": panel_code}]}
        resource["component"] = [component]
    if draw(st.integers(0, 4)) == 0:
        resource.update(draw(st.sampled_from(OTHER_SITES)))
    return resource


@st.composite
def bundle(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 12))
    ids = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), min_size=n, max_size=n))
    entries = [{"resource": draw(observation(rid))} for rid in ids]
    if draw(st.booleans()):
        entries.insert(
            0,
            {
                "resource": {
                    "resourceType": "Encounter",
                    "id": "ge",
                    "status": "in-progress",
                    "subject": {"reference": "Patient/gp"},
                    "period": {"start": draw(times)},
                }
            },
        )
    return {
        "resourceType": "Bundle",
        "type": draw(st.sampled_from(["batch", "transaction", "collection"])),
        "entry": entries,
    }


def other_site(resource: dict[str, Any]) -> bool:
    text = orjson.dumps({k: resource.get(k) for k in ("code", "bodySite")}).decode().lower()
    return any(c in text for c in ("76284-9", "276755008", "53085002", "pulmonary", "150104", "60996-6"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bundle())
def test_generated_bundles_publish_only_readings_ingest_can_stand_behind(payload: dict[str, Any]) -> None:
    mapper = Mapper(time_rules=TimeRules(clock=lambda: NOW))
    result = mapper.map_bytes(orjson.dumps(payload))
    assert len(result.entries) == len(payload["entry"])
    by_id: dict[str, dict[str, Any]] = {}
    for entry in payload["entry"]:
        by_id.setdefault(entry["resource"]["id"], entry["resource"])
    ids = [e.event_id for e in result.events]
    assert len(ids) == len(set(ids))
    published: dict[tuple[str, str], float] = {}
    for event in result.events:
        if not isinstance(event, ObservationRecorded):
            continue
        m = VOCABULARY[event.feature]
        assert event.unit == m.unit and m.low <= event.value <= m.high
        assert event.observed_at <= NOW + timedelta(minutes=5)
        source = by_id[event.source.resource_id]
        if event.feature in SYSTEMIC_PRESSURE_FEATURES:
            assert not other_site(source), source
        raw = (source.get("valueQuantity") or source.get("component", [{}])[0].get("valueQuantity") or {}).get("value")
        assert isinstance(raw, int | float) and not isinstance(raw, bool)
        key = (event.source.resource_id, event.feature)
        assert key not in published, "two values published for one id in one request"
        published[key] = event.value
    for entry in result.entries:
        assert entry.outcome in ("mapped", "partial", "retracted", "ignored", "absent", "rejected", "recorded")
        if entry.outcome == "rejected":
            assert entry.rejections and all(r.reason for r in entry.rejections)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["x", "y"]), st.integers(40, 180)), min_size=1, max_size=8))
def test_resubmissions_and_corrections_leave_the_latest_value_standing(posts: list[tuple[str, int]]) -> None:
    """Posting ids again and again (same or new values): what stands per id is the last value posted."""
    mapper = Mapper(time_rules=TimeRules(clock=lambda: NOW))
    standing: dict[str, float] = {}
    for rid, value in posts:
        resource = {
            "resourceType": "Observation",
            "id": rid,
            "status": "final",
            "code": {"coding": [{"system": L, "code": "8867-4"}]},
            "encounter": {"reference": "Encounter/ge"},
            "effectiveDateTime": "2026-05-31T10:00:00Z",
            "valueQuantity": {"value": value, "unit": "/min", "system": UCUM, "code": "/min"},
        }
        result = mapper.map_payload(resource)
        mapper.remember(result)
        for event in result.events:
            if isinstance(event, ObservationRecorded):
                standing[rid] = event.value
            else:  # a retraction of the id's earlier readings
                standing.pop(event.retracted_resource.resource_id, None)  # type: ignore[union-attr]
    expected: dict[str, float] = {}
    for rid, value in posts:
        expected[rid] = float(value)
    assert standing == expected
