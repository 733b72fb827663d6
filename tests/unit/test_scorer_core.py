"""The scoring core without Kafka: per-hour scores equal the offline pipeline, dedupe, snapshots, eviction, guard."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests import factories
from vigil_contracts import events as ev
from vigil_scoring.features import FEATURE_COLUMNS, offline_features
from vigil_scoring.physionet import ICU_EPOCH, stay_events
from vigil_scoring.scoring import Incoming, LivePublisher, NotProductionError, ScoringCore

N_STAYS = 12


class FakePackage:
    """A deterministic stand-in for a model package: a logistic function of the NaN-zeroed features."""

    name = "sepsis"
    version = "1"
    columns = FEATURE_COLUMNS

    def __init__(self) -> None:
        self.thresholds = {"operating": 0.5, "medium": 0.3, "high": 0.7}
        self.calls: list[int] = []
        rng = np.random.default_rng(7)
        self.w = rng.normal(0, 0.01, len(FEATURE_COLUMNS)).astype(np.float32)

    def predict(self, X: np.ndarray) -> np.ndarray:
        self.calls.append(len(X))
        # Row by row, so a row's result does not depend on the batch it came in (as with a tree model).
        Xn = np.nan_to_num(np.asarray(X, dtype=np.float64))
        z = np.array([float(np.dot(row, self.w.astype(np.float64))) for row in Xn])
        return 1.0 / (1.0 + np.exp(-z))

    def risk_level(self, p: float) -> str:
        return "high" if p >= 0.7 else "medium" if p >= 0.3 else "low"


@pytest.fixture(scope="module")
def stays(shared_kit: Path) -> pd.DataFrame:
    ids = [f"p{i:06d}" for i in range(1, N_STAYS + 1)]
    return pd.read_parquet(shared_kit / "data" / "physionet2019_setA.parquet", filters=[("patient_id", "in", ids)])


def stream(stays: pd.DataFrame) -> list[Incoming]:
    """All stays' events interleaved by time (as a broker would deliver them), with per-partition offsets."""
    per: list[tuple[Any, int, ev.EncounterRecorded | ev.ObservationRecorded]] = []
    for pid, stay in stays.groupby("patient_id"):
        for i, e in enumerate(stay_events(stay, encounter=f"enc-{pid}", patient=str(pid), icu_admitted_at=ICU_EPOCH)):
            per.append((e.occurred_at if isinstance(e, ev.EncounterRecorded) else e.observed_at, i, e))
    per.sort(key=lambda t: (t[0], t[1]))
    offsets = {0: 0, 1: 0}
    out = []
    for _, _, e in per:
        p = hash(e.key) % 2
        out.append(Incoming(e, arrived_at=1.0e9, partition=p, offset=offsets[p]))
        offsets[p] += 1
    return out


def batches(items: list[Incoming], seed: int) -> list[list[Incoming]]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(items):
        n = rng.randint(1, 300)
        out.append(items[i : i + n])
        i += n
    return out


def final_per_hour(scores: list[ev.RiskScored]) -> dict[tuple[str, int], ev.RiskScored]:
    best: dict[tuple[str, int], ev.RiskScored] = {}
    for s in scores:
        k = (s.encounter, s.hour)
        if k not in best or s.observations > best[k].observations:
            best[k] = s
    return best


def offline(stays: pd.DataFrame, package: FakePackage) -> dict[tuple[str, int], float]:
    X = offline_features(stays).to_numpy(dtype=np.float32)
    p = package.predict(X)
    return {(f"enc-{pid}", int(h)): float(v) for pid, h, v in zip(stays["patient_id"], stays["hour"], p, strict=True)}


