"""Two shadow instances in one group share the partitions; state follows its partition when one stops mid-stream.

Instances A and B (in-process, on the session broker, one consumer group, three partitions) score the first half of
24 synthetic stays between them. The second half is published and A stops while it is being consumed: B takes A's
partitions, restores their feature states from the changelog (not from the observations' retention) and scores
on. The final score of every encounter-hour (the one with the most observations, as the comparison keeps it),
after dedupe by event id, equals one core's scores over the whole stream.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import factories
from tests.unit.test_drift_reference import synthetic_stays
from vigil_contracts import events as ev
from vigil_runtime.kafka import ensure_topics
from vigil_runtime.producer import AckedProducer
from vigil_scoring.model_package import ModelPackage, default_package_path
from vigil_shadow import logscan
from vigil_shadow.app import create_app
from vigil_shadow.engine import ShadowCore
from vigil_shadow.settings import Settings


def _events() -> tuple[list[Any], list[Any]]:
    stays = synthetic_stays(24, seed=9, hours=(16, 30))
    first: list[Any] = []
    second: list[Any] = []
    for i, (pid, stay) in enumerate(stays.groupby("patient_id", sort=False)):
        admitted = factories.T0 + timedelta(hours=i)
        events, _ = factories.stay_stream(stay, f"enc-{pid}", admitted=admitted, with_outcome=False)
        cut = admitted + timedelta(hours=int(stay["hour"].max()) // 2)
        for e in events:
            late = (isinstance(e, ev.ObservationRecorded) and e.observed_at >= cut) or e is events[-1]
            (second if late else first).append(e)
    return first, second


def _final(scores: list[ev.RiskScored]) -> dict[tuple[str, int], tuple[int, float]]:
    """Per encounter-hour, (observations, probability) of its most complete score."""
    out: dict[tuple[str, int], tuple[int, float]] = {}
    for s in scores:
        key = (s.encounter, s.hour)
        if key not in out or s.observations > out[key][0]:
            out[key] = (s.observations, s.probability)
    return out


async def _committed_to_end(settings: Settings) -> None:
    topic = settings.topics.observations
    ends = await logscan.end_offsets(settings.kafka, [topic])
    for _ in range(600):
        committed = await logscan.committed_offsets(settings.kafka, settings.group_id, topic)
        if all(committed.get(p, 0) >= end for (_, p), end in ends.items()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the group did not commit to the end of the observations")


async def test_two_instances_share_partitions_and_state_follows_a_stopped_ones(
    settings_env: dict[str, Any], tmp_path: Path
) -> None:
    package = default_package_path("2")
    settings = Settings(
        **settings_env,
        group_id=f"vigil-shadow-{uuid.uuid4().hex[:8]}",
        registry_url=None,
        local_models=[f"sepsis:2={package}"],
        publish_every_s=3600,
        checkpoint_interval_s=0.2,
        batch_max_records=200,
        model_cache_dir=tmp_path / "models",
    )
    topics = settings.topics
    await ensure_topics(settings)
    first, second = _events()
    publisher = AckedProducer(settings.kafka, client_id="it-shadow-scale-out")
    await publisher.start()
    a, b = create_app(settings), create_app(settings)
    try:
        await publisher.publish_all(topics.observations, first)
        async with b.router.lifespan_context(b):
            async with a.router.lifespan_context(a):
                sa, sb = a.state.shadow, b.state.shadow
                for _ in range(300):  # both members hold partitions once the group has rebalanced
                    if sa.changelog.owned and sb.changelog.owned and sa.restored and sb.restored:
                        break
                    await asyncio.sleep(0.1)
                assert sa.changelog.owned and sb.changelog.owned, (sa.changelog.owned, sb.changelog.owned)
                assert not sa.changelog.owned & sb.changelog.owned
                await _committed_to_end(settings)
                taken = set(sa.changelog.owned)
                # Read while A still holds its partitions: once A leaves, B's rebalance (and its restore of A's
                # encounters) runs on this loop while A's stop hooks are awaited, so a count read after A's exit
                # could already include them (seen in CI: 23 > 23 failed).
                restored_before = sb.changelog.restored_keys
                await publisher.publish_all(topics.observations, second)
                await asyncio.sleep(0.3)  # A stops mid-stream
            await _committed_to_end(settings)
            # A committed its partitions before leaving, so the group can be at the end before B's rebalance has
            # handed them over (seen in CI: B still held {0, 2}); wait for the handover itself, restore included:
            # B takes the partitions as owned before it reads their states, and is ``ready`` once it has
            # (seen in CI: 28 > 28 read while the restore was still reading the changelog).
            for _ in range(300):
                if sb.changelog.owned == set(range(settings.partitions)) and sb.changelog.ready:
                    break
                await asyncio.sleep(0.1)
            await _committed_to_end(settings)
            assert taken <= sb.changelog.owned == set(range(settings.partitions))
            assert sb.changelog.restored_keys > restored_before  # A's encounters came from the changelog
    finally:
        await publisher.stop()

    records = [r async for chunk in logscan.read_until(settings.kafka, topics.scores_shadow) for r in chunk]
    scores = [ev.RiskScored.model_validate_json(r.value or b"") for r in records]
    unique = {s.event_id: s for s in scores}
    expected = ShadowCore({("sepsis", "2"): ModelPackage.load(package)}).score(first + second)
    got, want = _final(list(unique.values())), _final(expected)
    assert set(got) == set(want)
    assert all(got[k][0] == want[k][0] for k in want)
    assert max(abs(got[k][1] - want[k][1]) for k in want) == pytest.approx(0.0, abs=1e-6)
