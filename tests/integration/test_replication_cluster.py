"""Replication on a real three-broker cluster (secured, on this checkout's own ports, stopped at the end).

What a service checks at start, seen from its own principal: the stack's topics have three replicas and
min.insync.replicas=2 (provisioned by default, nothing asked); a topic with one replica is refused by name
outside development mode and allowed in it; with one broker killed (-9), acks=all writes still succeed and a
consumer reads every record across the leader changes.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from vigil.kafka_local import LocalCluster
from vigil_contracts.access import bindings_for
from vigil_contracts.events import ObservationRecorded
from vigil_contracts.topics import Topic, Topics
from vigil_runtime.kafka import ensure_topics
from vigil_runtime.kafka_security import create_acls
from vigil_runtime.producer import AckedProducer
from vigil_runtime.replication import UnsafeReplication, describe_replication, enforce, unsafe_replication
from vigil_runtime.settings import VigilSettings
from vigil_runtime.tracing import kind_of

# Beside this checkout's test broker (VIGIL_TEST_KAFKA_PORT), the CLI test's (+20), the ingest outage test's (+40) and
# the chaos suite's (+60): six ports from +80. It runs in lane B, beside lane A's brokers (scripts/test.sh).
PORT = int(os.environ.get("VIGIL_TEST_KAFKA_PORT", "19092")) + 80

# Three JVMs: about half a minute to start on the 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.own_cluster]


def _settings(cluster: LocalCluster, principal: str, prefix: str, **overrides: object) -> VigilSettings:
    return VigilSettings(
        kafka_bootstrap_servers=cluster.bootstrap_servers,
        kafka_ca_file=str(cluster.secrets.ca_file),
        kafka_username=principal,
        kafka_password_file=str(cluster.secrets.password_file(principal)),
        topic_prefix=prefix,
        partitions=3,
        **overrides,  # type: ignore[arg-type]
    )


def test_three_brokers_replicate_by_default_refuse_rf_one_and_survive_a_killed_broker(tmp_path: Path) -> None:
    cluster = LocalCluster(name=f"rf-{uuid.uuid4().hex[:6]}", brokers=3, base_port=PORT, home=tmp_path)
    cluster.start(timeout=180)
    try:
        asyncio.run(_scenario(cluster))
    finally:
        cluster.destroy()


async def _scenario(cluster: LocalCluster) -> None:
    safe, unsafe = f"s{uuid.uuid4().hex[:8]}.", f"u{uuid.uuid4().hex[:8]}."
    # Provisioned as `vigil kafka start --brokers 3` does: no replication factor given.
    await asyncio.to_thread(cluster.provision, Topics(safe), partitions=3)
    brokers, topics = await describe_replication(_settings(cluster, "scorer", safe))
    assert brokers == 3
    # The scorer sees its own five topics (its ACLs), each with three replicas and two in sync.
    assert {t.name for t in topics} == {
        Topics(safe).name(t)
        for t in (Topic.OBSERVATIONS, Topic.LIFECYCLE, Topic.SCORER_STATE, Topic.SCORES_LIVE, Topic.DEAD_LETTER)
    }
    assert {(t.replication_factor, t.min_insync_replicas) for t in topics} == {(3, 2)}
    assert unsafe_replication(brokers, topics, acks="all") == []

    # An administrator who creates the observations topic with one replica: the scorer refuses it by name.
    admin = _settings(cluster, "admin", unsafe, replication_factor=1)
    await ensure_topics(admin, [Topic.OBSERVATIONS])
    await create_acls(cluster.connection(), bindings_for(Topics(unsafe)))
    brokers, topics = await describe_replication(_settings(cluster, "scorer", unsafe))
    problems = unsafe_replication(brokers, topics, acks="all")
    assert problems == [
        f"topic {unsafe}observations has replication factor 1 on a cluster of 3 brokers: one broker lost loses "
        "its records; it needs 3"
    ]
    with pytest.raises(UnsafeReplication, match=f"topic {unsafe}observations"):
        enforce(problems, development=False, service="scorer")
    # Development mode is the subject here: it must allow the unsafe cluster (with a warning) where production refuses.
    enforce(problems, development=True, service="scorer")

    # One broker killed: acks=all still succeeds (two of three in sync) and a consumer reads every record.
    cluster.stop_node(2, kill=True)
    ingest = _settings(cluster, "ingest", safe)
    producer = AckedProducer(ingest.kafka, client_id="rf-test")
    await producer.start()
    try:
        records = [(f"enc-{i % 7}".encode(), f"{i}".encode(), None) for i in range(300)]
        kind = kind_of(ObservationRecorded)  # opaque test values; the headers need a kind
        await asyncio.wait_for(producer.send_all(Topics(safe).observations, records, kind=kind), 60)
    finally:
        await producer.stop()
    reader = _settings(cluster, "admin", safe)
    consumer = AIOKafkaConsumer(
        Topics(safe).observations, **reader.kafka.client_kwargs(), auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    seen: set[bytes] = set()
    try:
        async with asyncio.timeout(60):
            while len(seen) < 300:
                for batch in (await consumer.getmany(timeout_ms=1000)).values():
                    seen.update(r.value for r in batch if r.value is not None)
    finally:
        await consumer.stop()
    assert seen == {f"{i}".encode() for i in range(300)}
