"""Site datasets: stays streamed as canonical events come back as their PhysioNet rows, labelled by outcomes."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from tests.factories import T0, stay_stream
from vigil_ml.data import SAMPLE_PATH
from vigil_scoring.site_dataset import DatasetBuilder, Window, write_dataset

COMPARED = [c for c in pd.read_parquet(SAMPLE_PATH).columns if c != "ICULOS"]  # ICULOS: see site_dataset's doc


def sample_stays(n_plain: int, n_septic: int) -> list[pd.DataFrame]:
    df = pd.read_parquet(SAMPLE_PATH)
    flags = df.groupby("patient_id")["SepsisLabel"].max()
    ids = sorted(flags.index[flags == 0])[:n_plain] + sorted(flags.index[flags == 1])[:n_septic]
    return [df[df["patient_id"] == pid].reset_index(drop=True) for pid in ids]


def assert_same_rows(built: pd.DataFrame, stays: list[pd.DataFrame]) -> None:
    expected = pd.concat(stays, ignore_index=True).sort_values(["patient_id", "hour"]).reset_index(drop=True)
    got = built.sort_values(["patient_id", "hour"]).reset_index(drop=True)
    assert len(got) == len(expected)
    assert (got["patient_id"].astype(str).to_numpy() == expected["patient_id"].astype(str).to_numpy()).all()
    for col in COMPARED[1:]:
        np.testing.assert_allclose(
            got[col].to_numpy(dtype=float), expected[col].to_numpy(dtype=float), atol=1e-6, rtol=0, err_msg=col
        )


def test_streamed_stays_come_back_as_their_rows_and_labels() -> None:
    stays = sample_stays(4, 3)
    builder = DatasetBuilder()
    for i, stay in enumerate(stays):
        events, outcomes = stay_stream(stay, str(stay["patient_id"].iloc[0]), admitted=T0 + timedelta(hours=i))
        for e in reversed(events):  # arrival order does not matter: the state buckets by observed time
            builder.apply(e)
        for o in outcomes:
            builder.apply_outcome(o)
    df, stats = builder.build()
    assert_same_rows(df, stays)
    assert stats["septic_stays"] == 3 and stats["labelled_stays"] == 7 and stats["outcome_coverage"] == 1.0


def test_stays_without_an_outcome_are_left_out_not_negative() -> None:
    stays = sample_stays(2, 1)
    builder = DatasetBuilder()
    for i, stay in enumerate(stays):
        events, outcomes = stay_stream(stay, f"enc-{i}", with_outcome=i != 2)
        for e in events:
            builder.apply(e)
        for o in outcomes:
            builder.apply_outcome(o)
    df, stats = builder.build()
    assert set(df["patient_id"]) == {"enc-0", "enc-1"}
    assert stats["stays"] == 3 and stats["labelled_stays"] == 2
    assert stats["outcome_coverage"] == pytest.approx(2 / 3, abs=1e-4)


def test_the_window_selects_by_icu_admission_and_the_manifest_names_no_stay(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stays = sample_stays(3, 0)
    builder = DatasetBuilder()
    for i, stay in enumerate(stays):
        events, outcomes = stay_stream(stay, f"enc-{i}", admitted=T0 + timedelta(days=i))
        for e in events:
            builder.apply(e)
        for o in outcomes:
            builder.apply_outcome(o)
    window = Window(T0 + timedelta(days=1), T0 + timedelta(days=2))
    df, stats = builder.build(window)
    assert set(df["patient_id"]) == {"enc-1"}
    manifest = write_dataset(df, stats, tmp_path, window=window, source={})
    again = write_dataset(df.sample(frac=1.0, random_state=1), stats, tmp_path / "again", window=window, source={})
    assert manifest["content_sha256"] == again["content_sha256"]  # the rows' hash, not the file's or the order's
    text = (tmp_path / "manifest.json").read_text()
    assert "enc-1" not in text and json.loads(text)["rows"] == len(df)
    assert pd.read_parquet(tmp_path / "rows.parquet").shape[0] == len(df)
