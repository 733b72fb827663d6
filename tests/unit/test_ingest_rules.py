"""The mapping rules one by one, on small hand-made payloads."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from vigil_contracts.events import (
    ObservationRecorded,
    ObservationRetracted,
    SourceRef,
    canonical_event_adapter,
    deterministic_id,
)
from vigil_contracts.vocabulary import VOCABULARY
from vigil_ingest.mapping import Mapper, MapResult, TimeRules, fast_id, observation_id
from vigil_ingest.publishing import Deduper

TESTDATA = Path(__file__).resolve().parents[1] / "testdata" / "fhir"


def obs(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2026-01-01T10:00:00Z",
        "valueQuantity": {"value": 90, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def readings(result: MapResult) -> list[ObservationRecorded]:
    return [e for e in result.events if isinstance(e, ObservationRecorded)]


def one(result: MapResult) -> ObservationRecorded:
    (reading,) = readings(result)
    return reading


def reasons(result: MapResult) -> list[str]:
    return [r.reason for r in result.rejections]


def test_fast_ids_equal_the_contract_ids() -> None:
    source = SourceRef(resource_type="Observation", resource_id="x/1", version_id=None)
    when = datetime(2150, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
    assert observation_id(source, "heart_rate", when) == ObservationRecorded.make_id(source, "heart_rate", when)
    assert fast_id("a", None, 1, "é") == deterministic_id("a", None, 1, "é")


def test_events_validate_against_the_contract() -> None:
    result = Mapper().map_payload(obs())
    for event in result.events:
        assert canonical_event_adapter.validate_json(event.model_dump_json()) == event


def test_heart_rate_reading() -> None:
    reading = one(Mapper().map_payload(obs()))
    assert (reading.encounter, reading.patient, reading.feature, reading.value, reading.unit) == (
        "e1",
        "p1",
        "heart_rate",
        90.0,
        "/min",
    )
    assert reading.key == "e1" and reading.observed_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert reading.event_id == Mapper().map_payload(obs()).events[0].event_id  # deterministic


@pytest.mark.parametrize(
    ("value", "expected", "comparator"),
    [("<0.01 ng/mL", 0.01, "<"), (">= 2.5 ug/L", 2.5, ">="), ("0.04 ng/mL", 0.04, None), ("≤20 ng/L", 0.02, "<=")],
)
def test_value_strings_with_comparators(value: str, expected: float, comparator: str | None) -> None:
    payload = obs(code={"coding": [{"system": "http://loinc.org", "code": "10839-9"}]}, valueQuantity=None)
    payload["valueString"] = value
    reading = one(Mapper().map_payload(payload))
    assert (reading.feature, reading.value, reading.comparator, reading.unit) == (
        "troponin_i",
        expected,
        comparator,
        "ng/mL",
    )


def test_value_string_without_unit_is_read_only_where_the_unit_is_certain() -> None:
    troponin = obs(code={"coding": [{"system": "http://loinc.org", "code": "10839-9"}]}, valueQuantity=None)
    troponin["valueString"] = "<0.01"
    assert reasons(Mapper().map_payload(troponin)) == ["troponin_i: no unit given and ng/mL cannot be assumed"]
    heart_rate = obs(valueQuantity=None, valueString="> 150")
    assert (one(Mapper().map_payload(heart_rate)).value, one(Mapper().map_payload(heart_rate)).comparator) == (150, ">")


def test_quantity_comparator_kept_and_ad_rejected() -> None:
    quantity = {"value": 0.5, "comparator": "<", "unit": "mmol/L", "system": "http://unitsofmeasure.org"}
    payload = obs(code={"coding": [{"system": "http://loinc.org", "code": "2524-7"}]}, valueQuantity=quantity)
    assert one(Mapper().map_payload(payload)).comparator == "<"
    payload["valueQuantity"] = {**quantity, "comparator": "ad"}
    result = Mapper().map_payload(payload)
    assert result.events == [] and reasons(result) == ["lactate: comparator 'ad' is not a usable bound"]


@pytest.mark.parametrize(
    ("code", "quantity", "feature", "value"),
    [
        ("8310-5", {"value": 101.3, "unit": "degF"}, "temperature", 38.5),
        ("8310-5", {"value": 310.15, "code": "K", "system": "http://unitsofmeasure.org"}, "temperature", 37.0),
        ("2160-0", {"value": 88.42, "unit": "µmol/L"}, "creatinine", 1.0),
        ("2160-0", {"value": 10, "code": "mg/L", "system": "http://unitsofmeasure.org"}, "creatinine", 1.0),
        ("2345-7", {"value": 5.5, "unit": "mmol/l"}, "glucose", 99.088),
        ("3150-0", {"value": 40, "unit": "%", "code": "%", "system": "http://unitsofmeasure.org"}, "fio2", 0.4),
        ("6690-2", {"value": 12.5, "unit": "x10E3/uL"}, "wbc", 12.5),
        ("777-3", {"value": 250000, "code": "/uL", "system": "http://unitsofmeasure.org"}, "platelets", 250.0),
        ("8480-6", {"value": 16, "code": "kPa", "system": "http://unitsofmeasure.org"}, "sbp", 120.009852),
        ("718-7", {"value": 120, "unit": "g/L"}, "hgb", 12.0),
        ("2019-8", {"value": 40, "unit": "mm Hg"}, "paco2", 40.0),
        ("8867-4", {"value": 72}, "heart_rate", 72.0),
    ],
)
def test_unit_conversions(code: str, quantity: dict[str, Any], feature: str, value: float) -> None:
    payload = obs(code={"coding": [{"system": "http://loinc.org", "code": code}]}, valueQuantity=quantity)
    reading = one(Mapper().map_payload(payload))
    assert reading.feature == feature
    assert reading.value == pytest.approx(value, abs=1e-3)


@pytest.mark.parametrize(
    ("code", "quantity", "reason"),
    [
        ("2160-0", {"value": 1.0, "unit": "furlongs"}, "creatinine: unit 'furlongs' not recognised"),
        ("2160-0", {"value": 1.0}, "creatinine: no unit given and mg/dL cannot be assumed"),
        ("8310-5", {"value": 1.0, "unit": "F"}, "temperature outside plausible range [24, 45] Cel"),
        ("8867-4", {"value": 900, "unit": "/min"}, "heart_rate outside plausible range [10, 300] /min"),
        ("8867-4", {"unit": "/min"}, "heart_rate: valueQuantity has no value"),
    ],
)
def test_unusable_values_are_rejected_with_a_reason(code: str, quantity: dict[str, Any], reason: str) -> None:
    payload = obs(code={"coding": [{"system": "http://loinc.org", "code": code}]}, valueQuantity=quantity)
    result = Mapper().map_payload(payload)
    assert result.events == []
    assert len(reasons(result)) == 1 and reasons(result)[0].startswith(reason)


def test_data_absent_reason_is_counted_not_rejected() -> None:
    payload = obs(valueQuantity=None, dataAbsentReason={"coding": [{"code": "unknown"}]})
    result = Mapper().map_payload(payload)
    assert result.events == [] and result.rejections == [] and result.counts["absent"] == 1


def test_codes_outside_the_vocabulary_are_ignored_not_errors() -> None:
    payload = obs(code={"coding": [{"system": "http://loinc.org", "code": "29463-7"}]})  # body weight
    result = Mapper().map_payload(payload)
    assert result.events == [] and result.rejections == [] and result.counts["ignored_code"] == 1


def test_loinc_system_variants_and_missing_system() -> None:
    for system in ("http://loinc.org", "https://loinc.org", "urn:oid:2.16.840.1.113883.6.1", None):
        coding: dict[str, Any] = {"code": "9279-1"}
        if system:
            coding["system"] = system
        reading = one(Mapper().map_payload(obs(code={"coding": [{"system": "urn:local", "code": "RR"}, coding]})))
        assert reading.feature == "resp_rate"


def test_snomed_only_code() -> None:
    payload = obs(code={"coding": [{"system": "http://snomed.info/sct", "code": "271649006"}]})
    payload["valueQuantity"] = {"value": 120, "unit": "mmHg"}
    assert one(Mapper().map_payload(payload)).feature == "sbp"


def test_2708_6_is_sao2_in_the_laboratory_and_spo2_elsewhere() -> None:
    quantity = {"value": 97, "unit": "%"}
    code = {"coding": [{"system": "http://loinc.org", "code": "2708-6"}]}
    lab = [{"coding": [{"code": "laboratory"}]}]
    assert one(Mapper().map_payload(obs(code=code, valueQuantity=quantity, category=lab))).feature == "sao2"
    assert one(Mapper().map_payload(obs(code=code, valueQuantity=quantity))).feature == "spo2"


def test_bp_panel_components_and_map() -> None:
    def comp(code: str, value: float) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        }

    payload = obs(
        code={"coding": [{"system": "http://loinc.org", "code": "55284-4"}]},
        valueQuantity=None,
        component=[comp("8480-6", 120), comp("8462-4", 80), comp("8478-0", 93)],
    )
    result = Mapper().map_payload(payload)
    assert [(e.feature, e.value) for e in readings(result)] == [("sbp", 120.0), ("dbp", 80.0), ("map", 93.0)]
    assert len({e.event_id for e in result.events}) == 3


def test_time_rules() -> None:
    period = {"start": "2026-01-01T09:00:00Z", "end": "2026-01-01T09:10:00Z"}
    assert one(Mapper().map_payload(obs(effectiveDateTime=None, effectivePeriod=period))).observed_at == datetime(
        2026, 1, 1, 9, 10, tzinfo=UTC
    )
    only_issued = obs(effectiveDateTime=None, issued="2026-01-01T11:00:00+02:00")
    assert one(Mapper().map_payload(only_issued)).observed_at == datetime(2026, 1, 1, 9, tzinfo=UTC)
    naive = one(Mapper().map_payload(obs(effectiveDateTime="2026-01-01T10:00:00")))
    assert naive.observed_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert reasons(Mapper().map_payload(obs(effectiveDateTime=None))) == ["no effective time and no issued time"]
    date_only = Mapper().map_payload(obs(effectiveDateTime="2026-01-01"))
    assert reasons(date_only) == ["effective time is a date without a time of day (and no issued time that day)"]
    shifted = Mapper(time_rules=TimeRules(clock=lambda: datetime(2300, 1, 1, tzinfo=UTC)))  # MIMIC's shifted dates
    future = one(shifted.map_payload(obs(effectiveDateTime="2180-07-22T19:47:00-04:00")))
    assert future.observed_at.year == 2180
    assert reasons(Mapper().map_payload(obs(effectiveDateTime="yesterday"))) == [
        "effectiveDateTime is not a valid FHIR dateTime"
    ]


def test_entered_in_error_retracts_and_amended_replaces_in_order() -> None:
    mapper = Mapper()
    first = mapper.map_payload(obs(meta={"versionId": "1"}))
    wrong = mapper.map_payload(obs(meta={"versionId": "2"}, status="entered-in-error"))
    (retraction,) = wrong.events
    assert isinstance(retraction, ObservationRetracted)
    assert (retraction.retracted_resource.resource_id, retraction.feature, retraction.key) == ("o1", "heart_rate", "e1")
    amended = mapper.map_payload(obs(meta={"versionId": "3"}, status="amended", valueQuantity={"value": 95}))
    kinds = [(e.type, getattr(e, "reason", None), getattr(e, "value", None)) for e in amended.events]
    assert kinds == [("observation.retracted", "amended", None), ("observation.recorded", None, 95.0)]
    assert amended.events[1].event_id != first.events[0].event_id  # a new version is a new reading
    assert reasons(mapper.map_payload(obs(status="unknown"))) == ["Observation.status 'unknown' is not a reading"]


def test_average_component_codes_are_rejected() -> None:
    payload = obs(code={"coding": [{"system": "http://loinc.org", "code": "96607-7"}]}, valueQuantity=None)
    assert reasons(Mapper().map_payload(payload)) == [
        "an average over a period (96607-7 family) is not a point reading"
    ]


def test_references_of_every_shape() -> None:
    mapper = Mapper()
    absolute = obs(subject={"reference": "https://ehr.example/fhir/Patient/p9/_history/2"})
    assert one(mapper.map_payload(absolute)).patient == "p9"
    urn = obs(subject={"reference": "urn:uuid:3f2e0c55-0000-4000-8000-000000000001"})
    assert one(mapper.map_payload(urn)).patient == "3f2e0c55-0000-4000-8000-000000000001"
    group = obs(subject={"reference": "Group/g1"})
    assert one(mapper.map_payload(group)).patient is None
    contained = obs(
        subject={"reference": "#p"},
        contained=[{"resourceType": "Patient", "id": "p", "identifier": [{"system": "urn:mrn", "value": "42"}]}],
    )
    assert one(mapper.map_payload(contained)).patient == "urn:mrn|42"


def test_bundle_links_patient_encounter_and_icu_unit() -> None:
    mapper = Mapper()
    result = mapper.map_bytes((TESTDATA / "icu-bundle.json").read_bytes())
    assert result.rejections == []
    encounter = next(e for e in result.events if e.type == "encounter.recorded")
    assert (encounter.encounter, encounter.patient, encounter.unit, encounter.status) == (
        "enc-icu-1",
        "pat-icu-1",
        "MICU",
        "in-progress",
    )
    got = sorted((e.feature, e.value, e.encounter, e.patient) for e in readings(result))
    assert got == [
        ("age", 65.0, "enc-icu-1", "pat-icu-1"),
        ("heart_rate", 112.0, "enc-icu-1", "pat-icu-1"),
        # lactate names its patient only by identifier, and no encounter: it joins the patient's open encounter
        ("lactate", 4.1, "enc-icu-1", "pat-icu-1"),
        ("sex", 0.0, "enc-icu-1", "pat-icu-1"),
    ]
    assert result.counts["attached_to_open_encounter"] == 1
    # entry outcomes come back in entry order, one per entry
    assert [e.index for e in result.entries] == [0, 1, 2, 3]


def test_unlinked_observation_is_published_without_encounter_and_counted() -> None:
    result = Mapper().map_payload(obs(encounter=None))
    assert one(result).encounter is None and one(result).key == "unlinked"
    assert result.counts["no_encounter"] == 1


def test_contained_members_of_a_panel_are_mapped() -> None:
    member = {
        "resourceType": "Observation",
        "id": "hr",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 70, "unit": "bpm"},
    }
    panel = obs(
        code={"coding": [{"system": "http://loinc.org", "code": "85353-1"}]},
        valueQuantity=None,
        contained=[member],
        hasMember=[{"reference": "#hr"}],
    )
    reading = one(Mapper().map_payload(panel))
    assert (reading.feature, reading.value, reading.encounter, reading.source.resource_id) == (
        "heart_rate",
        70.0,
        "e1",
        "o1#hr",
    )


def test_malformed_payloads() -> None:
    mapper = Mapper()
    assert reasons(mapper.map_bytes(b"[1, 2]")) == ["payload is not a JSON object (a FHIR resource or Bundle)"]
    assert reasons(mapper.map_bytes(b'{"id": "x"}')) == ["missing resourceType"]
    assert reasons(mapper.map_bytes(b'{"resourceType": "Bundle", "entry": {}}')) == ["Bundle.entry is not an array"]
    assert reasons(mapper.map_bytes(b"\xff\xfe")) and mapper.map_bytes(b"\xff").events == []
    weird = obs(valueQuantity="90")
    assert reasons(mapper.map_payload(weird)) == ["heart_rate: valueQuantity is not an object"]


def test_dedupe_is_bounded_and_only_remembers_published() -> None:
    mapper = Mapper()
    deduper = Deduper(maxsize=2)
    events = mapper.map_payload(obs()).events + mapper.map_payload(obs()).events
    fresh, dupes = deduper.fresh(events)
    assert (len(fresh), dupes) == (1, 1)
    assert deduper.fresh(fresh)[0] == fresh  # not remembered until published
    deduper.remember(fresh)
    assert deduper.fresh(fresh) == ([], 1)
    for i in range(3):
        deduper.remember(mapper.map_payload(obs(id=f"x{i}")).events)
    assert len(deduper) == 2 and deduper.fresh(fresh)[0] == fresh  # the oldest id was evicted


def test_mapping_does_not_modify_its_input() -> None:
    payload = json.loads((TESTDATA / "icu-bundle.json").read_text())
    before = copy.deepcopy(payload)
    Mapper().map_payload(payload)
    assert payload == before


def test_age_and_sex_whichever_arrives_first() -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "e7",
        "status": "finished",
        "subject": {"reference": "Patient/p7"},
        "period": {"start": "2026-03-01T12:00:00Z", "end": "2026-03-04T12:00:00Z"},
        "serviceType": {"text": "Surgical intensive care"},
    }
    patient = {"resourceType": "Patient", "id": "p7", "gender": "male", "birthDate": "1950-03-02"}
    first = Mapper()
    enc_first = first.map_payload(encounter).events + first.map_payload(patient).events
    second = Mapper()
    pat_first = second.map_payload(patient).events + second.map_payload(encounter).events
    assert sorted(e.event_id for e in enc_first) == sorted(e.event_id for e in pat_first)
    demo = sorted((e.feature, e.value, e.encounter) for e in enc_first if isinstance(e, ObservationRecorded))
    assert demo == [("age", 75.0, "e7"), ("sex", 1.0, "e7")]
    (recorded,) = [e for e in enc_first if e.type == "encounter.recorded"]
    assert recorded.unit == "SICU" and recorded.status == "finished"
    # an observation naming only the encounter gets the encounter's patient; a finished encounter is not "open"
    during = "2026-03-02T10:00:00Z"
    reading = one(
        first.map_payload(obs(subject=None, encounter={"reference": "Encounter/e7"}, effectiveDateTime=during))
    )
    assert (reading.patient, reading.encounter) == ("p7", "e7")
    assert one(first.map_payload(obs(encounter=None, subject={"reference": "Patient/p7"}))).encounter is None
    # a reading dated long before its encounter began is refused with its reason
    early = first.map_payload(obs(subject=None, encounter={"reference": "Encounter/e7"}))
    assert reasons(early) == ["effective time is more than 14 days before the encounter began"]


def test_mimic_local_item_codes() -> None:
    items = "http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-d-items"
    units = "http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-units"
    temp = obs(
        code={"coding": [{"system": items, "code": "223761", "display": "Temperature Fahrenheit"}]},
        valueQuantity={"value": 100.4, "unit": "°F", "code": "°F", "system": units},
    )
    assert (one(Mapper().map_payload(temp)).feature, one(Mapper().map_payload(temp)).value) == ("temperature", 38.0)
    rr = obs(
        code={"coding": [{"system": items, "code": "220210"}]},
        valueQuantity={"value": 22, "unit": "insp/min", "code": "insp/min", "system": units},
    )
    assert (one(Mapper().map_payload(rr)).feature, one(Mapper().map_payload(rr)).value) == ("resp_rate", 22.0)
    output = obs(code={"coding": [{"system": items, "code": "226560"}]}, valueQuantity={"value": 175, "unit": "ml"})
    assert Mapper().map_payload(output).counts["ignored_code"] == 1  # urine output: not in the vocabulary


def test_conditional_references_bom_and_xml() -> None:
    mapper = Mapper()
    mapper.map_payload({"resourceType": "Patient", "id": "p42", "identifier": [{"system": "urn:mrn", "value": "42"}]})
    conditional = obs(subject={"reference": "Patient?identifier=urn%3Amrn%7C42"})
    assert one(mapper.map_payload(conditional)).patient == "p42"
    bom = b"\xef\xbb\xbf" + json.dumps(obs()).encode()
    assert one(mapper.map_bytes(bom)).feature == "heart_rate"
    assert reasons(mapper.map_bytes(b'<Observation xmlns="http://hl7.org/fhir"/>')) == [
        "FHIR XML is not accepted: send FHIR JSON"
    ]


def test_dry_run_reads_a_json_array(tmp_path: Path) -> None:
    from vigil_ingest.cli import read_payloads

    path = tmp_path / "export.json"
    path.write_text(json.dumps([obs(id="a"), obs(id="b")]))
    assert [json.loads(p)["id"] for p in read_payloads(path)] == ["a", "b"]


@pytest.mark.parametrize("name", [m.name for m in VOCABULARY.values() if m.loinc])
def test_every_vocabulary_row_round_trips(name: str) -> None:
    m = VOCABULARY[name]
    value = round((m.low + m.high) / 2, 3)
    category = "laboratory" if m.kind == "lab" else "vital-signs"
    payload = obs(
        code={"coding": [{"system": "http://loinc.org", "code": m.loinc[0]}]},
        category=[{"coding": [{"code": category}]}],
        valueQuantity={"value": value, "unit": m.unit, "system": "http://unitsofmeasure.org", "code": m.unit},
    )
    reading = one(Mapper().map_payload(payload))
    assert (reading.feature, reading.value, reading.unit) == (name, value, m.unit)
    for unit, factor in m.conversions.items():  # every listed conversion is reachable from its UCUM code
        payload["valueQuantity"] = {"value": 1.0, "code": unit, "system": "http://unitsofmeasure.org"}
        result = Mapper().map_payload(payload)
        if m.low <= factor <= m.high:
            assert one(result).value == pytest.approx(factor, abs=1e-6)  # converted values keep 6 decimals
