"""The incremental feature state equals the offline features, and behaves under redelivery, disorder, retraction."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from tests import factories as f
from vigil_contracts.events import ObservationRecorded
from vigil_ml.data import SAMPLE_PATH
from vigil_scoring.features import (
    FEATURE_COLUMNS,
    EncounterState,
    features_many,
    offline_features,
)
from vigil_scoring.physionet import ICU_EPOCH, stay_events


def stream_stay(stay: pd.DataFrame, pid: str) -> tuple[np.ndarray, EncounterState]:
    """Apply a stay's events hour by hour; the feature vector after each row's hour, taken at that hour."""
    events = stay_events(stay, encounter=f"enc-{pid}", patient=pid, icu_admitted_at=ICU_EPOCH)
    by_hour: dict[int, list] = {}
    for e in events:
        at = e.observed_at if isinstance(e, ObservationRecorded) else ICU_EPOCH
        by_hour.setdefault(int((at - ICU_EPOCH) / timedelta(hours=1)), []).append(e)
    state = EncounterState()
    rows = []
    for h in stay["hour"].to_numpy():
        for e in by_hour.pop(int(h), []):
            state.apply(e)
        rows.append(state.features(at_hour=int(h)))
    return np.vstack(rows), state


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    if not same.all():
        r, c = np.argwhere(~same)[0]
        raise AssertionError(f"row {r} feature {FEATURE_COLUMNS[c]}: stream {a[r, c]!r} != offline {b[r, c]!r}")


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return pd.read_parquet(SAMPLE_PATH)


def test_stream_equals_offline_on_bundled_sample(sample: pd.DataFrame) -> None:
    ids = sorted(sample["patient_id"].unique())[:60]
    df = sample[sample["patient_id"].isin(ids)].reset_index(drop=True)
    offline = offline_features(df).to_numpy()
    for pid, stay in df.groupby("patient_id", sort=False):
        streamed, _ = stream_stay(stay, str(pid))
        assert_same(streamed, offline[stay.index.to_numpy()])


def test_offline_features_keep_row_order_and_index(sample: pd.DataFrame) -> None:
    ids = sorted(sample["patient_id"].unique())[:10]
    df = sample[sample["patient_id"].isin(ids)]
    shuffled = df.sample(frac=1.0, random_state=3)
    a = offline_features(df)
    b = offline_features(shuffled).loc[df.index]
    assert list(a.columns) == list(FEATURE_COLUMNS)
    assert a.dtypes.unique().tolist() == [np.float32]
    assert_same(a.to_numpy(), b.to_numpy())


def test_offline_features_handle_gaps_in_hours(sample: pd.DataFrame) -> None:
    """Windows are in hours, not rows: dropping rows must not change the kept rows' features."""
    pid = sample.groupby("patient_id").size().idxmax()
    stay = sample[sample["patient_id"] == pid].reset_index(drop=True)
    full = offline_features(stay)
    # Drop hours whose row has no measurement at all, so the remaining rows' data are unchanged.
    empty = stay.loc[:, "HR":"Platelets"].isna().all(axis=1) & (stay["hour"] > 0)
    gappy = stay.loc[~empty]
    if empty.any():
        assert_same(offline_features(gappy).to_numpy(), full.loc[gappy.index].to_numpy())
    # And a hand-made gap: the 6h window at hour 10 holds only hours 5..10.
    toy = pd.DataFrame({"patient_id": ["a"] * 3, "hour": [0, 4, 10], "HR": [100.0, 80.0, 60.0]})
    feats = offline_features(toy)
    assert feats.loc[2, "heart_rate_mean_6h"] == 60.0
    assert feats.loc[2, "heart_rate_mean_24h"] == 80.0
    assert feats.loc[2, "heart_rate_hours_since"] == 0.0
    assert feats.loc[1, "heart_rate_delta"] == -20.0


def test_snapshot_restores_identical_features(sample: pd.DataFrame) -> None:
    pid = sorted(sample["patient_id"].unique())[5]
    stay = sample[sample["patient_id"] == pid]
    events = stay_events(stay, encounter="e", patient="p")
    state = EncounterState()
    for i, e in enumerate(events):
        state.apply(e)
        if i % 37 == 0:
            restored = EncounterState.from_dict(state.to_dict())
            assert_same(restored.features()[None], state.features()[None])
            assert restored.hour == state.hour and restored.observations == state.observations
            assert restored.data_time == state.data_time


