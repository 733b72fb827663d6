"""A consumer its group has dropped writes no state: the membership check against a real broker.

A member whose event loop is busy past its session timeout is dropped by the group coordinator, and learns it only
at its next heartbeat or commit; meanwhile another member owns its partitions. Whatever it writes to the changelog
then lands over the new owner's newer snapshots, and the next restore loses the readings in between (the chaos
suite's scale-out scenario caught shadow doing exactly that). Here member A runs on an event loop of its own, in a
thread; that loop is blocked past the session timeout while member B joins, and then A's checkpoint must be refused
before it writes anything.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError

from vigil_runtime.changelog import Changelog
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.producer import AckedProducer
from vigil_runtime.reader import read_to_end
from vigil_runtime.tracing import SHADOW_STATE_KIND

pytestmark = [pytest.mark.integration, pytest.mark.slow]
T = TypeVar("T")
SESSION_MS = 6000  # the broker's smallest allowed session timeout (group.min.session.timeout.ms)


class DictState:
    """A keyed state of one value per key, all on partition 0."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def snapshot(self, key: str) -> bytes | None:
        return self.values.get(key)

    def restore(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        dropped = len(self.values) if 0 in set(partitions) else 0
        if dropped:
            self.values.clear()
        return dropped


class LoopThread:
    """An event loop in a thread of its own: blocking it stops its consumer's heartbeats, nothing else."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return await asyncio.wrap_future(future)

    def block(self, seconds: float) -> None:
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _consumer(kafka: KafkaConnection, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        **kafka.client_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=1000,
    )


async def _assigned(consumer: AIOKafkaConsumer, timeout: float = 60.0) -> set[TopicPartition]:
    async with asyncio.timeout(timeout):
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
    return set(consumer.assignment())


async def test_a_member_its_group_dropped_writes_no_snapshot(kafka: KafkaConnection) -> None:
    run = uuid.uuid4().hex[:8]
    source, changelog_topic, group = f"fence-{run}.in", f"fence-{run}.state", f"fence-{run}"
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in (source, changelog_topic)])
    finally:
        await admin.close()
    a_loop = LoopThread()
    b = _consumer(kafka, source, group)
    state = DictState()
    try:

        async def start_a() -> tuple[AIOKafkaConsumer, AckedProducer, Changelog]:
            consumer = _consumer(kafka, source, group)
            await consumer.start()
            await _assigned(consumer)
            sink = AckedProducer(kafka, client_id=f"fence-a-{run}")
            await sink.start()
            changelog = Changelog(
                kafka,
                topic=changelog_topic,
                source_topic=source,
                state=state,
                sink=sink,
                kind=SHADOW_STATE_KIND,
                consumer_of=lambda: consumer,
            )
            changelog.owned = {0}
            return consumer, sink, changelog

        a, a_sink, changelog = await a_loop.run(start_a())

        async def checkpoint(value: bytes, offset: int) -> int:
            state.values["enc-1"] = value
            changelog.changed({"enc-1": 0})
            changelog.advanced(0, offset)
            return await changelog.checkpoint()

        assert await a_loop.run(checkpoint(b"hours 0-3", 9)) == 1  # a member: written, then committed
        # A's loop is busy past its session: the coordinator drops A, and B joins and takes the partition.
        a_loop.block(SESSION_MS / 1000 * 2)
        await b.start()
        assert await _assigned(b) == {TopicPartition(source, 0)}
        with pytest.raises(CommitFailedError):
            await a_loop.run(checkpoint(b"hours 0-5", 19))  # a late, older state than B's: refused before writing
        assert changelog.fenced == 1
        written = await read_to_end(kafka, changelog_topic, [0], timeout_s=30)
        assert written == {"enc-1": b"hours 0-3"}  # only what A wrote as a member
        committed = await b.committed(TopicPartition(source, 0))
        assert committed == 10  # B resumes after A's last commit, with the snapshot written with it

        async def stop_a() -> None:
            await a_sink.stop()
            await a.stop()

        await a_loop.run(stop_a())
    finally:
        await b.stop()
        a_loop.close()
