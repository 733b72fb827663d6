"""Units: from what senders write to the feature's canonical UCUM unit.

Three layers, fastest first, every answer cached per (feature, unit):

1. the vocabulary's own table (canonical unit, multiplicative ``conversions`` incl. mass-to-molar ones that need
   a molecular weight) plus the affine temperature conversions below;
2. units written as free text ("F", "beats/minute", "x10E3/uL", "µmol/l") recognised by an alias table, only
   where the text names one unit unambiguously;
3. any other valid UCUM code converted dimensionally by ``ucumvert`` (a UCUM grammar over pint), loaded lazily
   on first need, so "mg/L" creatinine or "dL/L" work without a table row.

What none of them resolves is rejected with a reason that names the unit (units are not PHI).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from vigil_contracts.vocabulary import Measurement

log = logging.getLogger(__name__)

UCUM_SYSTEMS = frozenset({"http://unitsofmeasure.org", "https://unitsofmeasure.org", "urn:oid:2.16.840.1.113883.6.8"})

# Affine conversions to the canonical unit: value * factor + offset.
AFFINE: dict[tuple[str, str], tuple[float, float]] = {
    ("Cel", "[degF]"): (5.0 / 9.0, -32.0 * 5.0 / 9.0),
    ("Cel", "K"): (1.0, -273.15),
}

# Free-text units (compared lower-cased, spaces removed, micro signs folded to "u") -> UCUM code.
TEXT_ALIASES: dict[str, str] = {
    # temperature
    "f": "[degF]",
    "°f": "[degF]",
    "degf": "[degF]",
    "deg.f": "[degF]",
    "degreesf": "[degF]",
    "degreef": "[degF]",
    "fahrenheit": "[degF]",
    "degreesfahrenheit": "[degF]",
    "degreefahrenheit": "[degF]",
    "degfahrenheit": "[degF]",
    "[degf]": "[degF]",
    "c": "Cel",
    "°c": "Cel",
    "degc": "Cel",
    "deg.c": "Cel",
    "degreesc": "Cel",
    "degreec": "Cel",
    "celsius": "Cel",
    "degreescelsius": "Cel",
    "degreecelsius": "Cel",
    "degcelsius": "Cel",
    "centigrade": "Cel",
    "cel": "Cel",
    "kelvin": "K",
    # rates
    "/min": "/min",
    "1/min": "/min",
    "bpm": "/min",
    "beats/min": "/min",
    "beats/minute": "/min",
    "beatsperminute": "/min",
    "{beats}/min": "/min",
    "{beat}/min": "/min",
    "breaths/min": "/min",
    "breaths/minute": "/min",
    "breathsperminute": "/min",
    "{breaths}/min": "/min",
    "{breath}/min": "/min",
    "br/min": "/min",
    "insp/min": "/min",
    "permin": "/min",
    "/minute": "/min",
    # pressure
    "mmhg": "mm[Hg]",
    "mm[hg]": "mm[Hg]",
    "mm(hg)": "mm[Hg]",
    "kpa": "kPa",
    # fractions
    "%": "%",
    "percent": "%",
    "l/l": "L/L",
    "fraction": "1",
    # chemistry
    "mg/dl": "mg/dL",
    "mg/l": "mg/L",
    "g/dl": "g/dL",
    "gm/dl": "g/dL",
    "gr/dl": "g/dL",
    "g/l": "g/L",
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "mcmol/l": "umol/L",
    "micromol/l": "umol/L",
    "meq/l": "meq/L",
    "u/l": "U/L",
    "iu/l": "U/L",
    "[iu]/l": "U/L",
    "units/l": "U/L",
    "ukat/l": "ukat/L",
    "ng/ml": "ng/mL",
    "ng/l": "ng/L",
    "ug/l": "ug/L",
    "mcg/l": "ug/L",
    "pg/ml": "pg/mL",
    "s": "s",
    "sec": "s",
    "secs": "s",
    "second": "s",
    "seconds": "s",
    # counts
    "10*9/l": "10*9/L",
    "10^9/l": "10*9/L",
    "x10*9/l": "10*9/L",
    "x10^9/l": "10*9/L",
    "x10e9/l": "10*9/L",
    "10e9/l": "10*9/L",
    "giga/l": "10*9/L",
    "10⁹/l": "10*9/L",
    "x10⁹/l": "10*9/L",
    "10*3/ul": "10*3/uL",
    "10^3/ul": "10*3/uL",
    "x10*3/ul": "10*3/uL",
    "x10^3/ul": "10*3/uL",
    "x10e3/ul": "10*3/uL",
    "10e3/ul": "10*3/uL",
    "k/ul": "10*3/uL",
    "k/mcl": "10*3/uL",
    "thou/mcl": "10*3/uL",
    "10^3/mcl": "10*3/uL",
    "x10^3/mcl": "10*3/uL",
    "10*3/mcl": "10*3/uL",
    "10³/ul": "10*3/uL",
    "x10³/ul": "10*3/uL",
    "thou/ul": "10*3/uL",
    "10*3/mm3": "10*3/uL",
    "10^3/mm3": "10*3/uL",
    "k/mm3": "10*3/uL",
    "/ul": "/uL",
    "cells/ul": "/uL",
    "/mcl": "/uL",
    "/mm3": "/uL",
    # time
    "a": "a",
    "yr": "a",
    "yrs": "a",
    "years": "a",
    "mo": "mo",
    "months": "mo",
    # pH
    "ph": "[pH]",
    "[ph]": "[pH]",
    "{ph}": "[pH]",
}

# Features whose canonical unit is the only one used in practice: a value with no unit at all is read in it.
UNITLESS_OK = frozenset({"heart_rate", "resp_rate", "spo2", "sao2", "sbp", "dbp", "map", "ph", "hct", "age"})

_SPACES = re.compile(r"\s+")


class UnitError(ValueError):
    """A unit that cannot be read or converted for a feature."""


@dataclass(frozen=True, slots=True)
class Conversion:
    """value_canonical = value * factor + offset."""

    factor: float
    offset: float = 0.0

    def apply(self, value: float) -> float:
        """Convert one value."""
        return value * self.factor + self.offset


IDENTITY = Conversion(1.0)


def normalise_text(text: str) -> str:
    """Lower-case, without spaces, micro signs folded to 'u'."""
    return _SPACES.sub("", text).replace("µ", "u").replace("μ", "u").lower()


class UnitConverter:
    """Resolves (feature, unit code, unit text) to a conversion into the canonical unit; thread-safe, cached."""

    def __init__(self, *, use_ucum_library: bool = True) -> None:
        self.use_ucum_library = use_ucum_library
        self._cache: dict[tuple[str, str | None, str | None, bool], tuple[Conversion | None, str]] = {}
        self._registry: Any = None
        self._lock = threading.Lock()

    def resolve(self, m: Measurement, code: str | None, text: str | None, *, ucum: bool) -> tuple[Conversion, str]:
        """The conversion and the UCUM code recognised; raises :class:`UnitError` with a reason.

        ``ucum`` says the code came with the UCUM system; a code without it is treated like text.
        """
        key = (m.name, code, text, ucum)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._resolve(m, code, text, ucum)
            if len(self._cache) < 100_000:
                self._cache[key] = hit
        conversion, recognised = hit
        if conversion is None:
            raise UnitError(recognised)
        return conversion, recognised

    def _resolve(self, m: Measurement, code: str | None, text: str | None, ucum: bool) -> tuple[Conversion | None, str]:
        candidates: list[str] = []
        if code:
            candidates.append(code)
            alias = TEXT_ALIASES.get(normalise_text(code))
            if alias:
                candidates.append(alias)
        if text:
            alias = TEXT_ALIASES.get(normalise_text(text))
            if alias:
                candidates.append(alias)
            elif not code:
                candidates.append(text.strip())
        if not candidates:
            if m.name in UNITLESS_OK or m.unit == "1":
                return IDENTITY, m.unit
            return None, f"{m.name}: no unit given and {m.unit} cannot be assumed"
        for unit in candidates:
            conversion = self._table(m, unit)
            if conversion is not None:
                return conversion, unit
        # Only a string that is a UCUM code (given with the UCUM system, or found by the alias table) goes to the
        # dimensional converter; free text that merely parses as UCUM is too risky ("F" would be farads).
        ucum_candidates = [c for c in candidates if (ucum and c == code) or c in TEXT_ALIASES.values()]
        if self.use_ucum_library:
            for unit in ucum_candidates:
                conversion = self._dimensional(unit, m.unit)
                if conversion is not None:
                    return conversion, unit
        shown = code or text or ""
        return None, f"{m.name}: unit '{shown[:40]}' not recognised or not convertible to {m.unit}"

    @staticmethod
    def _table(m: Measurement, unit: str) -> Conversion | None:
        if unit == m.unit:
            return IDENTITY
        if unit in m.conversions:
            return Conversion(m.conversions[unit])
        affine = AFFINE.get((m.unit, unit))
        if affine is not None:
            return Conversion(*affine)
        return None

    def _dimensional(self, unit: str, canonical: str) -> Conversion | None:
        registry = self._ucum()
        if registry is None:
            return None
        try:
            source = registry.from_ucum(unit)
            target = registry.from_ucum(canonical)
            zero = registry.Quantity(0.0, source.units).to(target.units).magnitude
            one = registry.Quantity(1.0, source.units).to(target.units).magnitude
            factor = float(one - zero) * float(source.magnitude) / float(target.magnitude)
            return Conversion(factor, float(zero) / float(target.magnitude))
        except Exception:
            return None

    def warm_up(self) -> bool:
        """Load the UCUM library now (about a second), so the first unusual unit does not stall a request."""
        return self._ucum() is not None

    def _ucum(self) -> Any:
        with self._lock:
            if self._registry is None:
                try:
                    from ucumvert import PintUcumRegistry

                    self._registry = PintUcumRegistry()
                except Exception as error:  # the table still works without the library
                    log.warning("ucum library unavailable", extra={"error_type": type(error).__name__})
                    self._registry = False
            return self._registry or None
