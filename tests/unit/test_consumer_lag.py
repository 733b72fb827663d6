"""Consumer lag per group: summed over the assigned partitions, one series per group and topic kind."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from vigil_runtime.lag import ConsumerLag, consumers_assigned
from vigil_runtime.metrics import ServiceMetrics


@dataclass
class FakeConsumer:
    ends: dict[TopicPartition, int]
    positions: dict[TopicPartition, int]
    topics: set[str] = field(default_factory=set)

    def subscription(self) -> set[str]:
        return self.topics

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends.get(tp)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


@dataclass
class FakeSubscriber:
    group_id: str | None
    consumer: FakeConsumer | None
    topic_names: list[str]


@dataclass
class FakeBroker:
    subscribers: list[FakeSubscriber]


def lag_series(metrics: ServiceMetrics) -> dict[tuple[str, str, str], float]:
    families = text_string_to_metric_families(metrics.expose().decode())
    return {
        (s.labels["service"], s.labels["group"], s.labels["topic"]): s.value
        for f in families
        if f.name == "vigil_consumer_lag"
        for s in f.samples
    }


async def test_lag_is_summed_over_partitions_per_group_and_topic_kind() -> None:
    obs = "t1.vigil.observations"
    p0, p1, p2 = (TopicPartition(obs, p) for p in range(3))
    scoring = FakeConsumer(ends={p0: 100, p1: 50, p2: 7}, positions={p0: 40, p1: 50, p2: 9}, topics={obs})
    idle = FakeConsumer(ends={}, positions={}, topics={"t1.vigil.alerts"})  # in the group, nothing assigned
    broker = FakeBroker(
        [
            FakeSubscriber("vigil-scorer", scoring, [obs]),
            FakeSubscriber(None, FakeConsumer({}, {}), ["t1.vigil.model-lifecycle"]),  # no group: no lag
            FakeSubscriber("vigil-idle", idle, ["t1.vigil.alerts"]),
        ]
    )
    metrics = ServiceMetrics("scorer")
    sampler = ConsumerLag(broker, metrics)
    sampler.declare()
    assert lag_series(metrics)[("scorer", "vigil-scorer", "observations")] == 0
    lags = await sampler.sample()
    # 60 + 0 + 0 (a position past the highwater it last saw counts as caught up, never negative)
    assert lags[("vigil-scorer", "observations")] == 60
    assert lag_series(metrics)[("scorer", "vigil-scorer", "observations")] == 60
    assert lag_series(metrics)[("scorer", "vigil-idle", "alerts")] == 0
    assert {group for _, group, _ in lag_series(metrics)} == {"vigil-scorer", "vigil-idle"}


async def test_a_subscriber_not_started_yet_is_skipped_and_sampling_stops_cleanly() -> None:
    metrics = ServiceMetrics("drift")
    sampler = ConsumerLag(FakeBroker([FakeSubscriber("vigil-drift", None, ["vigil.scores.live"])]), metrics)
    assert await sampler.sample() == {}
    sampler.start()
    await sampler.stop()
    assert lag_series(metrics) == {("drift", "vigil-drift", "scores.live"): 0}


@dataclass
class FakeSubscription:
    assignment: set[TopicPartition] | None


@dataclass
class FakeState:
    subscription: FakeSubscription | None


@dataclass
class JoiningConsumer:
    _subscription: FakeState


def test_ready_needs_every_group_consumer_assigned_an_empty_assignment_counts() -> None:
    def broker(*states: FakeState | None) -> FakeBroker:
        subscribers = [FakeSubscriber("g", JoiningConsumer(s) if s else None, ["vigil.observations"]) for s in states]  # type: ignore[arg-type]
        subscribers.append(FakeSubscriber(None, None, ["vigil.models.lifecycle"]))  # no group: not waited for
        return FakeBroker(subscribers)

    joined = FakeState(FakeSubscription({TopicPartition("vigil.observations", 0)}))
    idle = FakeState(FakeSubscription(set()))
    joining = FakeState(FakeSubscription(None))
    assert consumers_assigned(broker(joined, idle))
    assert not consumers_assigned(broker(joined, joining))
    assert not consumers_assigned(broker(joined, FakeState(None)))
    assert not consumers_assigned(broker(None))  # not started
    assert consumers_assigned(FakeBroker([]))
