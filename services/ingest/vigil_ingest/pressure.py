"""What a pressure measures: whether a systolic, diastolic or mean value is systemic arterial blood pressure.

Cardiac, pulmonary and venous pressure panels reuse the systemic component codes (8480-6, 8462-4, 8478-0) for
their own systolic, diastolic and mean values (the MII ICU and ISiK pulsatile-pressure profiles do, by design), so
a component code alone does not say what was measured. The whole Observation does: its code (the panel), the
component's other codings, ``bodySite``, ``method`` and ``category``. The codes and their sites are a table in the
vocabulary (``PRESSURE_SITE_CODES``); this module only reads it.

The rule, in order:

1. any code or display anywhere on the Observation naming a site that is not systemic arterial (pulmonary artery,
   atrium, ventricle, vein, skull, an extracorporeal circuit) -> ``other``: not a blood pressure (ignored, named);
2. a standalone systolic / diastolic / mean Observation (the value is on the Observation itself) -> ``systemic``
   (LOINC defines 8480-6 and its siblings on the arterial system);
3. a component of a panel whose code or body site is systemic arterial -> ``systemic``;
4. any other panel (a generic "blood pressure" with no site, a local code) -> ``unknown``: refused, because
   guessing the site wrong turns a pulmonary 25/8 into profound systemic hypotension.

Sources: see the vocabulary's table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from vigil_contracts.vocabulary import (
    NON_SYSTEMIC_IEEE_RANGES,
    NON_SYSTEMIC_WORDS,
    PRESSURE_SITE_CODES,
    SiteCode,
)

_LOINC = frozenset(
    {"http://loinc.org", "https://loinc.org", "http://loinc.org/", "loinc", "LN", "urn:oid:2.16.840.1.113883.6.1"}
)
_SNOMED = frozenset(
    {"http://snomed.info/sct", "https://snomed.info/sct", "snomed", "sct", "urn:oid:2.16.840.1.113883.6.96"}
)
_TABLE: dict[tuple[str, str], SiteCode] = {(c.system, c.code): c for c in PRESSURE_SITE_CODES}

Verdict = Literal["systemic", "other", "unknown"]


@dataclass(frozen=True, slots=True)
class SiteVerdict:
    """The site of one pressure value and why."""

    verdict: Verdict
    reason: str


def _system_of(system: Any) -> str | None:
    if not isinstance(system, str):
        return None
    if system in _LOINC:
        return "loinc"
    if system in _SNOMED:
        return "snomed"
    if "11073" in system:  # urn:iso:std:iso:11073:10101, and spellings seen in the wild (urn:std:iso:11073:10101)
        return "ieee11073"
    return None


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    codings = concept.get("coding")
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _concepts(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def _lookup(coding: dict[str, Any]) -> tuple[SiteCode | None, str | None]:
    """The table's row for a coding, and for an IEEE code in a non-systemic range its description."""
    system = _system_of(coding.get("system"))
    code = coding.get("code")
    if system is None or not isinstance(code, str):
        return None, None
    code = code.strip()
    row = _TABLE.get((system, code))
    if row is None and system == "ieee11073" and code.isdigit():
        number = int(code)
        for low, high, name in NON_SYSTEMIC_IEEE_RANGES:
            if low <= number <= high:
                return None, name
    return row, None


def _texts(concept: dict[str, Any]) -> list[str]:
    texts = [concept["text"]] if isinstance(concept.get("text"), str) else []
    texts.extend(c["display"] for c in _codings(concept) if isinstance(c.get("display"), str))
    return texts


def pressure_site(observation: dict[str, Any], component: dict[str, Any] | None) -> SiteVerdict:
    """Where the pressure of ``component`` (or of the Observation itself when None) was measured."""
    panel = _concepts(observation.get("code"))
    own = _concepts(component.get("code")) if component is not None else []
    around = (
        _concepts(observation.get("bodySite"))
        + _concepts(observation.get("method"))
        + _concepts(observation.get("category"))
    )
    systemic_context = False
    for concept in panel + own + around:
        for coding in _codings(concept):
            row, ieee_other = _lookup(coding)
            if ieee_other is not None:
                return SiteVerdict("other", f"a pressure of {ieee_other}, not systemic arterial blood pressure")
            if row is None:
                continue
            if row.site == "other":
                return SiteVerdict(
                    "other", f"{row.name} ({row.system} {row.code}) is not systemic arterial blood pressure"
                )
            if row.site == "systemic" and concept is not None and any(concept is c for c in panel + around):
                systemic_context = True
        for text in _texts(concept):
            lowered = text.lower()
            for word in NON_SYSTEMIC_WORDS:
                if word in lowered:
                    return SiteVerdict("other", f"a pressure named '{word}': not systemic arterial blood pressure")
    if component is None or systemic_context:
        return SiteVerdict("systemic", "")
    return SiteVerdict(
        "unknown",
        "blood-pressure components in a panel that names no systemic arterial site (code, bodySite): "
        "not taken as systemic arterial pressure",
    )
