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

import re
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


_ANY_WORD = re.compile("|".join(re.escape(word) for word in NON_SYSTEMIC_WORDS))
"""A one-pass filter: only a text that holds some word is searched word by word (for the list's first word)."""


def _scan(concepts: list[dict[str, Any]], *, context: bool) -> tuple[SiteVerdict | None, bool]:
    """The first sign of another site in ``concepts`` (in order), and whether a systemic code names the context.

    ``context``: the concepts are the Observation's own (its code, bodySite, method, category), whose systemic
    codes make its components systemic; a component's own code does not. Per concept, its codes are judged before
    its texts (its ``text``, then its codings' displays), as the rule reads them. One pass over each concept's
    codings: this runs for every blood pressure ingest maps.
    """
    systemic_context = False
    for concept in concepts:
        raw = concept.get("coding")
        displays: list[str] = []
        if isinstance(raw, list):
            for coding in raw:
                if not isinstance(coding, dict):
                    continue
                display = coding.get("display")
                if isinstance(display, str):
                    displays.append(display)
                row, ieee_other = _lookup(coding)
                if ieee_other is not None:
                    verdict = SiteVerdict("other", f"a pressure of {ieee_other}, not systemic arterial blood pressure")
                    return verdict, False
                if row is None:
                    continue
                if row.site == "other":
                    reason = f"{row.name} ({row.system} {row.code}) is not systemic arterial blood pressure"
                    return SiteVerdict("other", reason), False
                if row.site == "systemic" and context:
                    systemic_context = True
        text = concept.get("text")
        for named in [text, *displays] if isinstance(text, str) else displays:
            lowered = named.lower()
            if _ANY_WORD.search(lowered) is None:
                continue
            for word in NON_SYSTEMIC_WORDS:
                if word in lowered:
                    reason = f"a pressure named '{word}': not systemic arterial blood pressure"
                    return SiteVerdict("other", reason), False
    return None, systemic_context


_SYSTEMIC = SiteVerdict("systemic", "")
_UNKNOWN = SiteVerdict(
    "unknown",
    "blood-pressure components in a panel that names no systemic arterial site (code, bodySite): "
    "not taken as systemic arterial pressure",
)


class PressureSites:
    """The site rule for one Observation: its own concepts are read once, however many components ask.

    The Observation's code, bodySite, method and category are the same for each of its components; reading them
    per component (as one ``pressure_site`` call each) cost a BP panel about twice the rest of its mapping
    (bench/bench_ingest.py, issue 18 item 7). The verdicts are the same as evaluating the rule's concepts in order:
    the panel's code, the component's code, then bodySite, method and category.
    """

    __slots__ = ("_around", "_around_systemic", "_panel", "_panel_systemic")

    def __init__(self, observation: dict[str, Any]) -> None:
        self._panel, self._panel_systemic = _scan(_concepts(observation.get("code")), context=True)
        around = (
            _concepts(observation.get("bodySite"))
            + _concepts(observation.get("method"))
            + _concepts(observation.get("category"))
        )
        self._around, self._around_systemic = _scan(around, context=True)

    def of(self, component: dict[str, Any] | None) -> SiteVerdict:
        """Where the pressure of ``component`` (or of the Observation itself when None) was measured."""
        if self._panel is not None:
            return self._panel
        if component is not None:
            own, _ = _scan(_concepts(component.get("code")), context=False)
            if own is not None:
                return own
        if self._around is not None:
            return self._around
        if component is None or self._panel_systemic or self._around_systemic:
            return _SYSTEMIC
        return _UNKNOWN


def pressure_site(observation: dict[str, Any], component: dict[str, Any] | None) -> SiteVerdict:
    """Where the pressure of ``component`` (or of the Observation itself when None) was measured."""
    return PressureSites(observation).of(component)
