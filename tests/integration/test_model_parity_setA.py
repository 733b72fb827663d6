"""Training/serving parity on set A: 500+ stays streamed hour by hour through the incremental state equal the
offline (training) features on every row, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.unit.test_features_stream import assert_same, stream_stay
from vigil_scoring.features import offline_features


def test_500_set_a_stays_stream_equals_offline(shared_kit: Path) -> None:
    df = pd.read_parquet(shared_kit / "data" / "physionet2019_setA.parquet")
    rng = np.random.default_rng(500)
    ids = rng.choice(np.sort(df["patient_id"].unique()), size=520, replace=False)
    df = df[df["patient_id"].isin(ids)].reset_index(drop=True)
    assert df["SepsisLabel"].groupby(df["patient_id"]).max().sum() > 10
    offline = offline_features(df).to_numpy()
    rows = 0
    for pid, stay in df.groupby("patient_id", sort=False):
        streamed, state = stream_stay(stay, str(pid))
        assert_same(streamed, offline[stay.index.to_numpy()])
        assert state.hour == int(stay["hour"].max()) or stay.iloc[-1].loc["HR":"Platelets"].isna().all()
        rows += len(stay)
    assert rows == len(df) and df["patient_id"].nunique() >= 500
