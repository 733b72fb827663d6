"""The join's changelog values without Kafka: one encounter written and read back gives the same comparison."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from tests import factories
from tests.factories import T0
from vigil_contracts import events as ev
from vigil_shadow.compare import CompareConfig, compare
from vigil_shadow.engine import ShadowCore
from vigil_shadow.join import JOIN_KEY, POSITIONS_KEY, JoinState, is_join_key


def _feed(state: JoinState, encounters: int = 6, hours: int = 12) -> None:
    for e in range(encounters):
        enc = f"enc-{e}"
        state.add(factories.encounter(encounter=enc, key=enc, event_id=ev.deterministic_id("u", enc), unit="MICU"))
        state.add(
            factories.observation(
                encounter=enc, key=enc, event_id=ev.deterministic_id("age", enc), feature="age", value=40.0 + e
            )
        )
        for h in range(hours):
            t = T0 + timedelta(hours=h)
            p = (e * hours + h) % 17 / 17
            state.add(factories.score(encounter=enc, key=enc, data_time=t, hour=h, probability=p, alert=p > 0.5))
            state.add(
                factories.score(
                    encounter=enc,
                    key=enc,
                    data_time=t,
                    hour=h,
                    probability=min(1.0, p + 0.05),
                    alert=p + 0.05 > 0.5,
                    model_version="2",
                    stage=ev.Stage.SHADOW,
                )
            )
        if e % 2:
            state.add(
                factories.outcome(
                    encounter=enc, key=enc, event_id=ev.deterministic_id("o", enc), onset_at=T0 + timedelta(hours=8)
                )
            )
        else:
            state.add(
                factories.outcome(
                    encounter=enc,
                    key=enc,
                    event_id=ev.deterministic_id("d", enc),
                    outcome="discharged",
                    onset_at=None,
                )
            )


def test_every_encounter_written_and_read_back_compares_the_same() -> None:
    original = JoinState()
    _feed(original)
    assert original.changed == {f"enc-{e}" for e in range(6)}
    restored = JoinState()
    for encounter in sorted(original.changed):
        restored.restore_encounter(encounter, original.encounter_snapshot(encounter))
    assert not restored.changed  # a restore is not a change to write back
    assert restored.live == original.live
    assert restored.shadow == original.shadow
    assert restored.outcomes == original.outcomes
    assert restored.attributes == original.attributes
    config = CompareConfig(bootstrap_iterations=0)
    want = compare(original, "sepsis", "2", config=config).summary()
    got = compare(restored, "sepsis", "2", config=config).summary()
    assert got == want
    assert want["labelled_hours"] == 6 * 12


def test_a_restore_merges_with_what_is_held_the_complete_hour_winning() -> None:
    held = JoinState()
    held.add(factories.score(encounter="a", key="a", hour=0, observations=9, probability=0.7))
    older = JoinState()
    older.add(factories.score(encounter="a", key="a", hour=0, observations=3, probability=0.1))
    held.restore_encounter("a", older.encounter_snapshot("a"))
    assert held.live["sepsis"][("a", 0)].probability == 0.7
    assert math.isnan(held.label("a", T0))


def test_join_records_share_the_changelog_without_touching_feature_states() -> None:
    assert is_join_key(JOIN_KEY + "enc-1") and is_join_key(POSITIONS_KEY + "0")
    assert not is_join_key("enc-1")
    core = ShadowCore()
    core.restore(JOIN_KEY + "enc-1", b'{"scores": []}')  # would not parse as a feature state
    core.restore(POSITIONS_KEY + "0", b"[]")
    assert len(core) == 0


@pytest.mark.parametrize("broken", [b"{", b'{"scores": [[1]]}', b"[]"])
def test_an_unreadable_value_raises_for_the_caller_to_skip(broken: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        JoinState().restore_encounter("a", broken)
