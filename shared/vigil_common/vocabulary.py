"""The canonical vocabulary: the single source of truth for feature names, units and ranges.

One row per measurement of the PhysioNet/CinC Challenge 2019 data (the 34 vitals and labs), plus the
demographics. Ingest maps FHIR codes and units onto these rows; training and serving read features by these
names; drift monitors them. The canonical unit is the unit of the PhysioNet column.

(LOINC codes, SNOMED codes and unit conversions are filled in by the ingest mapping work.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Measurement:
    """One canonical feature."""

    name: str
    """snake_case feature name used on the wire and in models."""
    column: str
    """The PhysioNet 2019 column it corresponds to."""
    unit: str
    """Canonical UCUM unit (the PhysioNet column's unit)."""
    kind: Literal["vital", "lab", "demographic"]
    low: float
    """Lowest plausible value in the canonical unit; below is rejected as implausible."""
    high: float
    """Highest plausible value in the canonical unit."""
    loinc: tuple[str, ...] = ()
    """LOINC codes that map to this feature (first is the preferred one)."""
    snomed: tuple[str, ...] = ()
    """SNOMED CT codes that map unambiguously to this feature."""
    description: str = ""
    conversions: dict[str, float] = field(default_factory=dict)
    """Multiplicative factors from other UCUM units to the canonical unit (affine ones live in ingest)."""


VITALS: tuple[Measurement, ...] = (
    Measurement("heart_rate", "HR", "/min", "vital", 10, 300, description="Heart rate"),
    Measurement("spo2", "O2Sat", "%", "vital", 20, 100, description="Pulse oximetry"),
    Measurement("temperature", "Temp", "Cel", "vital", 24, 45, description="Body temperature"),
    Measurement("sbp", "SBP", "mm[Hg]", "vital", 20, 300, description="Systolic blood pressure"),
    Measurement("map", "MAP", "mm[Hg]", "vital", 10, 250, description="Mean arterial pressure"),
    Measurement("dbp", "DBP", "mm[Hg]", "vital", 5, 250, description="Diastolic blood pressure"),
    Measurement("resp_rate", "Resp", "/min", "vital", 1, 100, description="Respiration rate"),
    Measurement("etco2", "EtCO2", "mm[Hg]", "vital", 0, 150, description="End-tidal carbon dioxide"),
)

LABS: tuple[Measurement, ...] = (
    Measurement("base_excess", "BaseExcess", "mmol/L", "lab", -50, 50, description="Base excess"),
    Measurement("hco3", "HCO3", "mmol/L", "lab", 0, 70, description="Bicarbonate"),
    Measurement("fio2", "FiO2", "1", "lab", 0.15, 1.0, description="Fraction of inspired oxygen (fraction)"),
    Measurement("ph", "pH", "[pH]", "lab", 6.3, 8.0, description="pH"),
    Measurement("paco2", "PaCO2", "mm[Hg]", "lab", 5, 200, description="Partial pressure of CO2 in arterial blood"),
    Measurement("sao2", "SaO2", "%", "lab", 10, 100, description="Arterial oxygen saturation"),
    Measurement("ast", "AST", "U/L", "lab", 0, 20000, description="Aspartate transaminase"),
    Measurement("bun", "BUN", "mg/dL", "lab", 0, 300, description="Blood urea nitrogen"),
    Measurement("alkalinephos", "Alkalinephos", "U/L", "lab", 0, 5000, description="Alkaline phosphatase"),
    Measurement("calcium", "Calcium", "mg/dL", "lab", 1, 30, description="Calcium"),
    Measurement("chloride", "Chloride", "mmol/L", "lab", 40, 160, description="Chloride"),
    Measurement("creatinine", "Creatinine", "mg/dL", "lab", 0.05, 40, description="Creatinine"),
    Measurement("bilirubin_direct", "Bilirubin_direct", "mg/dL", "lab", 0, 60, description="Direct bilirubin"),
    Measurement("glucose", "Glucose", "mg/dL", "lab", 5, 2000, description="Serum glucose"),
    Measurement("lactate", "Lactate", "mmol/L", "lab", 0, 40, description="Lactic acid"),
    Measurement(
        "magnesium", "Magnesium", "mmol/L", "lab", 0.1, 10, description="Magnesium (PhysioNet column, labelled mmol/dL)"
    ),
    Measurement("phosphate", "Phosphate", "mg/dL", "lab", 0.1, 25, description="Phosphate"),
    Measurement("potassium", "Potassium", "mmol/L", "lab", 1, 12, description="Potassium"),
    Measurement("bilirubin_total", "Bilirubin_total", "mg/dL", "lab", 0, 60, description="Total bilirubin"),
    Measurement("troponin_i", "TroponinI", "ng/mL", "lab", 0, 500, description="Troponin I"),
    Measurement("hct", "Hct", "%", "lab", 5, 75, description="Hematocrit"),
    Measurement("hgb", "Hgb", "g/dL", "lab", 1, 25, description="Hemoglobin"),
    Measurement("ptt", "PTT", "s", "lab", 5, 250, description="Partial thromboplastin time"),
    Measurement("wbc", "WBC", "10*3/uL", "lab", 0, 500, description="Leukocyte count"),
    Measurement("fibrinogen", "Fibrinogen", "mg/dL", "lab", 10, 2000, description="Fibrinogen"),
    Measurement("platelets", "Platelets", "10*3/uL", "lab", 1, 3000, description="Platelets"),
)

DEMOGRAPHICS: tuple[Measurement, ...] = (
    Measurement("age", "Age", "a", "demographic", 0, 120, description="Age in years at admission"),
    Measurement("sex", "Gender", "1", "demographic", 0, 1, description="Sex: 1 male, 0 female (PhysioNet's Gender)"),
)

MEASUREMENTS: tuple[Measurement, ...] = VITALS + LABS
"""The 34 time-varying measurements, in PhysioNet column order."""

VOCABULARY: dict[str, Measurement] = {m.name: m for m in MEASUREMENTS + DEMOGRAPHICS}
BY_COLUMN: dict[str, Measurement] = {m.column: m for m in MEASUREMENTS + DEMOGRAPHICS}
FEATURE_NAMES: tuple[str, ...] = tuple(m.name for m in MEASUREMENTS)
