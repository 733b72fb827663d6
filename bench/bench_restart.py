"""Start-up with a long topic: re-reading retention (before) against restoring the changelog (after).

Run: ``vigil bench restart --events 1000000`` (starts its own secured single-node broker on ``--port``; needs the
kit's set A). Set A stays are streamed into the observations topic as an EHR sends them (stays interleaved hour by
hour) until ``--events`` records are retained. Then, for shadow and for drift:

- **before** (what start-up did, or would have to do, without a changelog): read the observations topic from the
  beginning and apply every record to a fresh core (shadow's feature state; drift's detectors and stay-hours);
- **after**: write the core's state to its changelog once (shadow: one snapshot per encounter; drift: its chunked
  snapshot), then time what a restarted process does before it is ready: read the changelog to its end and
  restore a fresh core from it (``vigil_runtime.changelog.Changelog.restore``).

The restored core is checked against the rebuilt one (the same snapshot bytes for every encounter; the same drift
state) so the two timings are of the same result. One JSON line. The changelog here holds one snapshot per key;
a live changelog holds more until the log cleaner compacts its closed segments (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from bench.support import events_of, load_stays
from vigil_contracts.events import canonical_event_adapter
from vigil_contracts.topics import Topics
from vigil_drift.core import DriftCore
from vigil_drift.state import ChangelogState
from vigil_runtime.changelog import Changelog
from vigil_runtime.kafka import encode
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.producer import AckedProducer
from vigil_runtime.tracing import DRIFT_STATE_KIND, SHADOW_STATE_KIND, kind_of
from vigil_scoring.reference import build_reference
from vigil_scoring.scoring import Incoming
from vigil_shadow import logscan
from vigil_shadow.engine import ShadowCore

STAYS_PER_BLOCK = 400


async def _fill(kafka: KafkaConnection, topic: str, events: int) -> dict[str, Any]:
    """Stream set A stays (fresh encounter ids per block) until ``events`` records are in the topic."""
    producer = AckedProducer(kafka, client_id="bench-restart-fill")
    await producer.start()
    sent, block, encounters = 0, 0, 0
    t0 = time.perf_counter()
    try:
        while sent < events:
            stays = load_stays(STAYS_PER_BLOCK, first=1 + (block * STAYS_PER_BLOCK) % 20000)
            batch = events_of(stays, tag=f"b{block}-")[: events - sent]
            encounters += stays["patient_id"].nunique()
            for i in range(0, len(batch), 20_000):
                part = batch[i : i + 20_000]
                await producer.send_all(
                    topic, [(e.key_bytes(), encode(e), None) for e in part], kind=kind_of(type(part[0]))
                )
            sent += len(batch)
            block += 1
    finally:
        await producer.stop()
    return {"events": sent, "encounters": encounters, "fill_s": round(time.perf_counter() - t0, 1)}


async def _reread(kafka: KafkaConnection, topic: str, apply: Any) -> float:
    """Read the topic from its beginning, applying every record: the start-up cost without a changelog."""
    t0 = time.perf_counter()
    async for chunk in logscan.read_until(kafka, topic):
        items = []
        for record in chunk:
            try:
                event = canonical_event_adapter.validate_json(record.value or b"")
            except ValueError:
                continue
            items.append(Incoming(event, partition=record.partition, offset=record.offset))
        apply(items)
    return time.perf_counter() - t0


async def _shadow(kafka: KafkaConnection, topics: Topics, partitions: set[int]) -> dict[str, Any]:
    rebuilt = ShadowCore()
    before = await _reread(kafka, topics.observations, rebuilt.warm)
    sink = AckedProducer(kafka, client_id="bench-restart-shadow")
    await sink.start()
    try:
        writer = Changelog(
            kafka,
            topic=topics.shadow_state,
            source_topic=topics.observations,
            state=rebuilt,
            sink=sink,
            kind=SHADOW_STATE_KIND,
        )
        writer.owned = partitions
        writer.changed({e: t.partition for e, t in rebuilt.tracker.states.items()})
        t0 = time.perf_counter()
        written = await writer.checkpoint()
        write_s = time.perf_counter() - t0
    finally:
        await sink.stop()
    restored = ShadowCore()
    reader = Changelog(
        kafka,
        topic=topics.shadow_state,
        source_topic=topics.observations,
        state=restored,
        sink=sink,
        kind=SHADOW_STATE_KIND,
    )
    t0 = time.perf_counter()
    await reader.restore(partitions)
    after = time.perf_counter() - t0
    same = len(restored) == len(rebuilt) and all(
        restored.snapshot(e) == rebuilt.snapshot(e) for e in list(rebuilt.tracker.states)
    )
    return {
        "before_reread_s": round(before, 2),
        "after_restore_s": round(after, 2),
        "encounters": len(rebuilt),
        "snapshots_written": written,
        "checkpoint_write_s": round(write_s, 2),
        "restored_equals_rebuilt": same,
    }


async def _drift(kafka: KafkaConnection, topics: Topics, partitions: set[int]) -> dict[str, Any]:
    reference = build_reference(load_stays(1000, first=19001))

    def feed(core: DriftCore) -> Any:
        def apply(items: list[Incoming]) -> None:
            core.on_canonical([i.event for i in items])

        return apply

    rebuilt = DriftCore(reference)
    before = await _reread(kafka, topics.observations, feed(rebuilt))
    group = f"bench-drift-{uuid.uuid4().hex[:6]}"
    sink = AckedProducer(kafka, client_id="bench-restart-drift")
    await sink.start()
    try:
        state = ChangelogState(group, lambda: rebuilt, rebuilt.reset)
        writer = Changelog(
            kafka,
            topic=topics.drift_state,
            source_topic=topics.observations,
            state=state,
            sink=sink,
            kind=DRIFT_STATE_KIND,
            whole=True,
        )
        writer.owned = partitions
        writer.changed({group: 0})
        t0 = time.perf_counter()
        records = await writer.checkpoint()
        write_s = time.perf_counter() - t0
    finally:
        await sink.stop()
    restored = DriftCore(reference)
    reader = Changelog(
        kafka,
        topic=topics.drift_state,
        source_topic=topics.observations,
        state=ChangelogState(group, lambda: restored, restored.reset),
        sink=sink,
        kind=DRIFT_STATE_KIND,
        changelog_partitions=lambda _: {0},
        whole=True,
    )
    t0 = time.perf_counter()
    await reader.restore(partitions)
    after = time.perf_counter() - t0
    same = json.dumps(restored.state(), sort_keys=True) == json.dumps(rebuilt.state(), sort_keys=True)
    return {
        "before_reread_s": round(before, 2),
        "after_restore_s": round(after, 2),
        "rows_judged": rebuilt.inputs.rows_seen,
        "changelog_records": records,
        "checkpoint_write_s": round(write_s, 2),
        "restored_equals_rebuilt": same,
    }


async def run(kafka: KafkaConnection, topics: Topics, *, events: int, partitions: int) -> dict[str, Any]:
    """Fill the topic, then time both services' start-up both ways."""
    filled = await _fill(kafka, topics.observations, events)
    owned = set(range(partitions))
    return {
        "bench": "restart",
        **filled,
        "partitions": partitions,
        "shadow": await _shadow(kafka, topics, owned),
        "drift": await _drift(kafka, topics, owned),
    }


async def main(*, events: int, port: int, partitions: int = 6) -> dict[str, Any]:
    """Start a secured single-node broker of the bench's own, provision a fresh prefix, run, stop the broker."""
    from vigil.kafka_local import LocalCluster

    cluster = LocalCluster(name="bench-restart", base_port=port)
    started = not cluster.running()
    if started:
        await asyncio.to_thread(cluster.start, timeout=120)
    try:
        topics = Topics(f"bench{uuid.uuid4().hex[:6]}.")
        await asyncio.to_thread(cluster.provision, topics, partitions=partitions)
        return await run(cluster.connection(), topics, events=events, partitions=partitions)
    finally:
        if started:
            await asyncio.to_thread(cluster.stop)
