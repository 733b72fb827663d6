"""What was measured decides the feature: pressures of other sites never become systemic blood pressure."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from vigil_contracts.events import ObservationRecorded
from vigil_contracts.vocabulary import PRESSURE_SITE_CODES
from vigil_ingest.mapping import Mapper
from vigil_ingest.pressure import pressure_site

SITES = Path(__file__).resolve().parents[1] / "testdata" / "fhir" / "sites"
EXPECTED: dict[str, Any] = json.loads((SITES / "expected.json").read_text())
L, S = "http://loinc.org", "http://snomed.info/sct"


def mapped(resource: dict[str, Any]) -> tuple[dict[str, float], str, list[str]]:
    result = Mapper().map_payload(resource)
    values = {e.feature: e.value for e in result.events if isinstance(e, ObservationRecorded)}
    (entry,) = result.entries
    return values, entry.outcome, [r.reason for r in result.rejections]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_profile_example(name: str) -> None:
    values, outcome, reasons = mapped(json.loads((SITES / name).read_text()))
    expected = EXPECTED[name]
    if isinstance(expected, dict):
        assert values == {k: float(v) for k, v in expected.items()}
        assert outcome == "mapped"
    else:
        assert values == {}, f"{name}: a pressure of another site became {values}"
        assert outcome == expected
        if outcome == "rejected":
            assert any("no systemic arterial site" in r for r in reasons)


def test_every_file_is_expected() -> None:
    assert sorted(p.name for p in SITES.glob("*.json") if p.name != "expected.json") == sorted(EXPECTED)


def panel(code: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    resource = json.loads((SITES / "synthea-bp.json").read_text())
    resource["code"] = {"coding": code}
    resource.update(extra)
    return resource


def test_the_site_of_an_unknown_panel_is_refused_not_guessed() -> None:
    values, outcome, reasons = mapped(panel([{"system": "urn:local", "code": "ABP"}]))
    assert values == {} and outcome == "rejected" and reasons


def test_a_systemic_body_site_makes_an_unknown_panel_systemic() -> None:
    values, _, _ = mapped(
        panel([{"system": "urn:local", "code": "NIBP"}], bodySite={"coding": [{"system": S, "code": "368208006"}]})
    )
    assert values == {"sbp": 118.0, "dbp": 76.0}


@pytest.mark.parametrize(
    "extra",
    [
        {"bodySite": {"coding": [{"system": S, "code": "81040000"}]}},
        {"bodySite": {"text": "Arteria pulmonalis"}},
        {"method": {"text": "pulmonary artery catheter"}},
        {"bodySite": {"coding": [{"system": S, "code": "48345005", "display": "Superior vena cava"}]}},
    ],
)
def test_body_site_or_method_of_another_site_wins_over_a_systemic_panel_code(extra: dict[str, Any]) -> None:
    values, outcome, _ = mapped(panel([{"system": L, "code": "55284-4"}], **extra))
    assert values == {} and outcome == "ignored"


def test_a_standalone_systolic_with_a_pulmonary_body_site_is_not_blood_pressure() -> None:
    resource = json.loads((SITES / "standalone-systolic.json").read_text())
    resource["bodySite"] = {"coding": [{"system": S, "code": "81040000"}]}
    assert mapped(resource)[0] == {}


def test_other_features_of_a_panel_are_unaffected() -> None:
    resource = json.loads((SITES / "mii-pulmonary-artery.json").read_text())
    hr = copy.deepcopy(resource["component"][0])
    hr["code"] = {"coding": [{"system": L, "code": "8867-4"}]}
    hr["valueQuantity"] = {"value": 88, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
    resource["component"].append(hr)
    values, outcome, _ = mapped(resource)
    assert values == {"heart_rate": 88.0} and outcome == "mapped"


def test_the_table_has_sources_for_each_site_kind() -> None:
    sites = {c.site for c in PRESSURE_SITE_CODES}
    assert sites == {"systemic", "generic", "other"}
    assert len({(c.system, c.code) for c in PRESSURE_SITE_CODES}) == len(PRESSURE_SITE_CODES)
    assert pressure_site({"code": {"coding": [{"system": S, "code": "75367002"}]}}, {"code": {}}).verdict == "unknown"
