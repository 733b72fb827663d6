"""PhysioNet/CinC Challenge 2019 hourly rows <-> Vigil's canonical events.

A PhysioNet-format frame has one row per ICU hour of a stay: ``patient_id``, ``hour`` (0-based within the stay),
the 34 measurement columns (NaN where not measured), ``Age``, ``Gender``, ``Unit1``, ``Unit2``, ``HospAdmTime``,
``ICULOS`` and ``SepsisLabel``.

Time convention: row ``hour = h`` is the hour bucket ``[icu_admitted_at + h, icu_admitted_at + h + 1)``, and its
readings are emitted with ``observed_at = icu_admitted_at + h hours`` exactly. Hour 0 of the rows is the ICU
admission (PhysioNet's ICULOS does not always start at 1 - in set A 37% of stays start later - and the offset is
deliberately not used: a live stream only knows the admission time the EHR sends). The feature state
(:mod:`vigil_scoring.features`) buckets readings by whole hours since ICU admission, so a stream of these events
rebuilds exactly the rows' hours.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pandas as pd

from vigil_contracts.events import (
    EncounterRecorded,
    ObservationRecorded,
    SourceRef,
    deterministic_id,
)
from vigil_contracts.vocabulary import BY_COLUMN, MEASUREMENTS

ICU_EPOCH = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
"""Default ICU admission time (hour 0) of simulated stays."""

MEASUREMENT_COLUMNS: tuple[str, ...] = tuple(m.column for m in MEASUREMENTS)
"""The 34 PhysioNet measurement columns, in the vocabulary's order."""

DEMOGRAPHIC_COLUMNS: tuple[str, ...] = ("Age", "Gender")
OTHER_COLUMNS: tuple[str, ...] = ("Unit1", "Unit2", "HospAdmTime", "ICULOS", "SepsisLabel")
ALL_COLUMNS: tuple[str, ...] = ("patient_id", "hour", *MEASUREMENT_COLUMNS, *DEMOGRAPHIC_COLUMNS, *OTHER_COLUMNS)

SOURCE_SYSTEM = "physionet2019"
"""``SourceRef.system`` of events made from PhysioNet rows."""


def _unit(stay: pd.DataFrame) -> str | None:
    """MICU / SICU from the stay's first row with a unit flag; None when neither is set (as in 49% of set A)."""
    for col, name in (("Unit1", "MICU"), ("Unit2", "SICU")):
        if col in stay and (stay[col] == 1).any():
            return name
    return None


def _first_valid(series: pd.Series) -> float | None:
    valid = series.dropna()
    return None if valid.empty else float(valid.iloc[0])


def _obs(
    *,
    encounter: str,
    patient: str,
    column: str,
    hour: int,
    value: float,
    observed_at: datetime,
) -> ObservationRecorded:
    m = BY_COLUMN[column]
    src = SourceRef(
        resource_type="Observation", resource_id=f"{encounter}-h{hour}-{column}", version_id="1", system=SOURCE_SYSTEM
    )
    return ObservationRecorded(
        event_id=ObservationRecorded.make_id(src, m.name, observed_at),
        occurred_at=observed_at,
        key=encounter,
        encounter=encounter,
        patient=patient,
        feature=m.name,
        value=value,
        unit=m.unit,
        observed_at=observed_at,
        source=src,
    )


def stay_events(
    stay: pd.DataFrame, *, encounter: str, patient: str, icu_admitted_at: datetime = ICU_EPOCH
) -> list[EncounterRecorded | ObservationRecorded]:
    """One stay's rows as canonical events, in time order.

    First an ``EncounterRecorded`` (unit from Unit1/Unit2, hospital admission from HospAdmTime), then the age and
    sex readings at ICU admission, then one ``ObservationRecorded`` per measured (non-NaN) cell at
    ``icu_admitted_at + hour``, hour by hour in the vocabulary's column order. Event ids are deterministic: the
    source resource id is ``{encounter}-h{hour}-{column}``.
    """
    stay = stay.sort_values("hour", kind="stable")
    hosp = _first_valid(stay["HospAdmTime"]) if "HospAdmTime" in stay else None
    enc_src = SourceRef(resource_type="Encounter", resource_id=encounter, version_id="1", system=SOURCE_SYSTEM)
    out: list[EncounterRecorded | ObservationRecorded] = [
        EncounterRecorded(
            event_id=deterministic_id("enc", encounter, "1"),
            occurred_at=icu_admitted_at,
            key=encounter,
            encounter=encounter,
            patient=patient,
            status="in-progress",
            icu_admitted_at=icu_admitted_at,
            hospital_admitted_at=(
                icu_admitted_at + timedelta(hours=hosp) if hosp is not None and math.isfinite(hosp) else None
            ),
            unit=_unit(stay),
            source=enc_src,
        )
    ]
    for col in DEMOGRAPHIC_COLUMNS:
        if col in stay:
            v = _first_valid(stay[col])
            if v is not None:
                out.append(
                    _obs(encounter=encounter, patient=patient, column=col, hour=0, value=v, observed_at=icu_admitted_at)
                )
    cols = [c for c in MEASUREMENT_COLUMNS if c in stay]
    hours = stay["hour"].to_numpy()
    values = stay[cols].to_numpy(dtype="float64")
    for i, h in enumerate(hours):
        at = icu_admitted_at + timedelta(hours=int(h))
        for j, col in enumerate(cols):
            v = values[i, j]
            if v == v:  # not NaN
                out.append(
                    _obs(encounter=encounter, patient=patient, column=col, hour=int(h), value=float(v), observed_at=at)
                )
    return out


def sepsis_onset_hour(stay: pd.DataFrame) -> int | None:
    """The challenge's t_sepsis in row hours: the first hour with SepsisLabel == 1, plus 6; None if never septic.

    The challenge labels septic stays from 6 hours before the clinical onset t_sepsis (earlier when the stay
    starts later than that), so first-positive + 6 recovers t_sepsis.
    """
    pos = stay.loc[stay["SepsisLabel"] == 1, "hour"]
    if pos.empty:
        return None
    return int(pos.min()) + 6
