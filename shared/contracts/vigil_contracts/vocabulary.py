"""The canonical vocabulary: the single source of truth for feature names, units and ranges.

One row per measurement of the PhysioNet/CinC Challenge 2019 data (the 34 vitals and labs), plus the
demographics. Ingest maps FHIR codes and units onto these rows; training and serving read features by these
names; drift monitors them. The canonical unit is the unit of the PhysioNet column.

LOINC codes are the ones in common use for each measurement (the first is the preferred one); SNOMED CT codes
are listed only where a code names the measurement unambiguously. ``conversions`` hold the multiplicative factors
from units seen in practice to the canonical unit, including the mass-to-molar ones that need a molecular weight
(which UCUM does not carry). Affine conversions (degF and K to Cel) and the recognition of units written as free
text live in ingest (``vigil_ingest.units``).

LOINC 2708-6 ("Oxygen saturation in Arterial blood") is sent for pulse oximetry by US Core and MIMIC, and for
blood-gas saturation by laboratories: it is listed under both ``spo2`` and ``sao2``, and ingest resolves it by
the Observation's category (laboratory: ``sao2``; otherwise ``spo2``).
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
    Measurement(
        "heart_rate",
        "HR",
        "/min",
        "vital",
        10,
        300,
        description="Heart rate",
        loinc=("8867-4", "8889-8", "8893-0"),
        snomed=("364075005", "78564009"),
        conversions={"{beats}/min": 1.0, "{beat}/min": 1.0, "1/min": 1.0},
    ),
    Measurement(
        "spo2",
        "O2Sat",
        "%",
        "vital",
        20,
        100,
        description="Pulse oximetry",
        loinc=("59408-5", "2708-6", "59417-6", "2710-2"),
        snomed=("431314004",),
        conversions={"1": 100.0, "%{saturation}": 1.0},
    ),
    Measurement(
        "temperature",
        "Temp",
        "Cel",
        "vital",
        24,
        45,
        description="Body temperature",
        loinc=("8310-5", "8331-1", "8332-9", "8333-7", "8328-7", "8329-5", "75539-7"),
        snomed=("276885007", "386725007"),
    ),
    Measurement(
        "sbp",
        "SBP",
        "mm[Hg]",
        "vital",
        20,
        300,
        description="Systolic blood pressure",
        loinc=("8480-6", "76215-5", "8459-0", "8460-8", "8461-6"),
        snomed=("271649006",),
        conversions={"kPa": 7.50061576},
    ),
    Measurement(
        "map",
        "MAP",
        "mm[Hg]",
        "vital",
        10,
        250,
        description="Mean arterial pressure",
        loinc=("8478-0", "76214-8"),
        snomed=("6797001",),
        conversions={"kPa": 7.50061576},
    ),
    Measurement(
        "dbp",
        "DBP",
        "mm[Hg]",
        "vital",
        5,
        250,
        description="Diastolic blood pressure",
        loinc=("8462-4", "76213-0", "8453-3", "8454-1", "8455-8"),
        snomed=("271650006",),
        conversions={"kPa": 7.50061576},
    ),
    Measurement(
        "resp_rate",
        "Resp",
        "/min",
        "vital",
        1,
        100,
        description="Respiration rate",
        loinc=("9279-1",),
        snomed=("86290005",),
        conversions={"{breaths}/min": 1.0, "{breath}/min": 1.0, "1/min": 1.0},
    ),
    Measurement(
        "etco2",
        "EtCO2",
        "mm[Hg]",
        "vital",
        0,
        150,
        description="End-tidal carbon dioxide",
        loinc=("19889-5",),
        conversions={"kPa": 7.50061576},
    ),
)

LABS: tuple[Measurement, ...] = (
    Measurement(
        "base_excess",
        "BaseExcess",
        "mmol/L",
        "lab",
        -50,
        50,
        description="Base excess",
        loinc=("11555-0", "1925-7"),
        conversions={"meq/L": 1.0, "mEq/L": 1.0},
    ),
    Measurement(
        "hco3",
        "HCO3",
        "mmol/L",
        "lab",
        0,
        70,
        description="Bicarbonate",
        loinc=("1963-8", "1959-6", "1960-4", "14627-4", "2028-9"),
        conversions={"meq/L": 1.0, "mEq/L": 1.0},
    ),
    Measurement(
        "fio2",
        "FiO2",
        "1",
        "lab",
        0.15,
        1.0,
        description="Fraction of inspired oxygen (fraction)",
        loinc=("3150-0",),
        conversions={"%": 0.01},
    ),
    Measurement(
        "ph",
        "pH",
        "[pH]",
        "lab",
        6.3,
        8.0,
        description="pH",
        loinc=("2744-1", "11558-4"),
        conversions={"1": 1.0, "{pH}": 1.0},
    ),
    Measurement(
        "paco2",
        "PaCO2",
        "mm[Hg]",
        "lab",
        5,
        200,
        description="Partial pressure of CO2 in arterial blood",
        loinc=("2019-8",),
        conversions={"kPa": 7.50061576},
    ),
    Measurement(
        "sao2",
        "SaO2",
        "%",
        "lab",
        10,
        100,
        description="Arterial oxygen saturation",
        loinc=("2708-6", "2713-6"),
        conversions={"1": 100.0},
    ),
    Measurement(
        "ast",
        "AST",
        "U/L",
        "lab",
        0,
        20000,
        description="Aspartate transaminase",
        loinc=("1920-8", "30239-8"),
        conversions={"[IU]/L": 1.0, "ukat/L": 60.0},
    ),
    Measurement(
        "bun",
        "BUN",
        "mg/dL",
        "lab",
        0,
        300,
        description="Blood urea nitrogen",
        loinc=("3094-0", "6299-2", "14937-7"),
        conversions={"mmol/L": 2.8014},
    ),
    Measurement(
        "alkalinephos",
        "Alkalinephos",
        "U/L",
        "lab",
        0,
        5000,
        description="Alkaline phosphatase",
        loinc=("6768-6",),
        conversions={"[IU]/L": 1.0, "ukat/L": 60.0},
    ),
    Measurement(
        "calcium",
        "Calcium",
        "mg/dL",
        "lab",
        1,
        30,
        description="Calcium",
        loinc=("17861-6", "2000-8", "49765-1"),
        conversions={"mmol/L": 4.008, "meq/L": 2.004, "mEq/L": 2.004},
    ),
    Measurement(
        "chloride",
        "Chloride",
        "mmol/L",
        "lab",
        40,
        160,
        description="Chloride",
        loinc=("2075-0", "2069-3"),
        conversions={"meq/L": 1.0, "mEq/L": 1.0},
    ),
    Measurement(
        "creatinine",
        "Creatinine",
        "mg/dL",
        "lab",
        0.05,
        40,
        description="Creatinine",
        loinc=("2160-0", "38483-4", "14682-9", "59826-8"),
        conversions={"umol/L": 0.01130966, "mmol/L": 11.30965845},
    ),
    Measurement(
        "bilirubin_direct",
        "Bilirubin_direct",
        "mg/dL",
        "lab",
        0,
        60,
        description="Direct bilirubin",
        loinc=("1968-7", "14629-0"),
        conversions={"umol/L": 0.05846586},
    ),
    Measurement(
        "glucose",
        "Glucose",
        "mg/dL",
        "lab",
        5,
        2000,
        description="Serum glucose",
        loinc=("2345-7", "2339-0", "14749-6", "15074-8", "41653-7"),
        conversions={"mmol/L": 18.016},
    ),
    Measurement(
        "lactate",
        "Lactate",
        "mmol/L",
        "lab",
        0,
        40,
        description="Lactic acid",
        loinc=("2524-7", "32693-4", "2518-9", "2519-7"),
        conversions={"meq/L": 1.0, "mEq/L": 1.0, "mg/dL": 0.11101243},
    ),
    Measurement(
        "magnesium",
        "Magnesium",
        "mmol/L",
        "lab",
        0.1,
        10,
        description="Magnesium (PhysioNet column, labelled mmol/dL)",
        loinc=("19123-9", "2601-3"),
        conversions={"mg/dL": 0.41143798, "meq/L": 0.5, "mEq/L": 0.5},
    ),
    Measurement(
        "phosphate",
        "Phosphate",
        "mg/dL",
        "lab",
        0.1,
        25,
        description="Phosphate",
        loinc=("2777-1", "14879-1"),
        conversions={"mmol/L": 3.0974},
    ),
    Measurement(
        "potassium",
        "Potassium",
        "mmol/L",
        "lab",
        1,
        12,
        description="Potassium",
        loinc=("2823-3", "6298-4"),
        conversions={"meq/L": 1.0, "mEq/L": 1.0},
    ),
    Measurement(
        "bilirubin_total",
        "Bilirubin_total",
        "mg/dL",
        "lab",
        0,
        60,
        description="Total bilirubin",
        loinc=("1975-2", "14631-6", "42719-5"),
        conversions={"umol/L": 0.05846586},
    ),
    Measurement(
        "troponin_i",
        "TroponinI",
        "ng/mL",
        "lab",
        0,
        500,
        description="Troponin I",
        loinc=("10839-9", "42757-5", "49563-0", "89579-7"),
        conversions={"ug/L": 1.0, "ng/L": 0.001, "pg/mL": 0.001},
    ),
    Measurement(
        "hct",
        "Hct",
        "%",
        "lab",
        5,
        75,
        description="Hematocrit",
        loinc=("4544-3", "20570-8"),
        conversions={"1": 100.0, "L/L": 100.0},
    ),
    Measurement(
        "hgb",
        "Hgb",
        "g/dL",
        "lab",
        1,
        25,
        description="Hemoglobin",
        loinc=("718-7", "20509-6", "30313-1", "59260-0"),
        conversions={"g/L": 0.1, "mmol/L": 1.6114},
    ),
    Measurement(
        "ptt", "PTT", "s", "lab", 5, 250, description="Partial thromboplastin time", loinc=("14979-9", "3173-2")
    ),
    Measurement(
        "wbc",
        "WBC",
        "10*3/uL",
        "lab",
        0,
        500,
        description="Leukocyte count",
        loinc=("6690-2", "26464-8", "804-5"),
        conversions={"10*9/L": 1.0, "/uL": 0.001, "/mm3": 0.001, "10*3/mm3": 1.0},
    ),
    Measurement(
        "fibrinogen",
        "Fibrinogen",
        "mg/dL",
        "lab",
        10,
        2000,
        description="Fibrinogen",
        loinc=("3255-7",),
        conversions={"g/L": 100.0},
    ),
    Measurement(
        "platelets",
        "Platelets",
        "10*3/uL",
        "lab",
        1,
        3000,
        description="Platelets",
        loinc=("777-3", "26515-7"),
        conversions={"10*9/L": 1.0, "/uL": 0.001, "/mm3": 0.001, "10*3/mm3": 1.0},
    ),
)

DEMOGRAPHICS: tuple[Measurement, ...] = (
    Measurement(
        "age",
        "Age",
        "a",
        "demographic",
        0,
        120,
        description="Age in years at admission",
        loinc=("30525-0", "21612-7"),
        conversions={"mo": 0.08333333},
    ),
    Measurement("sex", "Gender", "1", "demographic", 0, 1, description="Sex: 1 male, 0 female (PhysioNet's Gender)"),
)

MEASUREMENTS: tuple[Measurement, ...] = VITALS + LABS
"""The 34 time-varying measurements, in PhysioNet column order."""

VOCABULARY: dict[str, Measurement] = {m.name: m for m in MEASUREMENTS + DEMOGRAPHICS}
BY_COLUMN: dict[str, Measurement] = {m.column: m for m in MEASUREMENTS + DEMOGRAPHICS}
FEATURE_NAMES: tuple[str, ...] = tuple(m.name for m in MEASUREMENTS)


# --- What a pressure measures -----------------------------------------------------------------------------------
# Systemic arterial pressure (sbp, dbp, map) is judged by the whole Observation, not by its component codes alone:
# cardiac, pulmonary and venous pressure panels reuse the systemic component codes 8480-6 / 8462-4 / 8478-0 for
# their own systolic / diastolic / mean values (MII ICU and ISiK pulsatile pressure profiles; tests/testdata/fhir/
# sites/README.md cites each example). Sources of the codes: LOINC (loinc.org, the "System" axis of each term),
# SNOMED CT observable entities and body structures, ISO/IEEE 11073-10101 (MDC_PRESS_BLD_*), and the MII ICU
# module's value sets (medizininformatik-initiative/kerndatensatzmodul-intensivmedizin).

PressureSite = Literal["systemic", "generic", "other"]


@dataclass(frozen=True)
class SiteCode:
    """One code that says where a pressure was measured."""

    system: Literal["loinc", "snomed", "ieee11073"]
    code: str
    site: PressureSite
    """``systemic``: systemic arterial; ``generic``: a blood pressure of no stated site; ``other``: not systemic."""
    name: str
    """What the code names (used in the refusal's reason)."""


PRESSURE_SITE_CODES: tuple[SiteCode, ...] = (
    # Systemic arterial blood-pressure panels and observables (LOINC system axis "Arterial system").
    SiteCode("loinc", "85354-9", "systemic", "blood pressure panel"),
    SiteCode("loinc", "55284-4", "systemic", "blood pressure systolic and diastolic"),
    SiteCode("loinc", "35094-2", "systemic", "blood pressure panel"),
    SiteCode("snomed", "364090009", "systemic", "systemic arterial pressure"),
    SiteCode("snomed", "386534000", "systemic", "arterial blood pressure"),
    SiteCode("snomed", "251076008", "systemic", "cuff blood pressure"),
    SiteCode("snomed", "163020007", "systemic", "blood pressure reading"),
    SiteCode("ieee11073", "150020", "systemic", "MDC_PRESS_BLD_NONINV"),
    SiteCode("ieee11073", "150032", "systemic", "MDC_PRESS_BLD_ART"),
    SiteCode("ieee11073", "150036", "systemic", "MDC_PRESS_BLD_ART_ABP"),
    SiteCode("ieee11073", "150040", "systemic", "MDC_PRESS_BLD_AORT"),
    # "Blood pressure" without a site: the MII ICU parent of every pulsatile pressure (systemic, pulmonary, atrial,
    # ventricular) carries it, so it does not make a panel systemic.
    SiteCode("snomed", "75367002", "generic", "blood pressure (no site)"),
    SiteCode("ieee11073", "150016", "generic", "MDC_PRESS_BLD (no site)"),
    # Pulmonary artery and wedge.
    SiteCode("loinc", "76284-9", "other", "pulmonary artery blood pressure panel"),
    SiteCode("loinc", "8440-0", "other", "pulmonary artery systolic pressure"),
    SiteCode("loinc", "8385-7", "other", "pulmonary artery diastolic pressure"),
    SiteCode("loinc", "8414-5", "other", "pulmonary artery mean pressure"),
    SiteCode("loinc", "75994-4", "other", "pulmonary artery wedge pressure"),
    SiteCode("snomed", "250767002", "other", "pulmonary artery pressure"),
    SiteCode("snomed", "118433006", "other", "pulmonary artery wedge pressure"),
    SiteCode("ieee11073", "150044", "other", "MDC_PRESS_BLD_ART_PULM"),
    SiteCode("ieee11073", "150052", "other", "MDC_PRESS_BLD_ART_PULM_WEDGE"),
    # Atria.
    SiteCode("loinc", "60996-6", "other", "right atrial pressure"),
    SiteCode("loinc", "60998-2", "other", "right atrial systolic pressure"),
    SiteCode("loinc", "60997-4", "other", "right atrial diastolic pressure"),
    SiteCode("loinc", "8400-4", "other", "right atrial mean pressure"),
    SiteCode("loinc", "60988-3", "other", "left atrial pressure"),
    SiteCode("loinc", "60989-1", "other", "left atrial systolic pressure"),
    SiteCode("loinc", "75933-2", "other", "left atrial diastolic pressure"),
    SiteCode("loinc", "8399-8", "other", "left atrial mean pressure"),
    SiteCode("snomed", "276755008", "other", "right atrial pressure"),
    SiteCode("snomed", "276775004", "other", "mean right atrial pressure"),
    SiteCode("snomed", "276760007", "other", "left atrial pressure"),
    SiteCode("ieee11073", "150064", "other", "MDC_PRESS_BLD_ATR_LEFT"),
    SiteCode("ieee11073", "150068", "other", "MDC_PRESS_BLD_ATR_RIGHT"),
    # Ventricles.
    SiteCode("loinc", "8430-1", "other", "left ventricular systolic pressure"),
    SiteCode("loinc", "8375-8", "other", "left ventricular diastolic pressure"),
    SiteCode("loinc", "8404-6", "other", "left ventricular mean pressure"),
    SiteCode("loinc", "8432-7", "other", "right ventricular systolic pressure"),
    SiteCode("loinc", "8377-4", "other", "right ventricular diastolic pressure"),
    SiteCode("loinc", "8406-1", "other", "right ventricular mean pressure"),
    SiteCode("snomed", "276769008", "other", "left ventricular pressure"),
    SiteCode("snomed", "276756009", "other", "right ventricular pressure"),
    SiteCode("ieee11073", "150100", "other", "MDC_PRESS_BLD_VENT_LEFT"),
    SiteCode("ieee11073", "150104", "other", "MDC_PRESS_BLD_VENT_RIGHT"),
    # Veins, skull, extracorporeal circuits.
    SiteCode("loinc", "60985-9", "other", "central venous pressure"),
    SiteCode("snomed", "71420008", "other", "central venous pressure"),
    SiteCode("ieee11073", "150084", "other", "MDC_PRESS_BLD_VEN_CENT"),
    SiteCode("loinc", "60956-0", "other", "intracranial pressure"),
    SiteCode("snomed", "250844005", "other", "intracranial pressure"),
    SiteCode("snomed", "252076005", "other", "venous pressure"),
    SiteCode("snomed", "182744004", "other", "extracorporeal circulation (a circuit's pressure, not the patient's)"),
    # Body sites (Observation.bodySite), SNOMED CT body structures.
    SiteCode("snomed", "81040000", "other", "pulmonary artery"),
    SiteCode("snomed", "430160002", "other", "branch of pulmonary artery"),
    SiteCode("snomed", "73829009", "other", "right atrium"),
    SiteCode("snomed", "82471001", "other", "left atrium"),
    SiteCode("snomed", "53085002", "other", "right ventricle"),
    SiteCode("snomed", "87878005", "other", "left ventricle"),
    SiteCode("snomed", "244385005", "other", "left ventricle"),
    SiteCode("snomed", "64262003", "other", "vena cava"),
    SiteCode("snomed", "48345005", "other", "superior vena cava"),
    SiteCode("snomed", "64131007", "other", "inferior vena cava"),
    SiteCode("snomed", "731998000", "other", "intracranial subarachnoid space"),
    SiteCode("snomed", "11527006", "systemic", "radial artery"),
    SiteCode("snomed", "17137000", "systemic", "brachial artery"),
    SiteCode("snomed", "7657000", "systemic", "femoral artery"),
    SiteCode("snomed", "15825003", "systemic", "aorta"),
    SiteCode("snomed", "86547008", "systemic", "dorsalis pedis artery"),
    SiteCode("snomed", "40983000", "systemic", "upper arm"),
    SiteCode("snomed", "368208006", "systemic", "left upper arm"),
    SiteCode("snomed", "368209003", "systemic", "right upper arm"),
    SiteCode("snomed", "8205005", "systemic", "wrist"),
    SiteCode("snomed", "68367000", "systemic", "thigh"),
)
"""Codes that tell where a pressure was measured (code, component code, bodySite, method or category)."""

NON_SYSTEMIC_IEEE_RANGES: tuple[tuple[int, int, str], ...] = (
    (150044, 150055, "pulmonary artery (MDC_PRESS_BLD_ART_PULM*)"),
    (150060, 150111, "an atrium, vein or ventricle (MDC_PRESS_BLD_ATR_* / VEN_* / VENT_*)"),
)
"""ISO/IEEE 11073-10101 blood-pressure terms whose site is not systemic arterial: each term is followed by its
systolic, diastolic and mean (e.g. 150044 MDC_PRESS_BLD_ART_PULM, 150045-150047), so components are covered."""

NON_SYSTEMIC_WORDS: tuple[str, ...] = (
    "pulmonary",
    "pulmonal",
    "wedge",
    "atrial",
    "atrium",
    "vorhof",
    "ventric",
    "central venous",
    "zentralven",
    "venous",
    "venös",
    "venoes",
    "vena cava",
    "intracranial",
    "intrakran",
    "extracorporeal",
    "extrakorporal",
)
"""Words of a display or text naming a site that is not systemic arterial (English and German): a last resort for
codes outside the table, checked only on pressures that would otherwise map to sbp, dbp or map."""

SYSTEMIC_PRESSURE_FEATURES: frozenset[str] = frozenset({"sbp", "dbp", "map"})
"""Features that are systemic arterial pressures."""
