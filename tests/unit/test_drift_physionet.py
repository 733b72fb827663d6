"""The detector core on real stays (PhysioNet 2019 set A, from the kit): quiet on one hospital, loud on drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vigil_drift.check import on_timeline, run_check

STAYS_PER_HALF = 3000


@pytest.fixture(scope="module")
def halves(shared_kit: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = pd.read_parquet(shared_kit / "data" / "physionet2019_setA.parquet")
    ids = np.array(pd.unique(df["patient_id"]))
    np.random.default_rng(7).shuffle(ids)
    a, b = set(ids[:STAYS_PER_HALF].tolist()), set(ids[STAYS_PER_HALF : 2 * STAYS_PER_HALF].tolist())
    return (
        df[df["patient_id"].isin(a)].reset_index(drop=True),
        df[df["patient_id"].isin(b)].reset_index(drop=True),
    )


def test_same_hospital_split_by_patient_raises_no_feature_alert(halves: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ref, cur = halves
    result = run_check(ref, cur)
    assert [a.alert_key for a in result.alerts] == []
    assert result.core is not None
    judged = result.core.inputs.monitored()
    assert "heart_rate" in judged and "lactate" in judged
    assert "etco2" not in judged  # never measured in set A: never reported


def test_temperature_in_fahrenheit_is_caught_and_nothing_else(halves: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ref, cur = halves
    timed = on_timeline(cur)
    start = float(timed["t"].quantile(0.5))
    late = timed["t"].to_numpy() >= start
    timed.loc[late, "Temp"] = timed.loc[late, "Temp"] * 9 / 5 + 32
    result = run_check(ref, timed.drop(columns=["t", "stay_end"]))
    opened = [a for a in result.alerts if a.state == "open"]
    assert [a.alert_key for a in opened] == ["data_drift:inputs:temperature"]
    assert opened[0].occurred_at.timestamp() >= start
    assert opened[0].severity == "critical"
