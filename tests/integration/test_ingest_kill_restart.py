"""Kill ingest with SIGKILL in the middle of a stream of 10,000 observations, restart it: nothing is lost, and after
dedupe by event id every observation's canonical event is on the output topic exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.conftest import settings_kafka_env
from tests.processes import free_port
from vigil_contracts.events import canonical_event_adapter
from vigil_ingest.mapping import Mapper
from vigil_runtime.kafka import ensure_topics
from vigil_runtime.settings import VigilSettings

N = 10_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)

pytestmark = pytest.mark.slow


def observation(i: int) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": f"kill-{i}",
            "meta": {"versionId": "1"},
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/p{i % 40}"},
            "encounter": {"reference": f"Encounter/e{i % 40}"},
            "effectiveDateTime": (T0 + timedelta(seconds=i)).isoformat(),
            "valueQuantity": {"value": 60 + i % 80, "unit": "/min", "system": "http://unitsofmeasure.org"},
        }
    )


def start_ingest(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "vigil_ingest"], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ingest exited during start-up"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("ingest did not become ready")


async def scenario(settings: VigilSettings, env: dict[str, str], port: int) -> tuple[set[str], list[str], int]:
    topics = settings.topics
    payloads = [observation(i) for i in range(N)]
    mapper = Mapper()
    expected = {e.event_id for p in payloads for e in mapper.map_bytes(p).events}
    assert len(expected) == N

    consumer = AIOKafkaConsumer(topics.observations, **settings.kafka.client_kwargs(), auto_offset_reset="earliest")
    await consumer.start()
    seen: list[str] = []

    async def read(until: float, stop: Any) -> None:
        while time.monotonic() < until and not stop():
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen.extend(canonical_event_adapter.validate_json(r.value).event_id for r in records)

    producer = AIOKafkaProducer(**settings.kafka.client_kwargs(), linger_ms=5)
    await producer.start()

    backlog = N // 2

    async def send(i: int) -> None:
        await producer.send(topics.fhir_raw, payloads[i], key=f"e{i % 40}".encode())

    async def stream() -> None:
        for start in range(backlog, N, 100):  # a stream, not one burst: 4 s or more
            for i in range(start, min(start + 100, N)):
                await send(i)
            await asyncio.sleep(0.08)
        await producer.flush()

    # Half the observations wait in the topic (ingest is busy with full batches when it is killed), the rest
    # streams in while it runs, is killed, and restarts.
    for i in range(backlog):
        await send(i)
    await producer.flush()
    proc = start_ingest(env, port)
    killed_at = 0
    try:
        streaming = asyncio.create_task(stream())
        await read(time.monotonic() + 30, lambda: len(seen) >= N // 50)  # while the backlog is being worked
        assert not streaming.done(), "the stream ended before the kill: not a mid-stream kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        killed_at = len(seen)
        await streaming
        proc = start_ingest(env, port)
        await read(time.monotonic() + 40, lambda: expected <= set(seen))
        await read(time.monotonic() + 1.5, lambda: False)  # anything late or extra
    finally:
        if proc.poll() is None:
            proc.terminate()
            # Cleanup, not the property under test: a stop is bounded at 28 s (docs/operations.md); 60 s was
            # exceeded once in CI before it was bounded.
            proc.wait(timeout=60)
        await producer.stop()
        await consumer.stop()
    return expected, seen, killed_at


def test_kill_during_a_stream_loses_nothing(settings_env: dict[str, Any]) -> None:
    settings = VigilSettings(**settings_env)
    asyncio.run(ensure_topics(settings))
    port = free_port()
    env = {
        **os.environ,
        **settings_kafka_env(settings, "INGEST"),
        "INGEST_TOPIC_PREFIX": settings.topic_prefix,
        "INGEST_HTTP_PORT": str(port),
        "INGEST_PARTITIONS": str(settings.partitions),
        "INGEST_MAX_RECORDS": "200",
        "INGEST_LOG_LEVEL": "WARNING",
    }
    expected, seen, killed_at = asyncio.run(scenario(settings, env, port))
    duplicates = len(seen) - len(set(seen))
    print(f"\n[kill-restart] killed after {killed_at} events seen; {duplicates} republished after the restart")
    assert 0 < killed_at < len(expected)  # the kill happened mid-stream
    assert set(seen) == expected  # nothing lost, nothing foreign: after dedupe by event id, exactly once each
