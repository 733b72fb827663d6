"""PhysioNet rows to canonical events: order, determinism, conventions; the challenge's onset time."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd

from vigil_contracts.events import EncounterRecorded, ObservationRecorded
from vigil_ml.data import SAMPLE_PATH
from vigil_scoring.physionet import ICU_EPOCH, MEASUREMENT_COLUMNS, sepsis_onset_hour, stay_events


def a_stay(septic: bool) -> pd.DataFrame:
    df = pd.read_parquet(SAMPLE_PATH)
    flags = df.groupby("patient_id")["SepsisLabel"].max()
    pid = sorted(flags.index[flags == int(septic)])[0]
    return df[df["patient_id"] == pid].reset_index(drop=True)


def test_events_follow_the_rows() -> None:
    stay = a_stay(septic=True)
    events = stay_events(stay, encounter="enc-9", patient="pat-9")
    enc = events[0]
    assert isinstance(enc, EncounterRecorded) and enc.icu_admitted_at == ICU_EPOCH and enc.encounter == "enc-9"
    obs = [e for e in events if isinstance(e, ObservationRecorded)]
    assert {"age", "sex"} <= {e.feature for e in obs[:2]}
    measured = int(stay[list(MEASUREMENT_COLUMNS)].notna().sum().sum())
    assert len(obs) == measured + 2
    times = [e.observed_at for e in obs]
    assert times == sorted(times)
    hr = [e for e in obs if e.feature == "heart_rate"]
    first_hr_hour = int(stay.loc[stay["HR"].notna(), "hour"].iloc[0])
    assert hr[0].observed_at == ICU_EPOCH + timedelta(hours=first_hr_hour)
    assert hr[0].value == stay.loc[stay["HR"].notna(), "HR"].iloc[0] and hr[0].unit == "/min"
    again = stay_events(stay, encounter="enc-9", patient="pat-9")
    assert [e.event_id for e in again] == [e.event_id for e in events]
    assert len({e.event_id for e in events}) == len(events)
    if stay["HospAdmTime"].notna().any():
        expected = ICU_EPOCH + timedelta(hours=float(stay["HospAdmTime"].iloc[0]))
        assert enc.hospital_admitted_at == expected


def test_sepsis_onset_hour() -> None:
    septic = a_stay(septic=True)
    first = int(septic.loc[septic["SepsisLabel"] == 1, "hour"].min())
    assert sepsis_onset_hour(septic) == first + 6
    assert sepsis_onset_hour(a_stay(septic=False)) is None
