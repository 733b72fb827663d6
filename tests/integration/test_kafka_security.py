"""The secured broker from outside: who may connect, and what each principal may read and write.

Every cell of the ACL table (``vigil_contracts.access``) is tried for real against the test broker: a principal
the table allows succeeds, every other principal is refused by the broker's authorizer. Clients without
credentials, with a wrong password or without the CA do not get in at all.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from pydantic import SecretStr

from tests.conftest import OUTSIDER
from vigil_contracts.access import Operation, Principal, may
from vigil_contracts.topics import Topic, Topics
from vigil_runtime.kafka_security import KafkaConnection

pytestmark = pytest.mark.asyncio

Connect = Callable[[str, str], KafkaConnection]
SEED = b'{"seed": true}'


async def _topics(kafka: KafkaConnection, prefix: str) -> Topics:
    from vigil_runtime.kafka import ensure_topics
    from vigil_runtime.settings import VigilSettings

    settings = VigilSettings(
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        kafka_ca_file=kafka.ca_file,
        kafka_username=kafka.username,
        kafka_password=kafka.password,
        topic_prefix=prefix,
        partitions=1,
    )
    await ensure_topics(settings)
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all")
    await producer.start()
    try:
        await asyncio.gather(*(producer.send_and_wait(settings.topics.name(t), SEED, key=b"k") for t in Topic))
    finally:
        await producer.stop()
    return settings.topics


async def can_write(connection: KafkaConnection, topic: str) -> bool:
    producer = AIOKafkaProducer(**connection.client_kwargs(), request_timeout_ms=5000, enable_idempotence=True)
    try:
        await producer.start()
        await asyncio.wait_for(producer.send_and_wait(topic, b"{}", key=b"k"), timeout=15)
        return True
    except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError):
        # The idempotent producer's id is refused to a principal that may write no topic at all.
        return False
    finally:
        await producer.stop()


async def can_describe(connection: KafkaConnection, topic: str) -> bool:
    """Whether the broker shows the principal the topic at all (READ and WRITE imply DESCRIBE)."""
    admin = AIOKafkaAdminClient(**connection.client_kwargs())
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return int(described["error_code"]) == 0
    finally:
        await admin.close()


async def can_read(connection: KafkaConnection, topic: str) -> bool:
    """Fetch the record :func:`_topics` seeded at offset 0, without a group (as replay and the lifecycle readers do).

    A principal that may not even describe the topic is refused here: aiokafka would keep asking for the metadata it
    is denied and never say no. One that may describe it gets the record or an authorization error: a permitted read
    is waited for up to :data:`READ_WAIT_S`, so a slow fetch on a loaded machine is not taken for a refusal (CI
    once read three of the registry's permitted topics as refused, each after 4 s, at a load average of 18).
    """
    if not await can_describe(connection, topic):
        return False
    consumer = AIOKafkaConsumer(**connection.client_kwargs(), group_id=None, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    try:
        await consumer.start()
        consumer.assign([tp])
        consumer.seek(tp, 0)
        deadline = asyncio.get_running_loop().time() + READ_WAIT_S
        while asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(tp, timeout_ms=1000)
            if any(r.value == SEED for records in batches.values() for r in records):
                return True
        raise AssertionError(f"{topic}: described but neither read nor refused within {READ_WAIT_S:g} s")
    except TopicAuthorizationFailedError:
        return False
    finally:
        await consumer.stop()


READ_WAIT_S = 60.0


async def test_a_client_without_credentials_cannot_connect(kafka: KafkaConnection) -> None:
    plaintext = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, request_timeout_ms=3000)
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(plaintext.start(), timeout=30)
    await plaintext.stop()


async def test_a_wrong_password_is_refused(kafka: KafkaConnection) -> None:
    assert kafka.username is not None
    wrong = kafka.as_user(kafka.username, SecretStr("not-the-password"))
    producer = AIOKafkaProducer(**wrong.client_kwargs(), request_timeout_ms=3000)
    with pytest.raises(KafkaError):
        await asyncio.wait_for(producer.start(), timeout=30)
    await producer.stop()


async def test_a_client_that_does_not_trust_the_local_ca_does_not_connect(kafka: KafkaConnection) -> None:
    kwargs: dict[str, Any] = kafka.client_kwargs()
    kwargs["ssl_context"] = ssl.create_default_context()  # the system's CAs only: the broker's chain fails
    producer = AIOKafkaProducer(**kwargs, request_timeout_ms=3000)
    with pytest.raises(KafkaError):
        await asyncio.wait_for(producer.start(), timeout=30)
    await producer.stop()


async def test_without_an_acl_no_lifecycle_writes_and_no_observation_reads(
    kafka: KafkaConnection, kafka_as: Connect, topic_prefix: str
) -> None:
    topics = await _topics(kafka, topic_prefix)
    outsider = kafka_as(OUTSIDER, topic_prefix)  # authenticated, no ACL
    assert not await can_write(outsider, topics.lifecycle)
    assert not await can_read(outsider, topics.observations)
    # Authenticated services are refused too where the table gives them nothing.
    assert not await can_write(kafka_as(Principal.SCORER, topic_prefix), topics.lifecycle)
    assert not await can_write(kafka_as(Principal.ANALYST, topic_prefix), topics.lifecycle)
    assert not await can_read(kafka_as(Principal.REGISTRY, topic_prefix), topics.observations)
    # ...while the principals the table names can.
    assert await can_write(kafka_as(Principal.REGISTRY, topic_prefix), topics.lifecycle)
    assert await can_read(kafka_as(Principal.ANALYST, topic_prefix), topics.observations)


async def test_every_cell_of_the_acl_table_is_what_the_broker_enforces(
    kafka: KafkaConnection, kafka_as: Connect, topic_prefix: str
) -> None:
    topics = await _topics(kafka, topic_prefix)
    mismatches = []
    cells = 0
    for principal in (p for p in Principal if p is not Principal.ADMIN):
        connection = kafka_as(principal, topic_prefix)
        # One principal's topics at once: a refused read waits out its fetch, so sequential reads take minutes.
        wrote = await asyncio.gather(*(can_write(connection, topics.name(t)) for t in Topic))
        read = await asyncio.gather(*(can_read(connection, topics.name(t)) for t in Topic))
        for topic, w, r in zip(Topic, wrote, read, strict=True):
            cells += 2
            if w != may(principal, topic, Operation.WRITE):
                mismatches.append((principal.value, topic.value, "write", w))
            if r != may(principal, topic, Operation.READ):
                mismatches.append((principal.value, topic.value, "read", r))
    assert cells == 2 * len(Topic) * (len(Principal) - 1)
    assert mismatches == []


async def test_a_service_may_join_only_its_own_consumer_group(
    kafka: KafkaConnection, kafka_as: Connect, topic_prefix: str
) -> None:
    topics = await _topics(kafka, topic_prefix)
    scorer = kafka_as(Principal.SCORER, topic_prefix)
    for group, allowed in (("vigil-scorer", True), ("vigil-ingest", False)):
        consumer = AIOKafkaConsumer(
            topics.observations, **scorer.client_kwargs(), group_id=group, auto_offset_reset="earliest"
        )
        try:
            await consumer.start()
            await asyncio.wait_for(consumer.getmany(timeout_ms=2000), timeout=20)
            joined = True
        except GroupAuthorizationFailedError:
            joined = False
        finally:
            await consumer.stop()
        assert joined is allowed, group
