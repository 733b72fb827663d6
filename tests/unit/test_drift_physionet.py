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


SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "physionet_sample.parquet"


@pytest.mark.skipif(not SAMPLE.exists(), reason="the bundled sample is not in this checkout")
def test_bundled_sample_short_files_are_judged_at_the_end() -> None:
    """Files too short to fill a window (300 real stays) are still judged once, over all their values."""
    df = pd.read_parquet(SAMPLE)
    ids = np.array(pd.unique(df["patient_id"]))
    first = set(ids[: len(ids) // 2].tolist())
    ref = df[df["patient_id"].isin(first)].reset_index(drop=True)
    cur = df[~df["patient_id"].isin(first)].reset_index(drop=True)
    quiet = run_check(ref, cur, census=20, warmup_hours=12)
    assert [a.alert_key for a in quiet.alerts if a.state == "open"] == []
    cur["Temp"] = cur["Temp"] * 9 / 5 + 32
    loud = run_check(ref, cur, census=20, warmup_hours=12)
    temp = [a for a in loud.alerts if a.state == "open" and a.feature == "temperature"]
    assert temp and temp[0].window.startswith("all ")
