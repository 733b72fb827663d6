"""The scorer's batch handler with fakes: publish order, failure recovery, eviction tombstones, partition ownership."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import CommitFailedError

from bench.support import package_path
from tests import factories
from vigil_contracts import events as ev
from vigil_runtime.kafka import Parsed, encode
from vigil_runtime.metrics import ServiceMetrics
from vigil_scorer.pipeline import LoadedModel, ScorerService
from vigil_scorer.settings import Settings


class FakeSink:
    """Records what would be published; can be told to fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[tuple[bytes | None, bytes | None, int | None]]]] = []
        self.fail_on: str | None = None

    async def send_all(self, topic: str, items: Any, *, kind: Any) -> None:
        if self.fail_on and topic.endswith(self.fail_on):
            raise ConnectionError("broker unreachable")
        self.sent.append((topic, list(items)))

    async def publish_all(self, topic: str, events: Any) -> None:
        await self.send_all(topic, [(e.key_bytes(), encode(e), None) for e in events], kind=None)


def record(event: Any, partition: int, offset: int) -> Parsed[Any]:
    raw = ConsumerRecord(
        topic="vigil.observations",
        partition=partition,
        offset=offset,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=event.key_bytes(),
        value=encode(event),
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=[],
    )
    return Parsed(raw, event)


@pytest.fixture
def svc(tmp_path: Path) -> tuple[ScorerService, FakeSink]:
    from vigil_scoring.model_package import ModelPackage

    sink = FakeSink()
    settings = Settings(model_cache_dir=tmp_path, idle_hours=1.0)
    service = ScorerService(
        settings,
        ServiceMetrics("scorer"),
        sink=sink,  # type: ignore[arg-type]
        dead_letters=None,  # type: ignore[arg-type]
        registry=None,  # type: ignore[arg-type]
    )
    service.install(LoadedModel(ModelPackage.load(package_path("1")), ev.Stage.PRODUCTION))
    service.owned = {0, 1}
    service.assignment_done.set()
    return service, sink


def items() -> list[Parsed[Any]]:
    events = [factories.encounter(), factories.observation()]
    return [record(e, 0, i) for i, e in enumerate(events)]


class FakeConsumer:
    """Records commits (into the sink's log, so their order against the changelog shows) and seeks."""

    def __init__(self, sink: FakeSink) -> None:
        self.sink = sink
        self.seeks: list[tuple[int, int]] = []
        self.member = True
        """False: commits are refused, as the broker refuses those of a member it dropped from the group."""

    async def commit(self, offsets: dict[Any, int]) -> None:
        if not self.member:
            raise CommitFailedError("the group has rebalanced and may have assigned the partitions elsewhere")
        self.sink.sent.append(("commit", [(None, None, tp.partition) for tp in offsets]))
        self.commits = {tp.partition: o for tp, o in offsets.items()}

    async def committed(self, tp: Any) -> int | None:
        return None

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp.partition, offset))

    async def seek_to_beginning(self, tp: Any) -> None:
        self.seeks.append((tp.partition, 0))


Wired = tuple[ScorerService, FakeSink, FakeConsumer]


@pytest.fixture
def wired(svc: tuple[ScorerService, FakeSink]) -> Wired:
    """The service with a fake consumer to commit to and seek."""
    service, sink = svc
    consumer = FakeConsumer(sink)
    service.consumer_of = lambda: consumer
    return service, sink, consumer


@pytest.fixture
def sliced(wired: Wired, monkeypatch: pytest.MonkeyPatch) -> Wired:
    """A checkpoint due after every batch, capturing one snapshot per step."""
    import vigil_scorer.checkpointer as checkpointer

    monkeypatch.setattr(checkpointer, "CAPTURE_SLICE_S", 0.0)
    wired[0].settings.checkpoint_interval_s = 0.0
    return wired


def test_a_batch_publishes_its_scores_and_the_checkpoint_its_states_then_commits(wired: Wired) -> None:
    service, sink, consumer = wired
    failed = asyncio.run(service._handle(items()))
    assert failed == []
    assert [t for t, _ in sink.sent] == [service.topics.scores_live]  # the states wait for the checkpoint
    assert service.unsaved == {"enc-1": 0}
    service.consumed[0] = 2
    asyncio.run(service.checkpoint())
    assert [t for t, _ in sink.sent] == [service.topics.scores_live, service.topics.scorer_state, "commit"]
    key, value, partition = sink.sent[1][1][0]
    assert key == b"enc-1" and value is not None and partition == 0
    assert consumer.commits == {0: 2} and service.committed == {0: 2} and not service.unsaved


def test_a_failed_checkpoint_keeps_states_and_offsets_for_the_next_one(wired: Wired) -> None:
    service, sink, consumer = wired
    asyncio.run(service._handle(items()))
    service.consumed[0] = 2
    sink.fail_on = "scorer.state"
    with pytest.raises(ConnectionError):
        asyncio.run(service.checkpoint())
    assert service.unsaved == {"enc-1": 0} and service.committed == {}  # nothing committed past the changelog
    assert service.core is not None and "enc-1" in service.core.states
    sink.fail_on = None
    asyncio.run(service.checkpoint())
    assert consumer.commits == {0: 2} and not service.unsaved


