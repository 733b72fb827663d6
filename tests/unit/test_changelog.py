"""The common changelog (vigil_runtime.changelog) over shadow's core, with a fake sink and consumer.

What it must guarantee: snapshots are acknowledged before offsets are committed; a failed write commits nothing and
keeps the states unsaved; a core restored from what was written goes on scoring exactly as an uninterrupted one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from tests import factories
from vigil_contracts import events as ev
from vigil_runtime import changelog as changelog_module
from vigil_runtime.changelog import Changelog
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.tracing import SHADOW_STATE_KIND
from vigil_scoring.model_package import ModelPackage, default_package_path
from vigil_scoring.scoring import Incoming
from vigil_shadow.engine import ShadowCore

TOPIC = "vigil.shadow.state"
SOURCE = "vigil.observations"


class FakeSink:
    """Records sends (and commits, through FakeConsumer) in one ordered log; the compacted view per partition."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.fail = False
        self.compacted: dict[int, dict[str, bytes | None]] = {}

    async def send_all(
        self, topic: str, items: Iterable[tuple[bytes | None, bytes | None, int | None]], *, kind: Any = None
    ) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable")
        items = list(items)
        self.log.append(f"send {topic} {len(items)}")
        for key, value, partition in items:
            self.compacted.setdefault(partition or 0, {})[(key or b"").decode()] = value


