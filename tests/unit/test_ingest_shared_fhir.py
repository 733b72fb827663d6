"""Ingest against the real FHIR files of the kit (../shared/fhir): exact canonical output for each README case."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from vigil_contracts.events import ObservationRecorded, ObservationRetracted
from vigil_ingest.cli import map_files, read_payloads
from vigil_ingest.mapping import Mapper, MapResult, TimeRules

# MIMIC-IV shifts its dates into the 2100s: judged against today's clock, its readings are "in the future" and
# refused (test_ingest_time_sanity.py shows it); these tests read it with a clock of its own era.
SHIFTED_NOW = datetime(2300, 1, 1, tzinfo=UTC)


def shifted_mapper() -> Mapper:
    return Mapper(time_rules=TimeRules(clock=lambda: SHIFTED_NOW))


@pytest.fixture(scope="module")
def fhir_dir(shared_kit: Path) -> Path:
    return shared_kit / "fhir"


def map_file(path: Path, mapper: Mapper | None = None) -> MapResult:
    mapper = mapper or shifted_mapper()
    total = MapResult()
    for payload in read_payloads(path):
        total.extend(mapper.map_bytes(payload))
    return total


def readings(result: MapResult) -> list[ObservationRecorded]:
    return [e for e in result.events if isinstance(e, ObservationRecorded)]


def brief(e: ObservationRecorded) -> tuple[Any, ...]:
    return (e.source.resource_id, e.feature, e.value, e.unit, e.observed_at.isoformat(), e.encounter, e.patient)


MIMIC = "mimic-demo/mimic-iv-fhir-demo-2.1.0/fhir"
ENC = "0949507a-75df-58b0-80ef-8e5f86ec99ea"
PAT = "0a8eebfd-a352-522e-89f0-1d4a13abdebc"


def mimic_lines(fhir_dir: Path, n: int) -> list[bytes]:
    with gzip.open(fhir_dir / MIMIC / "MimicObservationVitalSignsED.ndjson.gz") as f:
        return [f.readline() for _ in range(n)]


def test_every_file_maps_without_a_crash(fhir_dir: Path) -> None:
    files = sorted(p for p in fhir_dir.rglob("*") if p.suffix in (".json", ".gz"))
    assert len(files) > 300
    out = io.StringIO()
    counts = map_files(files, out, clock=SHIFTED_NOW)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert counts["files"] == len(files)
    assert counts["events"] == sum(1 for line in lines if "event_id" in line)
    assert counts["rejections"] == sum(1 for line in lines if "rejected" in line)
    # every printed event carries the fields integrators look at
    for line in lines:
        if line.get("type") == "observation.recorded":
            assert {"encounter", "patient", "feature", "value", "unit", "observed_at", "source"} <= line.keys()
    assert counts["readings"] > 7000
    assert counts["encounters"] > 1000


def test_mimic_degf_temperatures_become_celsius(fhir_dir: Path) -> None:
    lines = mimic_lines(fhir_dir, 25)
    result = shifted_mapper().map_bytes(lines[4])  # 98.2 [degF]
    (reading,) = readings(result)
    assert brief(reading) == (
        "127a4324-a8fb-5bcb-9735-8ff7d98d822f",
        "temperature",
        36.777778,
        "Cel",
        "2180-07-22T23:47:00+00:00",
        ENC,
        PAT,
    )
    assert reading.value == pytest.approx(36.78, abs=0.01)
    assert (reading.original_value, reading.original_unit) == (98.2, "[degF]")
    second = readings(shifted_mapper().map_bytes(lines[24]))[0]  # 98.4 [degF]
    assert second.value == pytest.approx(36.89, abs=0.01)


def test_mimic_bp_panel_is_split_into_components(fhir_dir: Path) -> None:
    (line,) = mimic_lines(fhir_dir, 1)
    result = shifted_mapper().map_bytes(line)
    assert [brief(e) for e in readings(result)] == [
        ("b1887fd1-0da0-53b5-a9f3-03b2c3061561", "sbp", 81.0, "mm[Hg]", "2180-07-22T23:47:00+00:00", ENC, PAT),
        ("b1887fd1-0da0-53b5-a9f3-03b2c3061561", "dbp", 38.0, "mm[Hg]", "2180-07-22T23:47:00+00:00", ENC, PAT),
    ]
    assert not result.rejections


def test_mimic_absent_values_are_counted_not_published(fhir_dir: Path) -> None:
    lines = mimic_lines(fhir_dir, 10)
    result = shifted_mapper().map_bytes(lines[9])  # temperature with dataAbsentReason
    assert result.events == [] and result.rejections == []
    assert result.counts["absent"] == 1
    with gzip.open(fhir_dir / MIMIC / "MimicObservationVitalSignsED.ndjson.gz") as f:
        panel = next(line for line in f if b'"component"' in line and b"dataAbsentReason" in line)
    result = shifted_mapper().map_bytes(panel)  # BP panel whose components are absent
    assert result.events == [] and result.rejections == []
    assert result.counts["absent"] == 2


def test_mimic_whole_vitals_file(fhir_dir: Path) -> None:
    result = map_file(fhir_dir / MIMIC / "MimicObservationVitalSignsED.ndjson.gz")
    by_feature: dict[str, int] = {}
    for e in readings(result):
        by_feature[e.feature] = by_feature.get(e.feature, 0) + 1
    # 775 degF temperatures minus 37 recorded in Celsius range while labelled F (implausible in degF, rejected)
    assert by_feature["temperature"] == 775 - 37
    assert by_feature["sbp"] == by_feature["dbp"] == 1197 - 1  # one panel has an implausible systolic
    assert result.counts["absent"] == 485 + 91 + 71 + 54 + 2 * 63
    reasons = {r.reason for r in result.rejections}
    assert "temperature outside plausible range [24, 45] Cel" in reasons
    assert all(e.encounter is not None for e in result.events)


def test_mimic_encounters_patients_and_icu_units(fhir_dir: Path) -> None:
    mapper = shifted_mapper()
    map_file(fhir_dir / MIMIC / "MimicLocation.ndjson.gz", mapper)
    map_file(fhir_dir / MIMIC / "MimicPatient.ndjson.gz", mapper)
    icu = map_file(fhir_dir / MIMIC / "MimicEncounterICU.ndjson.gz", mapper)
    encounters = [e for e in icu.events if e.type == "encounter.recorded"]
    first = next(e for e in encounters if e.encounter == "aa9dc967-aece-541b-89d6-b0cedcd43d64")
    assert first.patient == "71a27b6b-5e41-509f-83a8-8f47e8fb8d78"
    assert first.icu_admitted_at is not None and first.icu_admitted_at.isoformat() == "2154-04-25T03:03:44+00:00"
    assert first.discharged_at is not None and first.discharged_at.isoformat() == "2154-05-02T19:55:21+00:00"
    units = {e.unit for e in encounters}
    assert {"MICU", "SICU"} <= units
    demo = [e for e in readings(icu) if e.encounter == first.encounter]
    assert sorted((e.feature, e.unit) for e in demo) == [("age", "a"), ("sex", "1")]
    assert all(e.observed_at == first.icu_admitted_at for e in demo)


def test_entered_in_error_temperature_is_a_retraction(fhir_dir: Path) -> None:
    result = map_file(fhir_dir / "hl7-examples/r4-core-spec/observation-example-f202-temperature.json")
    (event,) = result.events
    assert isinstance(event, ObservationRetracted)
    assert (event.retracted_resource.resource_id, event.feature, event.reason, event.patient) == (
        "f202",
        "temperature",
        "entered-in-error",
        "f201",
    )
    assert event.occurred_at.isoformat() == "2013-04-04T12:27:00+00:00"
    assert result.counts["retracted"] == 1 and not readings(result)


def test_spo2_with_two_loinc_codes_and_an_o2_flow_component(fhir_dir: Path) -> None:
    result = map_file(fhir_dir / "hl7-examples/us-core/observation-satO2-fiO2.json")
    assert [brief(e) for e in readings(result)] == [
        ("satO2-fiO2", "spo2", 95.0, "%", "2014-12-05T08:30:10+00:00", None, "example")
    ]
    assert not result.rejections


def test_pulse_ox_bundle_fio2_component_and_date_only_period(fhir_dir: Path) -> None:
    result = map_file(fhir_dir / "hl7-examples/fhir-test-cases/validator/PulseOxBundle_25Oct2022.json")
    assert [brief(e) for e in readings(result)] == [
        ("1814", "spo2", 95.0, "%", "2015-06-22T17:00:00+00:00", None, "1763"),
        ("1814", "fio2", 0.36, "1", "2015-06-22T17:00:00+00:00", None, "1763"),
        ("1825", "spo2", 95.0, "%", "2017-09-14T23:48:00+00:00", None, "1763"),
    ]
    assert [(r.resource_id, r.reason) for r in result.rejections] == [
        ("1825", "fio2: no value and no dataAbsentReason")
    ]


def test_average_blood_pressure_is_not_a_point_reading(fhir_dir: Path) -> None:
    result = map_file(fhir_dir / "hl7-examples/us-core/Observation-average-blood-pressure.json")
    assert result.events == []
    assert [r.reason for r in result.rejections] == ["an average over a period (96607-7 family) is not a point reading"]


def test_si_units_without_ucum_codes_are_converted(fhir_dir: Path) -> None:
    result = map_file(fhir_dir / "hl7-examples/r4-core-spec/diagnosticreport-example-ghp.json")
    got = {e.feature: (e.value, e.unit, e.original_value, e.original_unit) for e in readings(result)}
    assert got["creatinine"] == (1.017869, "mg/dL", 0.09, "mmol/L")
    assert got["glucose"] == (133.3184, "mg/dL", 7.4, "mmol/L")
    assert got["bilirubin_total"] == (0.409261, "mg/dL", 7.0, "umol/L")
    assert got["hgb"] == (17.6, "g/dL", 176.0, "g/L")
    assert got["platelets"] == (444.0, "10*3/uL", None, None)
    assert got["potassium"] == (4.2, "mmol/L", None, None)
    # no times on the results: they take their panel's effectiveDateTime
    assert {e.observed_at.isoformat() for e in readings(result)} == {"2015-08-16T06:40:17+00:00"}
    assert all(e.patient == "pat2" for e in readings(result))


def test_temperature_coded_only_in_snomed_and_patient_by_identifier(fhir_dir: Path) -> None:
    validator = fhir_dir / "hl7-examples/fhir-test-cases/validator"
    (bad,) = readings(map_file(validator / "obs-temp-bad.json"))
    assert brief(bad) == (
        "body-temperature-observation",
        "temperature",
        36.0,
        "Cel",
        "2020-06-30T09:50:55.300000+00:00",
        None,
        "urn:oid:1.2.752.129.2.1.3.1|19930514-2383",
    )
    (code2,) = readings(map_file(validator / "obs-temp-code2.json"))  # LOINC right, SNOMED with a typo
    assert (code2.feature, code2.value) == ("temperature", 36.0)
    weight = map_file(validator / "obs-de.json")  # body weight: outside the vocabulary, ignored, not an error
    assert weight.events == [] and weight.rejections == [] and weight.counts["ignored_code"] == 1


def test_invalid_json_is_rejected_with_its_reason(fhir_dir: Path) -> None:
    result = map_file(fhir_dir / "hl7-examples/fhir-test-cases/validator/observation-with-trailing-dot.json")
    assert result.events == []
    assert [r.reason for r in result.rejections] == ["invalid JSON: no digit after decimal point at line 22 column 22"]


def test_synthea_transaction_bundle(fhir_dir: Path) -> None:
    path = next((fhir_dir / "synthea/smart-generated-sample-data-r4").glob("Reuben_Lind_*.json"))
    result = map_file(path)
    obs = readings(result)
    features = {e.feature for e in obs}
    assert {"sbp", "dbp", "wbc", "creatinine", "glucose", "age", "sex"} <= features
    assert {e.patient for e in obs} == {"5654564d-5ae1-407c-8bcc-e7f96f773633"}  # urn:uuid subject resolved
    encounters = {e.encounter for e in result.events if e.type == "encounter.recorded"}
    assert {e.encounter for e in obs if e.feature == "sbp"} <= encounters  # urn:uuid references resolved
    assert len({e.event_id for e in result.events}) == len(result.events)


def test_dry_run_schema_check_is_advisory(fhir_dir: Path) -> None:
    path = fhir_dir / "hl7-examples/fhir-test-cases/validator/obs-quantity.json"  # no code: not a valid Observation
    out = io.StringIO()
    counts = map_files([path], out, validate=True)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert {
        "invalid": "code: Field required",
        "source": {"resource_type": "Observation", "resource_id": None, "file": str(path)},
    } in lines
    assert counts["schema_problems"] >= 1