def test_redelivery_and_disorder_do_not_change_features(sample: pd.DataFrame) -> None:
    pid = sorted(sample["patient_id"].unique())[7]
    stay = sample[sample["patient_id"] == pid]
    events = stay_events(stay, encounter="e", patient="p")
    ordered = EncounterState()
    for e in events:
        ordered.apply(e)
    rng = np.random.default_rng(1)
    shuffled = EncounterState()
    for i in rng.permutation(len(events)):
        shuffled.apply(events[i])
    for i in rng.choice(len(events), size=50):  # at-least-once delivery: duplicates
        shuffled.apply(events[i])
    assert shuffled.observations == ordered.observations == len(events) - 1
    measured = stay.loc[stay.loc[:, "HR":"Platelets"].notna().any(axis=1), "hour"]
    assert shuffled.hour == ordered.hour == int(measured.max())
    assert_same(shuffled.features()[None], ordered.features()[None])
    assert_same(features_many([shuffled, ordered]), np.vstack([ordered.features(), ordered.features()]))


def test_retraction_and_amendment() -> None:
    enc = f.encounter(icu_admitted_at=f.T0)
    src1 = f.source(resource_id="t1", version_id="1")
    src2 = f.source(resource_id="t2", version_id="1")
    t1 = f.observation(feature="temperature", value=37.0, unit="Cel", source=src1, observed_at=f.T0)
    t2 = f.observation(
        feature="temperature", value=39.5, unit="Cel", source=src2, observed_at=f.T0 + timedelta(hours=2)
    )
    s = EncounterState()
    for e in (enc, t1, t2):
        s.apply(e)
    col = FEATURE_COLUMNS.index("temperature_last")
    assert s.hour == 2 and s.features()[col] == np.float32(39.5)
    s.apply(f.retraction(feature="temperature", retracted_resource=src2))
    assert s.observations == 1 and s.features()[col] == np.float32(37.0)
    amended = f.observation(
        feature="temperature",
        value=38.0,
        unit="Cel",
        source=f.source(resource_id="t1", version_id="2"),
        observed_at=f.T0,
    )
    s.apply(amended)
    assert s.observations == 1 and s.features()[col] == np.float32(38.0)
    # Later hour without new data: the staleness grows.
    assert s.features(at_hour=5)[FEATURE_COLUMNS.index("temperature_hours_since")] == 5.0


def test_hours_counted_from_first_reading_until_admission_known() -> None:
    s = EncounterState()
    s.apply(f.observation(observed_at=f.T0 + timedelta(hours=3)))
    assert s.hour == 0
    s.apply(f.encounter(icu_admitted_at=f.T0))
    assert s.hour == 3
    assert s.features()[FEATURE_COLUMNS.index("icu_hours")] == 3.0


def test_buckets_updated_in_place_equal_a_rebuild_from_the_readings(sample: pd.DataFrame) -> None:
    """The state updates its hour buckets as readings arrive; a restored copy rebuilds them from the readings.

    Under disorder, late readings inside an earlier hour, amendments and retractions, both must give the same
    features at every hour, the same hour, count and newest time.
    """
    pid = sorted(sample["patient_id"].unique())[11]
    stay = sample[sample["patient_id"] == pid]
    events = list(stay_events(stay, encounter="e", patient="p", icu_admitted_at=ICU_EPOCH))
    rng = np.random.default_rng(5)
    observations = [e for e in events if isinstance(e, ObservationRecorded)]
    extra = []
    for i in rng.choice(len(observations), size=40, replace=False):
        o = observations[i]
        # A second reading later in the same hour (it holds the hour), and an amendment of the first one.
        later = o.observed_at + timedelta(minutes=int(rng.integers(1, 59 - o.observed_at.minute + 1)))
        if later.hour == o.observed_at.hour:
            extra.append(o.model_copy(update={"value": o.value + 1.0, "observed_at": later, "event_id": f"late-{i}"}))
        src = o.source.model_copy(update={"version_id": "2"})
        extra.append(o.model_copy(update={"value": o.value * 1.1, "source": src, "event_id": f"amend-{i}"}))
    stream = [
        events[0],
        *[x for x in np.array(events[1:] + extra, dtype=object)[rng.permutation(len(events) - 1 + len(extra))]],
    ]
    retract_at = {int(k) for k in rng.choice(len(stream), size=5, replace=False)}
    state = EncounterState()
    for n, e in enumerate(stream):
        state.apply(e)
        if n in retract_at and isinstance(e, ObservationRecorded):
            state.apply(f.retraction(feature=e.feature, retracted_resource=e.source))
        if n % 25 == 0 or n == len(stream) - 1:
            rebuilt = EncounterState.from_dict(state.to_dict())
            assert (rebuilt.hour, rebuilt.observations, rebuilt.data_time) == (
                state.hour,
                state.observations,
                state.data_time,
            )
            top = state.hour or 0
            at = sorted({0, top // 2, top, top + 3})
            assert_same(features_many([state] * len(at), list(at)), features_many([rebuilt] * len(at), list(at)))