def test_revoked_partitions_are_checkpointed_before_their_states_are_dropped(wired: Wired) -> None:
    service, sink, consumer = wired
    batch = [*items(), record(factories.observation(encounter="enc-2", key="enc-2"), 1, 0)]
    asyncio.run(service._handle(batch))
    service.consumed.update({0: 2, 1: 1})
    asyncio.run(service.partitions_revoked({1}))
    state_keys = [k for t, b in sink.sent if t == service.topics.scorer_state for k, _, _ in b]
    assert state_keys == [b"enc-2"] and consumer.commits == {1: 1}
    assert service.core is not None and set(service.core.states) == {"enc-1"}
    assert service.unsaved == {"enc-1": 0} and service.owned == {0}


def test_a_scorer_the_group_dropped_writes_no_snapshot(wired: Wired) -> None:
    # Its partitions may have a new owner writing newer snapshots: an older one over them would lose readings at the
    # next restore. The re-commit of what is committed is refused, and nothing is written.
    service, sink, consumer = wired
    service.committed[0] = 0
    asyncio.run(service._handle(items()))
    service.consumed[0] = 2
    consumer.member = False
    with pytest.raises(CommitFailedError):
        asyncio.run(service.checkpoint())
    assert [t for t, _ in sink.sent] == [service.topics.scores_live]
    assert service.unsaved == {"enc-1": 0} and service.committed == {0: 0}


def test_a_checkpoint_re_commits_what_is_committed_before_writing(wired: Wired) -> None:
    service, sink, _ = wired
    service.committed[1] = 5
    asyncio.run(service._handle(items()))
    service.consumed[0] = 2
    asyncio.run(service.checkpoint())
    assert [(t, [p for _, _, p in b]) for t, b in sink.sent[1:]] == [
        ("commit", [1]),
        (service.topics.scorer_state, [0]),
        ("commit", [0]),
    ]


def test_a_hand_over_checkpoints_then_owns_nothing(wired: Wired) -> None:
    service, sink, consumer = wired
    asyncio.run(service._handle(items()))
    service.consumed[0] = 2
    asyncio.run(service.hand_over())
    assert [t for t, _ in sink.sent] == [service.topics.scores_live, service.topics.scorer_state, "commit"]
    assert consumer.commits == {0: 2} and service.owned == set() and service.core is not None
    assert len(service.core) == 0 and service.assignment_done.is_set()
    asyncio.run(service.partitions_assigned({0, 1}))  # a rebalance while leaving: the next owner takes them
    assert service.owned == set()
    sent = len(sink.sent)
    assert asyncio.run(service._handle(items())) == []  # what a batch still delivered would do: nothing scored
    assert all(not batch for _, batch in sink.sent[sent:]) and service.core is not None and len(service.core) == 0


def test_a_failed_publish_drops_the_batch_states_and_rewinds_to_the_committed_offsets(wired: Wired) -> None:
    service, sink, consumer = wired
    service.committed[0] = 0
    sink.fail_on = "scores.live"
    with pytest.raises(ConnectionError):
        asyncio.run(service._handle(items()))
    assert service.core is not None and "enc-1" not in service.core.states
    assert service.needs_restore == {0}
    asyncio.run(service._rewind({0}))
    assert consumer.seeks == [(0, 0)] and not service.unsaved


def test_records_of_partitions_not_owned_are_skipped(svc: tuple[ScorerService, FakeSink]) -> None:
    service, sink = svc
    service.owned = {1}
    assert asyncio.run(service._handle(items())) == []
    assert sink.sent == [] or all(not batch for _, batch in sink.sent)
    assert service.core is not None and not service.core.states


def test_idle_encounters_are_evicted_with_a_changelog_tombstone(svc: tuple[ScorerService, FakeSink]) -> None:
    service, sink = svc
    asyncio.run(service._handle(items()))
    assert service.core is not None
    service.core.states["enc-1"].last_seen -= 2 * 3600
    newest = service.core.states["enc-1"].max_time
    assert newest is not None
    service.core.tracker._newest_data[0] = newest + timedelta(hours=3)  # newer data arrived on the partition
    assert asyncio.run(service.evict_idle()) == 1
    topic, tombstones = sink.sent[-1]
    assert topic == service.topics.scorer_state and tombstones == [(b"enc-1", None, 0)]


def test_a_redelivered_batch_after_the_snapshot_publishes_nothing_new(svc: tuple[ScorerService, FakeSink]) -> None:
    service, sink = svc
    batch = items()
    asyncio.run(service._handle(batch))
    published = len(sink.sent[0][1])
    sink.sent.clear()
    asyncio.run(service._handle(batch))  # the commit was lost: the same records again
    scores = [b for t, b in sink.sent if t == service.topics.scores_live]
    assert published == 1 and all(not b for b in scores)


