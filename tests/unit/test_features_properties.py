"""Property-based tests (hypothesis) of the per-encounter feature state: any order, duplicates, any size.

- the same events in any order, with any duplicates, give the same features;
- a state compacted at any point (as the scorer does before each snapshot) and one restored from its snapshot
  give the features of the uncompacted state at the newest hour, and the snapshot stays small;
- one 16 MiB-class burst (25,000 readings for one encounter) gives a snapshot far under the broker's 1 MiB limit.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import factories as f
from vigil_contracts.events import EncounterRecorded, ObservationRecorded
from vigil_scoring.features import EncounterState

FEATURES = ("heart_rate", "sbp", "temperature", "lactate", "creatinine")
UNITS = {"heart_rate": "/min", "sbp": "mm[Hg]", "temperature": "Cel", "lactate": "mmol/L", "creatinine": "mg/dL"}
BROKER_MAX_MESSAGE = 1_048_576


def admission() -> EncounterRecorded:
    return EncounterRecorded(
        event_id="enc-evt",
        occurred_at=f.T0,
        key="enc-1",
        encounter="enc-1",
        patient="pat-1",
        status="in-progress",
        icu_admitted_at=f.T0,
        source=f.source(resource_type="Encounter", resource_id="enc-1"),
    )


def reading(i: int, feature: str, minutes: int, value: float) -> ObservationRecorded:
    return f.observation(
        feature=feature,
        unit=UNITS[feature],
        value=value,
        observed_at=f.T0 + timedelta(minutes=minutes),
        source=f.source(resource_id=f"r{i}"),
    )


readings_strategy = st.lists(
    st.tuples(st.sampled_from(FEATURES), st.integers(0, 60 * 24 * 6), st.integers(1, 40).map(float)),
    min_size=1,
    max_size=120,
    # Two readings of one feature at the same instant are ordered by arrival (documented): not order-free.
    unique_by=lambda r: (r[0], r[1]),
)


def build(events: list[ObservationRecorded | EncounterRecorded]) -> EncounterState:
    state = EncounterState()
    for event in events:
        state.apply(event)
    return state


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings_strategy, st.randoms(use_true_random=False), st.integers(0, 20))
def test_any_order_and_duplicates_give_the_same_features(
    raw: list[tuple[str, int, float]], rng: object, dupes: int
) -> None:
    events: list[ObservationRecorded | EncounterRecorded] = [admission()]
    events += [reading(i, feat, minute, value) for i, (feat, minute, value) in enumerate(raw)]
    reference = build(events)
    shuffled = list(events) + [events[i % len(events)] for i in range(dupes)]
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    other = build(shuffled)
    assert other.hour == reference.hour and other.observations == reference.observations
    assert same(other.features(), reference.features())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings_strategy, st.lists(st.integers(0, 120), max_size=4))
def test_compaction_and_restore_keep_the_features_of_the_newest_hours(
    raw: list[tuple[str, int, float]], compact_after: list[int]
) -> None:
    observations = [reading(i, feat, minute, value) for i, (feat, minute, value) in enumerate(raw)]
    events_sorted = sorted(observations, key=lambda e: e.observed_at)
    full = EncounterState()
    compacted = EncounterState()
    for state in (full, compacted):
        state.apply(admission())
    points = set(compact_after)
    for n, event in enumerate(events_sorted):
        full.apply(event)
        compacted.apply(event)
        if n in points:
            compacted.compact()
    compacted.compact()
    restored = EncounterState.from_dict(orjson.loads(orjson.dumps(compacted.to_dict())))
    assert full.hour == compacted.hour == restored.hour
    assert full.observations == compacted.observations == restored.observations
    assert full.hour is not None
    for at in range(max(0, full.hour - 24), full.hour + 2):
        assert same(compacted.features(at), full.features(at)), at
        assert same(restored.features(at), full.features(at)), at


def test_25000_readings_for_one_encounter_give_a_small_snapshot() -> None:
    state = EncounterState()
    state.apply(admission())
    # one reading a minute for 416 hours, as one 16 MiB bundle of 25,000 Observations can carry
    for i in range(25_000):
        state.apply(reading(i, "heart_rate", i, 60.0 + i % 40))
    before = len(orjson.dumps(state.to_dict()))
    features = state.features()
    dropped = state.compact()
    after = len(orjson.dumps(state.to_dict()))
    assert dropped > 24_000
    assert after < BROKER_MAX_MESSAGE // 20, (before, after)
    assert same(state.features(), features)
    assert state.observations == 25_000


def test_compaction_of_hourly_readings_starts_at_the_third_hour_past_the_horizon() -> None:
    """The boundary of compaction's fast path: one reading an hour is kept whole until a third hour falls before
    the horizon (the two newest old hours are kept), and an hour with more readings than it keeps is still thinned.
    """
    horizon = 48
    for hours, dropped in ((horizon + 3, 0), (horizon + 4, 1), (horizon + 6, 3)):
        state = EncounterState()
        state.apply(admission())
        for h in range(hours):
            state.apply(reading(h, "heart_rate", 60 * h + 30, 70.0 + h % 7))
        features = state.features()
        assert state.compact(horizon_hours=horizon) == dropped, hours
        assert same(state.features(), features)
    state = EncounterState()
    state.apply(admission())
    for i, minute in enumerate((5, 20, 40)):  # three readings in hour 0, inside the horizon: the oldest goes
        state.apply(reading(i, "heart_rate", minute, 80.0 + i))
    assert state.compact(horizon_hours=horizon) == 1
    assert state.compact(horizon_hours=horizon) == 0
