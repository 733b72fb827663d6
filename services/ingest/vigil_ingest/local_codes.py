"""Local code systems whose codes name a vocabulary feature unambiguously (beyond LOINC and SNOMED CT).

MIMIC-IV on FHIR codes ICU charted vitals with ``d_items`` item ids and laboratory results with ``d_labitems``
item ids, without LOINC. These are the items the PhysioNet 2019 features come from in MIMIC-derived work; each
listed item measures exactly one feature (units are read from the quantity as usual).
"""

from __future__ import annotations

MIMIC_D_ITEMS = "http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-d-items"
MIMIC_D_LABITEMS = "http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-d-labitems"

LOCAL_CODES: dict[str, dict[str, str]] = {
    MIMIC_D_ITEMS: {
        "220045": "heart_rate",  # Heart Rate
        "220210": "resp_rate",  # Respiratory Rate
        "220277": "spo2",  # O2 saturation pulseoxymetry
        "223761": "temperature",  # Temperature Fahrenheit
        "223762": "temperature",  # Temperature Celsius
        "220179": "sbp",  # Non Invasive Blood Pressure systolic
        "220180": "dbp",  # Non Invasive Blood Pressure diastolic
        "220181": "map",  # Non Invasive Blood Pressure mean
        "220050": "sbp",  # Arterial Blood Pressure systolic
        "220051": "dbp",  # Arterial Blood Pressure diastolic
        "220052": "map",  # Arterial Blood Pressure mean
        "223835": "fio2",  # Inspired O2 Fraction
    },
    MIMIC_D_LABITEMS: {
        "50912": "creatinine",
        "50813": "lactate",
        "51301": "wbc",  # White Blood Cells
        "51265": "platelets",
        "51222": "hgb",
        "51221": "hct",
        "50931": "glucose",
        "51006": "bun",  # Urea Nitrogen
        "50902": "chloride",
        "50971": "potassium",
        "50893": "calcium",  # Calcium, Total
        "50960": "magnesium",
        "50970": "phosphate",
        "50885": "bilirubin_total",
        "50883": "bilirubin_direct",
        "50878": "ast",  # Asparate Aminotransferase (AST)
        "50863": "alkalinephos",
        "51275": "ptt",
        "51214": "fibrinogen",
        "50882": "hco3",  # Bicarbonate
        "50820": "ph",  # blood gas pH
        "50818": "paco2",  # blood gas pCO2
        "50802": "base_excess",
        "50817": "sao2",  # blood gas Oxygen Saturation
        "51002": "troponin_i",
    },
}