def test_a_checkpoint_is_captured_a_slice_per_batch_and_commits_the_offsets_it_began_with(
    sliced: Wired,
) -> None:
    service, sink, consumer = sliced
    encounters = [f"enc-{i}" for i in range(3)]
    batch = [record(factories.observation(encounter=e, key=e), 0, i) for i, e in enumerate(encounters)]

    async def run() -> None:
        await service._handle(batch)
        service.consumed[0] = 3
        service.checkpoint_step()  # begins the checkpoint, captures one snapshot
        assert service._capturing is not None and not service.unsaved
        newer = factories.observation(encounter="enc-0", key="enc-0", observed_at=factories.T0 + timedelta(hours=1))
        later = record(newer, 0, 3)
        await service._handle([later])  # a batch in between: enc-0 changed again
        service.consumed[0] = 4
        service.checkpoint_step()
        service.checkpoint_step()  # the last snapshot: writing starts
        assert service._capturing is None
        await service.settle()

    asyncio.run(run())
    state = [k or b"" for t, b in sink.sent if t == service.topics.scorer_state for k, _, _ in b]
    assert sorted(state) == sorted(e.encode() for e in encounters)
    assert [t for t, _ in sink.sent][-1] == "commit" and consumer.commits == {0: 3}  # the offsets it began with
    assert service.unsaved == {"enc-0": 0}  # changed after the checkpoint began: in the next one


def test_a_batch_failing_during_a_checkpoint_keeps_its_partition_out_of_that_commit(
    sliced: Wired,
) -> None:
    service, sink, consumer = sliced
    batch = [
        record(factories.observation(encounter=e, key=e), p, i)
        for i, (e, p) in enumerate([("enc-a", 0), ("enc-b", 0), ("enc-c", 1)])
    ]

    async def run() -> None:
        await service._handle(batch)
        service.consumed.update({0: 2, 1: 3})
        service.checkpoint_step()  # begins; one of the three snapshots captured
        sink.fail_on = "scores.live"
        later = record(factories.observation(encounter="enc-b", key="enc-b", value=90.0, event_id="x"), 0, 2)
        with pytest.raises(ConnectionError):
            await service._handle([later])  # partition 0's states are dropped mid-checkpoint
        sink.fail_on = None
        await service._rewind({0})

    asyncio.run(run())
    assert 0 not in consumer.commits and consumer.commits.get(1) == 3  # only the partition it fully captured
    assert service.committed.get(0) is None and consumer.seeks == [(0, 0)]


def test_checkpoints_that_keep_failing_make_ready_fail_and_open_an_alert_then_resolve_it(wired: Wired) -> None:
    """The 16 MiB case's second half: a scorer never runs on silently while its checkpoints fail."""
    service, sink, consumer = wired
    asyncio.run(service._handle(items()))
    service.consumed[0] = 2
    sink.fail_on = "scorer.state"  # e.g. MessageSizeTooLargeError from the broker
    for attempt in range(service.settings.checkpoint_failures_unready):
        assert service.checkpoints_ok(), attempt
        with pytest.raises(ConnectionError):
            asyncio.run(service.checkpoint())
    assert not service.checkpoints_ok()
    alerts = [
        ev.AlertRaised.model_validate_json(v or b"")
        for t, batch in sink.sent
        if t == service.topics.alerts
        for _, v, _ in batch
    ]
    assert [(a.kind, a.state, a.severity) for a in alerts] == [("checkpoint", "open", ev.Severity.CRITICAL)]
    assert service.metrics.checkpoint_failures._value.get() == service.settings.checkpoint_failures_unready  # type: ignore[attr-defined]
    sink.fail_on = None
    asyncio.run(service.checkpoint())
    assert service.checkpoints_ok() and consumer.commits == {0: 2}
    alerts = [
        ev.AlertRaised.model_validate_json(v or b"")
        for t, batch in sink.sent
        if t == service.topics.alerts
        for _, v, _ in batch
    ]
    assert [a.state for a in alerts] == ["open", "resolved"]


class FakeMessage:
    """A FastStream batch message: the raw records, and ack/nack that only record they were called."""

    def __init__(self, records: tuple[ConsumerRecord[Any, Any], ...]) -> None:
        self.raw_message = records
        self.nacked = False

    async def ack(self) -> None:
        return None

    async def nack(self) -> None:
        self.nacked = True


def test_a_parked_observation_is_counted_once(svc: tuple[ScorerService, FakeSink]) -> None:
    from vigil_runtime.kafka import DeadLetters

    service, sink = svc
    counted = service.metrics.base
    service.dead_letters = DeadLetters(
        sink,  # type: ignore[arg-type]
        service.topics.dead_letter,
        service="scorer",
        on_parked=lambda letter: counted.count(letter.source_topic, "parked"),  # as app.py wires it
    )
    good = [p.record for p in items()]
    bad = ConsumerRecord(**{**good[1].__dict__, "offset": 2, "value": b"{not json"})
    message = FakeMessage((*good, bad))
    asyncio.run(service.on_batch(message))  # type: ignore[arg-type]
    parked = counted.messages.labels("scorer", "observations", "parked")._value.get()  # type: ignore[attr-defined]
    assert parked == 1 and not message.nacked
    assert [t for t, _ in sink.sent] == [service.topics.scores_live, service.topics.dead_letter]