class FakeConsumer:
    """Commits into the shared log; ``member=False`` refuses them as the broker refuses a dropped member's."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.commits: list[dict[Any, int]] = []
        self.group_committed: dict[int, int] = {}
        self.member = True

    async def commit(self, offsets: dict[Any, int]) -> None:
        if not self.member:
            raise CommitFailedError("the group has rebalanced and may have assigned the partitions elsewhere")
        self.log.append("commit")
        self.commits.append(offsets)
        self.group_committed.update({tp.partition: o for tp, o in offsets.items()})

    async def committed(self, tp: Any) -> int | None:
        return self.group_committed.get(tp.partition)


def _events(encounter: str, hours: range) -> list[ev.ObservationRecorded]:
    out = []
    for h in hours:
        at = factories.T0 + timedelta(hours=h, minutes=5)
        for feature, value in (("heart_rate", 80.0 + h), ("resp_rate", 16.0 + h % 3), ("temperature", 37.0)):
            src = factories.source(resource_id=f"{encounter}-{feature}-{h}")
            out.append(
                factories.observation(
                    encounter=encounter, key=encounter, feature=feature, value=value, observed_at=at, source=src
                )
            )
    return out


def _incoming(events: list[ev.ObservationRecorded], partition: int, first_offset: int) -> list[Incoming]:
    return [Incoming(e, partition=partition, offset=first_offset + i) for i, e in enumerate(events)]


def _changelog(core: ShadowCore, sink: FakeSink, consumer: FakeConsumer | None) -> Changelog:
    cl = Changelog(
        KafkaConnection(bootstrap_servers="127.0.0.1:1"),
        topic=TOPIC,
        source_topic=SOURCE,
        state=core,
        sink=sink,  # type: ignore[arg-type]
        kind=SHADOW_STATE_KIND,
        interval_s=0.0,
        consumer_of=lambda: consumer,
    )
    cl.owned = {0, 1}
    cl.assigned.set()
    return cl


@pytest.fixture(scope="module")
def package() -> ModelPackage:
    return ModelPackage.load(default_package_path("2"))


async def test_snapshots_are_acknowledged_before_the_offsets_are_committed(package: ModelPackage) -> None:
    log: list[str] = []
    sink, consumer = FakeSink(log), FakeConsumer(log)
    core = ShadowCore({("sepsis", "2"): package})
    cl = _changelog(core, sink, consumer)
    batch = _incoming(_events("enc-a", range(3)), 0, 0) + _incoming(_events("enc-b", range(2)), 1, 0)
    outcome = core.process(batch)
    cl.changed(outcome.changed)
    for item in batch:
        cl.advanced(item.partition or 0, item.offset or 0)
    assert await cl.checkpoint() == 2
    assert log == [f"send {TOPIC} 2", "commit"]
    (committed,) = consumer.commits
    assert {tp.partition: o for tp, o in committed.items()} == {0: 9, 1: 6}
    assert set(sink.compacted) == {0, 1}  # each snapshot on the partition its encounter's events come from
    assert not cl.pending()


async def test_a_failed_write_commits_nothing_and_keeps_the_states_unsaved(package: ModelPackage) -> None:
    log: list[str] = []
    sink, consumer = FakeSink(log), FakeConsumer(log)
    core = ShadowCore({("sepsis", "2"): package})
    cl = _changelog(core, sink, consumer)
    batch = _incoming(_events("enc-a", range(2)), 0, 0)
    cl.changed(core.process(batch).changed)
    cl.advanced(0, 5)
    sink.fail = True
    with pytest.raises(ConnectionError):
        await cl.checkpoint()
    assert consumer.commits == [] and cl.unsaved == {"enc-a": 0} and cl.failures == 1
    sink.fail = False
    assert await cl.checkpoint() == 1
    assert len(consumer.commits) == 1 and cl.failures == 0


async def test_a_restored_core_scores_like_an_uninterrupted_one(
    package: ModelPackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _incoming(_events("enc-a", range(4)), 0, 0) + _incoming(_events("enc-b", range(3)), 1, 0)
    second = _incoming(_events("enc-a", range(4, 8)), 0, 12) + _incoming(_events("enc-b", range(3, 6)), 1, 9)

    uninterrupted = ShadowCore({("sepsis", "2"): package})
    uninterrupted.process(first)
    expected = uninterrupted.process(second).scores

    sink = FakeSink([])
    before = ShadowCore({("sepsis", "2"): package})
    cl = _changelog(before, sink, FakeConsumer([]))
    cl.changed(before.process(first).changed)
    await cl.checkpoint()

    async def read_back(kafka: Any, topic: str, partitions: Iterable[int], **_: Any) -> dict[str, bytes | None]:
        assert topic == TOPIC
        return {k: v for p in partitions for k, v in sink.compacted.get(p, {}).items()}

    monkeypatch.setattr(changelog_module, "read_to_end", read_back)
    after = ShadowCore({("sepsis", "2"): package})
    restarted = _changelog(after, FakeSink([]), None)
    restarted.owned = set()
    await restarted.on_assigned({0, 1})
    await restarted.restores.wait()  # the restore runs beside the assignment callback
    assert restarted.ready and restarted.restored_keys == 2
    # A replayed record of the first part is recognised (its offset is behind the snapshot's), not re-applied.
    assert after.process(first[-1:]).duplicates == 1
    got = after.process(second).scores
    assert [(s.encounter, s.hour, s.probability) for s in got] == [
        (s.encounter, s.hour, s.probability) for s in expected
    ]
    assert [s.event_id for s in got] == [s.event_id for s in expected]


async def test_revocation_checkpoints_then_drops_the_partitions(package: ModelPackage) -> None:
    log: list[str] = []
    sink = FakeSink(log)
    core = ShadowCore({("sepsis", "2"): package})
    cl = _changelog(core, sink, FakeConsumer(log))
    batch = _incoming(_events("enc-a", range(2)), 0, 0) + _incoming(_events("enc-b", range(2)), 1, 0)
    cl.changed(core.process(batch).changed)
    for item in batch:
        cl.advanced(item.partition or 0, item.offset or 0)
    await cl.on_revoked({1})
    assert log == [f"send {TOPIC} 1", "commit"] and set(sink.compacted) == {1}
    assert core.snapshot("enc-b") is None and core.snapshot("enc-a") is not None
    assert cl.owned == {0} and cl.unsaved == {"enc-a": 0}


def _applied(cl: Changelog, core: ShadowCore, batch: list[Incoming]) -> None:
    cl.changed(core.process(batch).changed)
    for item in batch:
        cl.advanced(item.partition or 0, item.offset or 0)


async def test_a_member_the_group_dropped_writes_no_snapshot(package: ModelPackage) -> None:
    # A member whose session expired learns it at its next commit, while another member may already own its
    # partitions and have written newer snapshots: an older one written over them would be restored later, and the
    # readings between the two lost. The checkpoint first re-commits what is committed, and writes nothing if refused.
    log: list[str] = []
    sink, consumer = FakeSink(log), FakeConsumer(log)
    core = ShadowCore({("sepsis", "2"): package})
    cl = _changelog(core, sink, consumer)
    _applied(cl, core, _incoming(_events("enc-a", range(2)), 0, 0))
    assert await cl.checkpoint() == 1
    assert log == [f"send {TOPIC} 1", "commit"]  # nothing committed yet: no offsets to re-commit first
    _applied(cl, core, _incoming(_events("enc-a", range(2, 4)), 0, 6))
    consumer.member = False
    with pytest.raises(CommitFailedError):
        await cl.checkpoint()
    assert log == [f"send {TOPIC} 1", "commit"] and cl.fenced == 1 and cl.unsaved == {"enc-a": 0}
    await cl.on_revoked({0, 1})  # the rejoin revokes: still refused, so the older state is dropped, not written
    assert log == [f"send {TOPIC} 1", "commit"] and core.snapshot("enc-a") is None and cl.owned == set()
    assert consumer.group_committed == {0: 6}  # the next owner resumes there, from the snapshot written with it


async def test_a_member_checks_its_membership_before_writing_then_commits(package: ModelPackage) -> None:
    log: list[str] = []
    sink, consumer = FakeSink(log), FakeConsumer(log)
    core = ShadowCore({("sepsis", "2"): package})
    cl = _changelog(core, sink, consumer)
    consumer.group_committed = {1: 4}  # committed by an earlier owner: read from the group, then re-committed
    _applied(cl, core, _incoming(_events("enc-a", range(2)), 0, 0))
    assert await cl.checkpoint() == 1
    assert log == ["commit", f"send {TOPIC} 1", "commit"]
    assert [{tp.partition: o for tp, o in c.items()} for c in consumer.commits] == [{1: 4}, {0: 6}]


async def test_a_hand_over_saves_everything_then_owns_nothing(package: ModelPackage) -> None:
    log: list[str] = []
    sink, consumer = FakeSink(log), FakeConsumer(log)
    core = ShadowCore({("sepsis", "2"): package})
    cl = _changelog(core, sink, consumer)
    _applied(cl, core, _incoming(_events("enc-a", range(2)), 0, 0) + _incoming(_events("enc-b", range(2)), 1, 0))
    await cl.hand_over()
    assert log == [f"send {TOPIC} 2", "commit"] and consumer.group_committed == {0: 6, 1: 6}
    assert cl.owned == set() and len(core) == 0 and not cl.pending() and cl.assigned.is_set()
    await cl.on_assigned({0, 1})  # a rebalance while the consumer leaves: the next owner takes them, not this one
    assert cl.owned == set()
    _applied(cl, core, _incoming(_events("enc-a", range(2, 3)), 0, 6))  # what a batch still delivered would do
    assert await cl.checkpoint() == 0 and log == [f"send {TOPIC} 2", "commit"]


async def test_a_consumer_between_assignments_counts_as_no_member() -> None:
    class Rejoining:
        async def commit(self, offsets: dict[Any, int]) -> None:
            raise IllegalStateError("No partitions assigned")  # what aiokafka says while it rejoins the group

    with pytest.raises(CommitFailedError):
        await changelog_module.confirm_membership(Rejoining(), {TopicPartition(SOURCE, 0): 3}, [])


async def test_the_assignment_callback_returns_before_the_restore_and_a_revocation_cancels_it(
    package: ModelPackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiokafka resumes the group's heartbeats only once the assignment callback has returned: a restore inside it
    # that outlasted the session (a changelog read took 30 s in the chaos suite) cost the membership at every rejoin.
    release = asyncio.Event()
    reads: list[set[int]] = []

    async def stalled_read(kafka: Any, topic: str, partitions: Iterable[int], **_: Any) -> dict[str, bytes | None]:
        reads.append(set(partitions))
        await release.wait()
        return {}

    monkeypatch.setattr(changelog_module, "read_to_end", stalled_read)
    cl = _changelog(ShadowCore({("sepsis", "2"): package}), FakeSink([]), None)
    cl.owned = set()
    # The bound only keeps a regression from hanging the run; the read it would wait for never ends by itself.
    await asyncio.wait_for(cl.on_assigned({0, 1}), timeout=30)
    assert cl.assigned.is_set() and cl.owned == {0, 1} and not cl.ready
    await asyncio.sleep(0)  # the background restore starts and waits on the stalled read
    assert reads == [{0, 1}]
    await asyncio.wait_for(cl.on_revoked({0, 1}), timeout=30)  # cancels the read instead of waiting for it
    assert cl.owned == set() and cl.needs_restore == set()

    await cl.on_assigned({1})
    release.set()
    await cl.restores.wait()
    assert reads == [{0, 1}, {1}] and cl.ready and cl.owned == {1}


async def test_a_membership_check_never_moves_the_committed_offsets_back(package: ModelPackage) -> None:
    # Shadow's join checkpoint checks the membership from outside the batch lock. Its re-commit of the known offsets,
    # taken while a checkpoint's newer commit was still in flight, landed after it (aiokafka serialises commits)
    # and put the group's position back: found by the chaos suite's controller scenario.
    log: list[str] = []
    release = asyncio.Event()

    class SlowFirstCommit(FakeConsumer):
        """aiokafka's commit lock, with the first commit slow (a coordinator fail-over)."""

        def __init__(self) -> None:
            super().__init__(log)
            self.turns = asyncio.Lock()

        async def commit(self, offsets: dict[Any, int]) -> None:
            async with self.turns:
                if not self.commits:
                    await release.wait()
                await super().commit(offsets)

    consumer = SlowFirstCommit()
    core = ShadowCore({("sepsis", "2"): package})
    cl = _changelog(core, FakeSink(log), consumer)
    cl.committed = {(SOURCE, 0): 5}
    consumer.group_committed = {0: 5}
    cl.advanced(0, 7)  # the next checkpoint commits 8
    checkpoint = asyncio.create_task(cl.checkpoint())
    await asyncio.sleep(0)  # its commit is in flight
    check = asyncio.create_task(cl.confirm_member())
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(checkpoint, check)
    assert consumer.group_committed == {0: 8}
    assert [{tp.partition: o for tp, o in c.items()} for c in consumer.commits] == [{0: 8}, {0: 8}]
