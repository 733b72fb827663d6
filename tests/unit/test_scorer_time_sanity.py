"""The scorer never lets one reading move an encounter's clock past its own now plus the skew (the 2099 case)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests import factories
from tests.unit.test_scorer_core import FakePackage
from vigil_contracts import events as ev
from vigil_scoring.scoring import ScoringCore

NOW = datetime(2026, 1, 2, 0, 0, tzinfo=UTC)


def core() -> ScoringCore:
    return ScoringCore(FakePackage(), stage=ev.Stage.PRODUCTION, utc_now=lambda: NOW)


def test_a_2099_reading_is_refused_and_scores_stay_those_of_the_real_readings() -> None:
    t0 = factories.T0
    real: list[ev.EncounterRecorded | ev.ObservationRecorded] = [
        factories.encounter(),
        factories.observation(observed_at=t0, value=80.0),
    ]
    reference = core()
    expected = reference.process(real)
    scorer = core()
    first = scorer.process(real)
    assert [(s.hour, s.data_time, s.probability) for s in first.scores] == [
        (s.hour, s.data_time, s.probability) for s in expected.scores
    ]
    typo = factories.observation(
        observed_at=datetime(2099, 1, 1, tzinfo=UTC), value=150.0, source=factories.source(resource_id="typo")
    )
    outcome = scorer.process([typo])
    assert outcome.scores == []
    assert outcome.failures == [(0, "observed_at is later than the scorer's clock plus the allowed skew")]
    # a normal reading afterwards is scored at its own hour, as if the 2099 one had never come
    later = factories.observation(
        observed_at=t0 + timedelta(hours=3), value=90.0, source=factories.source(resource_id="later")
    )
    after = scorer.process([later])
    twin = reference.process([later])
    assert [(s.hour, s.data_time, s.probability) for s in after.scores] == [
        (s.hour, s.data_time, s.probability) for s in twin.scores
    ]
    assert all(s.data_time.year == 2026 for s in after.scores)


def test_within_the_skew_is_applied() -> None:
    scorer = core()
    soon = factories.observation(observed_at=NOW + timedelta(minutes=4))
    assert scorer.process([factories.encounter(), soon]).failures == []
