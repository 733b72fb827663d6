"""The live scorer against the real broker: parity with the offline model, dead letters, hot swap, /predict."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.support import FakeRegistry, events_of, load_stays, offline_predictions, package_path
from tests import factories
from vigil_contracts import events as ev
from vigil_runtime.kafka import encode, ensure_topics
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.provenance import LifecycleSigner, ensure_signing_key
from vigil_runtime.reader import read_to_end
from vigil_scorer.app import create_app
from vigil_scorer.settings import Settings
from vigil_scoring.features import EncounterState
from vigil_scoring.model_package import ModelPackage

N_STAYS = 16


async def publish(kafka: KafkaConnection, topic: str, events: list[Any]) -> None:
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, encode(e), key=e.key_bytes()) for e in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class ScoreReader:
    """Reads the live topic in the background; ``wait`` until a condition holds over all scores read so far."""

    def __init__(self, kafka: KafkaConnection, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, **kafka.client_kwargs(), auto_offset_reset="earliest")
        self.scores: list[ev.RiskScored] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ScoreReader:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            for records in batch.values():
                self.scores.extend(ev.RiskScored.model_validate_json(r.value) for r in records)

    async def wait(self, done: Any, timeout: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not done(self.scores):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out with {len(self.scores)} scores")
            await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: Any) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()


def final_observations(events: list[Any]) -> dict[str, int]:
    """Per encounter: the observation count its last score must carry."""
    states: dict[str, EncounterState] = {}
    for e in events:
        states.setdefault(e.encounter, EncounterState(e.encounter, e.patient)).apply(e)
    return {enc: s.observations for enc, s in states.items()}


def complete(expected: dict[str, int]) -> Any:
    def check(scores: list[ev.RiskScored]) -> bool:
        seen = {s.encounter: s.observations for s in scores}
        return all(seen.get(enc, -1) >= n for enc, n in expected.items())

    return check


def final_per_hour(scores: list[ev.RiskScored]) -> dict[tuple[str, int], ev.RiskScored]:
    best: dict[tuple[str, int], ev.RiskScored] = {}
    for s in scores:
        k = (s.encounter, s.hour)
        if k not in best or s.observations > best[k].observations:
            best[k] = s
    return best


def hours_of(events: list[Any]) -> set[tuple[str, int]]:
    """Every (encounter, ICU hour) that has an observation."""
    admitted: dict[str | None, Any] = {
        e.encounter: e.icu_admitted_at for e in events if isinstance(e, ev.EncounterRecorded)
    }
    return {
        (str(e.encounter), int((e.observed_at - admitted[e.encounter]).total_seconds() // 3600))
        for e in events
        if isinstance(e, ev.ObservationRecorded)
    }


async def end_offsets(kafka: KafkaConnection, topic: str, partitions: int) -> dict[int, int]:
    """Per partition of ``topic`` that holds records, the offset after its last record."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items() if offset}
    finally:
        await consumer.stop()