def test_every_hour_with_data_is_scored_and_equals_the_offline_prediction(stays: pd.DataFrame) -> None:
    package = FakePackage()
    core = ScoringCore(package, stage=ev.Stage.PRODUCTION)
    scores: list[ev.RiskScored] = []
    for batch in batches(stream(stays), seed=1):
        calls = len(package.calls)
        out = core.process(batch)
        assert not out.failures
        assert len(package.calls) - calls == (1 if out.scores else 0)  # one vectorised call per batch
        scores += out.scores
    expected = offline(stays, package)
    got = final_per_hour(scores)
    hours_with_data = {
        (e.event.encounter, int((e.event.observed_at - ICU_EPOCH).total_seconds() // 3600))
        for e in stream(stays)
        if isinstance(e.event, ev.ObservationRecorded)
    }
    assert set(got) == hours_with_data
    diffs = [abs(s.probability - expected[k]) for k, s in got.items()]
    assert max(diffs) < 1e-6
    assert all(s.stage is ev.Stage.PRODUCTION and s.model_version == "1" for s in scores)
    assert all(
        s.event_id == ev.RiskScored.make_id("sepsis", "1", s.encounter, s.data_time, s.observations) for s in scores
    )


def test_batch_boundaries_do_not_change_the_final_hourly_scores(stays: pd.DataFrame) -> None:
    runs = []
    for seed in (2, 3):
        core = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
        scores = [s for b in batches(stream(stays), seed=seed) for s in core.score(b)]
        runs.append({k: (s.event_id, s.probability) for k, s in final_per_hour(scores).items()})
    assert runs[0] == runs[1]


def test_redelivered_and_republished_events_are_not_applied_twice(stays: pd.DataFrame) -> None:
    items = stream(stays)[:400]
    core = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
    first = core.process(items)
    assert first.scores and first.applied == len(items)
    again = core.process(items)  # Kafka redelivery: same offsets
    assert again.duplicates == len(items) and not again.scores
    republished = core.process([Incoming(i.event) for i in items])  # upstream re-publish: same ids, no offsets
    assert republished.duplicates == len(items) and not republished.scores


def test_restore_from_snapshot_continues_exactly_like_an_uninterrupted_core(stays: pd.DataFrame) -> None:
    parts = batches(stream(stays), seed=4)
    cut = len(parts) // 2
    whole = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
    expected = [s for b in parts for s in whole.score(b)]

    before = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
    got = [s for b in parts[:cut] for s in before.score(b)]
    changelog = {enc: before.snapshot(enc) for enc in list(before.states)}
    after = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
    for enc, value in changelog.items():
        after.restore(enc, value)
    # The crash came after the snapshot but before the commit: the last batch is redelivered first.
    redelivered = after.process(parts[cut - 1])
    assert not redelivered.scores and redelivered.duplicates == len(parts[cut - 1])
    got += [s for b in parts[cut:] for s in after.score(b)]
    assert [(s.event_id, s.probability, s.hour) for s in got] == [(s.event_id, s.probability, s.hour) for s in expected]


def test_crash_before_the_snapshot_reproduces_the_same_score_ids(stays: pd.DataFrame) -> None:
    parts = batches(stream(stays), seed=5)
    core = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
    for b in parts[:3]:
        core.score(b)
    changelog = {enc: core.snapshot(enc) for enc in list(core.states)}
    published = core.score(parts[3])  # scores acknowledged, then the process dies before the changelog write
    restarted = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
    for enc, value in changelog.items():
        restarted.restore(enc, value)
    again = restarted.score(parts[3])
    assert [(s.event_id, s.probability) for s in again] == [(s.event_id, s.probability) for s in published]


def test_an_event_without_encounter_is_reported_as_unusable() -> None:
    core = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
    good = factories.observation()
    orphan = factories.observation(encounter=None, source=factories.source(resource_id="x"))
    out = core.process([factories.encounter(), orphan, good])
    assert [i for i, _ in out.failures] == [1]
    assert len(out.scores) == 1 and out.scores[0].encounter == "enc-1"


def test_hour_boundaries_inside_one_batch_each_get_a_score() -> None:
    core = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
    t0 = factories.T0
    events: list[Any] = [factories.encounter()]
    for h in range(4):
        for j, feature in enumerate(("heart_rate", "resp_rate")):
            events.append(
                factories.observation(
                    feature=feature,
                    value=80.0 + h + j,
                    observed_at=t0 + timedelta(hours=h, minutes=10 * j),
                    source=factories.source(resource_id=f"o{h}{j}"),
                )
            )
    scores = core.score(events)
    assert [s.hour for s in scores] == [0, 1, 2, 3]
    assert [s.observations for s in scores] == [2, 4, 6, 8]


def test_only_a_production_model_can_publish_live() -> None:
    published: list[Any] = []

    async def publish(topic: str, scores: Any) -> None:
        published.extend(scores)

    shadow = ScoringCore(FakePackage(), stage=ev.Stage.SHADOW)
    with pytest.raises(NotProductionError):
        LivePublisher(publish, "scores.live", shadow)
    core = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
    live = LivePublisher(publish, "scores.live", core)
    import asyncio

    with pytest.raises(NotProductionError):
        asyncio.run(live.publish([factories.score(stage=ev.Stage.SHADOW)]))
    core.stage = ev.Stage.ARCHIVED  # demoted while running
    with pytest.raises(NotProductionError):
        asyncio.run(live.publish([factories.score()]))
    core.stage = ev.Stage.PRODUCTION
    asyncio.run(live.publish([factories.score()]))
    assert len(published) == 1


def test_idle_encounters_are_evicted_only_when_idle_by_both_clocks() -> None:
    clock = [1000.0]
    core = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION, idle_hours=2.0, clock=lambda: clock[0])
    t0 = factories.T0
    core.score([factories.encounter(), factories.observation(observed_at=t0)])
    other = dict(encounter="enc-2", key="enc-2")
    core.score(
        [
            factories.encounter(**other, event_id="e2"),
            factories.observation(
                **other, observed_at=t0 + timedelta(hours=5), source=factories.source(resource_id="y")
            ),
        ]
    )
    assert core.evict_idle(now=clock[0] + 60) == []  # data-idle but not wall-idle
    clock[0] += 3 * 3600
    assert core.evict_idle() == [("enc-1", None)]  # enc-2 holds the newest data: not data-idle
    assert set(core.states) == {"enc-2"}


def test_stateless_snapshot_prediction() -> None:
    core = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
    p, level, alert = core.predict_snapshot({"heart_rate_last": 120.0, "age": None})
    assert 0.0 <= p <= 1.0 and level in {"low", "medium", "high"} and alert == (p >= 0.5)
    with pytest.raises(ValueError, match="unknown"):
        core.predict_snapshot({"not_a_feature": 1.0})


def test_drop_partitions_forgets_their_states(stays: pd.DataFrame) -> None:
    core = ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION)
    items = stream(stays)
    core.score(items)
    on_zero = {e for e, t in core.states.items() if t.partition == 0}
    assert on_zero and core.drop_partitions([0]) == len(on_zero)
    assert all(t.partition == 1 for t in core.states.values())
