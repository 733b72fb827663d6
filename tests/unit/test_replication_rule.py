"""The replication rule every service checks at start: three replicas and min.insync.replicas=2 on three brokers,
acks=all always; refused outside development mode with the topic named, allowed on one broker."""

from __future__ import annotations

import logging

import pytest

from vigil_contracts.access import SERVICE_PRINCIPALS, bindings_for
from vigil_contracts.topics import Topics
from vigil_runtime.replication import (
    TopicReplication,
    UnsafeReplication,
    default_replication,
    enforce,
    min_insync_for,
    unsafe_replication,
)
from vigil_runtime.settings import VigilSettings


def test_replicated_defaults_follow_the_cluster_size() -> None:
    assert [default_replication(n) for n in (1, 2, 3, 5)] == [1, 2, 3, 3]
    assert [min_insync_for(rf) for rf in (1, 2, 3, 5)] == [1, 1, 2, 2]
    # None: decided from the cluster at topic creation (three where it has three brokers).
    assert VigilSettings().replication_factor is None


def test_three_replicas_two_in_sync_and_acks_all_are_safe() -> None:
    topics = [TopicReplication("vigil.observations", 3, 2), TopicReplication("vigil.scores.live", 3, 2)]
    assert unsafe_replication(3, topics, acks="all") == []
    assert unsafe_replication(3, topics, acks=-1) == []  # the wire form of acks=all


def test_one_broker_cannot_replicate_and_is_allowed() -> None:
    assert unsafe_replication(1, [TopicReplication("vigil.observations", 1, 1)], acks="all") == []


def test_rf_one_on_three_brokers_is_refused_naming_the_topic() -> None:
    problems = unsafe_replication(
        3, [TopicReplication("vigil.observations", 1, 1), TopicReplication("vigil.alerts", 3, 2)], acks="all"
    )
    assert len(problems) == 1
    assert "topic vigil.observations has replication factor 1 on a cluster of 3 brokers" in problems[0]


def test_min_insync_one_with_three_replicas_is_refused() -> None:
    problems = unsafe_replication(4, [TopicReplication("vigil.scores.live", 3, 1)], acks="all")
    assert problems == [
        "topic vigil.scores.live has min.insync.replicas=1 with 3 replicas: acks=all is then satisfied by one "
        "broker; it needs 2"
    ]


def test_min_insync_equal_to_the_replicas_is_refused_since_one_broker_down_stops_writes() -> None:
    (problem,) = unsafe_replication(3, [TopicReplication("vigil.outcomes", 3, 3)], acks="all")
    assert "one broker down stops every write" in problem


def test_acks_other_than_all_is_refused_even_on_one_broker() -> None:
    (problem,) = unsafe_replication(1, [], acks=1)
    assert "acks=1" in problem


def test_enforce_refuses_outside_development_and_warns_inside(caplog: pytest.LogCaptureFixture) -> None:
    problems = unsafe_replication(3, [TopicReplication("vigil.observations", 1, 1)], acks="all")
    with pytest.raises(UnsafeReplication, match=r"scorer refuses to start: topic vigil\.observations"):
        enforce(problems, development=False, service="scorer")
    with caplog.at_level(logging.WARNING, logger="vigil_runtime.replication"):
        # Development mode is the subject of this test: there the rule warns instead of refusing.
        enforce(problems, development=True, service="scorer")
    assert [r.reason for r in caplog.records] == problems  # type: ignore[attr-defined]
    enforce([], development=False, service="scorer")  # nothing to refuse


def test_every_service_may_read_the_configuration_of_the_topics_it_uses_and_no_other() -> None:
    bindings = bindings_for(Topics("vigil."))
    described = {(b.principal, b.resource_name) for b in bindings if b.operation == "DescribeConfigs"}
    used = {
        (b.principal, b.resource_name)
        for b in bindings
        if b.resource_type == "topic" and b.operation in ("Read", "Write") and b.principal in SERVICE_PRINCIPALS
    }
    assert described == used