async def committed_offsets(kafka: KafkaConnection, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offsets on ``topic``, per partition."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}
    finally:
        await admin.close()


def settings_for(settings_env: dict[str, Any], tmp_path: Path, **over: Any) -> Settings:
    return Settings(
        **{
            **settings_env,
            "group_id": f"scorer-{tmp_path.name}",
            "registry_url": "http://127.0.0.1:9",  # nothing listens: the default model
            "default_model_path": package_path("1"),
            "model_cache_dir": tmp_path / "models",
            "batch_max_records": 200,
            **over,
        }
    )


async def test_streamed_stays_score_like_the_offline_model(
    settings_env: dict[str, Any], tmp_path: Path, shared_kit: Path
) -> None:
    # Development mode: no registry answers, so only the bundled model can score (refused outside development).
    settings = settings_for(settings_env, tmp_path, development=True)
    await ensure_topics(settings)
    stays = load_stays(N_STAYS, data=shared_kit / "data" / "physionet2019_setA.parquet")
    events = events_of(stays)
    bad = [b"{not json", encode(factories.observation(encounter=None, key="unlinked"))]
    await publish(settings.kafka, settings.topics.observations, events)
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
    await producer.start()
    for value in bad:
        await producer.send_and_wait(settings.topics.observations, value, key=b"x")
    await producer.stop()

    app = create_app(settings)
    reader = ScoreReader(settings.kafka, settings.topics.scores_live)
    async with reader, app.router.lifespan_context(app):
        await reader.wait(complete(final_observations(events)))
        # The stream is quiet now: the checkpoint loop saves every state, then commits to the end of the topic.
        ends = await end_offsets(settings.kafka, settings.topics.observations, settings.partitions)
        committed: dict[int, int] = {}
        for _ in range(100):
            committed = await committed_offsets(settings.kafka, settings.group_id, settings.topics.observations)
            if committed == ends:
                break
            await asyncio.sleep(0.1)
        saved = await read_to_end(settings.kafka, settings.topics.scorer_state, range(settings.partitions))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scorer", headers=factories.AUTH) as http:
            ready = (await http.get("/ready")).json()
            metrics = (await http.get("/metrics")).text
            snapshot = {"heart_rate_last": 120.0, "age": 70.0, "temperature_last": None}
            predicted = (await http.post("/predict", json=snapshot)).json()
            refused = await http.post("/predict", json={"nope": 1.0})

    package = ModelPackage.load(package_path("1"))
    expected = offline_predictions(stays, package)
    got = final_per_hour(reader.scores)
    hours_with_data = hours_of(events)
    assert set(got) == hours_with_data
    assert max(abs(s.probability - expected[k]) for k, s in got.items()) < 1e-6
    assert all(s.stage is ev.Stage.PRODUCTION and s.default_model for s in reader.scores)
    assert all(s.model_version == package.version and s.latency_ms >= 0 for s in reader.scores)

    assert committed == ends, (committed, ends)
    assert set(saved) == set(final_observations(events)) and all(v is not None for v in saved.values())
    assert ready["ready"], ready
    assert 'vigil_scores_total{model="sepsis"' in metrics or "vigil_scores_total{" in metrics
    assert "vigil_score_latency_seconds_bucket" in metrics
    lags = [line for line in metrics.splitlines() if line.startswith("vigil_consumer_lag{")]
    # One series per group and topic (summed over partitions): the scorer's group on the observations topic.
    series = f'vigil_consumer_lag{{group="{settings.group_id}",service="scorer",topic="observations"}} '
    assert len(lags) == 1 and lags[0].startswith(series) and float(lags[0].rsplit(" ", 1)[1]) >= 0, lags
    assert "vigil_model_info{" in metrics
    x = np.full((1, len(package.columns)), np.nan, dtype=np.float32)
    x[0, package.columns.index("heart_rate_last")] = 120.0
    x[0, package.columns.index("age")] = 70.0
    assert abs(predicted["probability"] - float(package.predict(x)[0])) < 1e-9
    assert predicted["default_model"] is True
    assert refused.status_code == 422

    letters: list[ev.DeadLettered] = []
    consumer = AIOKafkaConsumer(
        settings.topics.dead_letter, **settings.kafka.client_kwargs(), auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        for _ in range(50):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                letters.extend(ev.DeadLettered.model_validate_json(r.value) for r in records)
            if len(letters) >= 2:
                break
    finally:
        await consumer.stop()
    assert sorted(letter.error_type for letter in letters) == ["Rejected", "ValidationError"]


async def test_registry_model_at_start_and_hot_swap_on_promotion(
    settings_env: dict[str, Any], tmp_path: Path, shared_kit: Path
) -> None:
    v1, v2 = package_path("1"), package_path("2")
    registry = FakeRegistry()
    with registry.serve():
        registry.publish("1", v1)
        signer = LifecycleSigner(ensure_signing_key(tmp_path / "secrets" / "registry-signing.key"))
        settings = settings_for(
            settings_env,
            tmp_path,
            registry_url=registry.url,
            lifecycle_public_key_file=tmp_path / "secrets" / "registry-signing.pub",
        )
        await ensure_topics(settings)
        stays = load_stays(4, data=shared_kit / "data" / "physionet2019_setA.parquet")
        events = events_of(stays)
        half = len(events) // 2
        app = create_app(settings)
        reader = ScoreReader(settings.kafka, settings.topics.scores_live)
        async with reader, app.router.lifespan_context(app):
            await publish(settings.kafka, settings.topics.observations, events[:half])
            await reader.wait(complete(final_observations(events[:half])))
            facts = registry.publish("2", v2)
            # A tampered announcement (signed, but its digest is not the package's) is refused: version 1 stays.
            tampered = factories.lifecycle(
                model_version="2",
                artifact_url=registry.url + facts["artifact_url"],
                artifact_sha256="0" * 64,
                event_id="tampered",
            )
            promoted = factories.lifecycle(
                model_version="2",
                artifact_url=registry.url + facts["artifact_url"],
                artifact_sha256=facts["artifact_sha256"],
            )
            await publish(
                settings.kafka,
                settings.topics.lifecycle,
                [signer.sign(tampered), signer.sign(promoted)],
            )
            service = app.state.scorer
            for _ in range(100):
                if service.core.model_version == "2":
                    break
                await asyncio.sleep(0.1)
            await publish(settings.kafka, settings.topics.observations, events[half:])
            await reader.wait(complete(final_observations(events)))
            metrics = service.metrics.base.expose().decode()
    versions = [s.model_version for s in reader.scores]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions == sorted(versions)  # swapped once, between batches
    assert not any(s.default_model for s in reader.scores)
    assert 'vigil_model_swaps_total{outcome="refused"} 1.0' in metrics
    assert 'vigil_model_swaps_total{outcome="swapped"} 1.0' in metrics
