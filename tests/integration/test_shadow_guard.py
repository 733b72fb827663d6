"""Against the real broker: shadow scores never reach the live topic, even when the shadow is misconfigured;
bad records are parked in the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from tests import factories
from tests.factories import T0
from vigil_contracts import events as ev
from vigil_runtime.kafka import ensure_topics
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.producer import AckedProducer
from vigil_scoring.model_package import ModelPackage, default_package_path
from vigil_shadow import logscan
from vigil_shadow.app import create_app
from vigil_shadow.catalog import ModelRefused, ShadowModel
from vigil_shadow.guard import ShadowStageRefused
from vigil_shadow.settings import LiveTopicRefused, Settings


async def _all(kafka: KafkaConnection, topic: str) -> list[Any]:
    return [r async for chunk in logscan.read_until(kafka, topic) for r in chunk]


def _stay(enc: str) -> list[Any]:
    events: list[Any] = [factories.encounter(encounter=enc, key=enc, event_id=ev.deterministic_id("enc", enc))]
    for h in range(6):
        for feature, value, unit in (("heart_rate", 80.0 + 5 * h, "/min"), ("temperature", 37.0 + 0.2 * h, "Cel")):
            events.append(
                factories.observation(
                    encounter=enc,
                    key=enc,
                    feature=feature,
                    value=value,
                    unit=unit,
                    observed_at=T0 + timedelta(hours=h),
                    source=factories.source(resource_id=f"{enc}-{h}-{feature}"),
                )
            )
    return events


async def test_misconfigured_shadow_never_reaches_the_live_topic(
    settings_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = settings_env["topic_prefix"]
    # 1. The shadow output topic set to the live topic, by environment: the service does not even configure.
    monkeypatch.setenv("SHADOW_OUTPUT_TOPIC", f"{prefix}scores.live")
    with pytest.raises(ValidationError):
        Settings(**settings_env)
    monkeypatch.delenv("SHADOW_OUTPUT_TOPIC")
    # ... and a service given such settings without validation refuses to be built.
    bypass = Settings.model_construct(**settings_env, output_topic=f"{prefix}scores.live", registry_url=None)
    with pytest.raises(LiveTopicRefused):
        create_app(bypass)

    settings = Settings(
        **settings_env,
        group_id=f"shadow-{uuid.uuid4().hex[:8]}",
        registry_url=None,
        local_models=[f"sepsis:2={default_package_path('2')}"],
        publish_every_s=3600,
    )
    topics = settings.topics
    await ensure_topics(settings)
    events = [e for enc in ("g-1", "g-2", "g-3") for e in _stay(enc)]
    feeder = AckedProducer(settings.kafka, client_id="test-guard")
    await feeder.start()
    producer = AIOKafkaProducer(**settings.kafka.client_kwargs())
    await producer.start()
    try:
        await feeder.publish_all(topics.observations, events)
        await producer.send_and_wait(topics.observations, b"{not json", key=b"g-1")
        app = create_app(settings)
        service = app.state.shadow
        async with app.router.lifespan_context(app):
            for _ in range(300):
                if len(service.join.shadow.get(("sepsis", "2"), {})) >= 18:
                    break
                await asyncio.sleep(0.1)
            # 2. A model whose stage says production: refused by the catalog, the engine and the publisher.
            production = ModelPackage.load(default_package_path("1"))
            with pytest.raises(ModelRefused):
                service.catalog.add(ShadowModel("sepsis", "1", production, ev.Stage.PRODUCTION, "misconfigured"))
            with pytest.raises(ModelRefused):
                service.core.set_models({("sepsis", "1"): production}, stage=ev.Stage.PRODUCTION)
            with pytest.raises(ShadowStageRefused):
                await service.scores_out.publish([factories.score(encounter="g-1", stage=ev.Stage.PRODUCTION)])
            service.scores_out.topic = topics.scores_live  # tampering at run time is caught at use
            with pytest.raises(LiveTopicRefused):
                await service.scores_out.publish([factories.score(encounter="g-1", stage=ev.Stage.SHADOW)])
            service.scores_out.topic = settings.shadow_topic
            # Scoring goes on after the refusals.
            more = _stay("g-4")
            await feeder.publish_all(topics.observations, more)
            for _ in range(300):
                if len(service.join.shadow.get(("sepsis", "2"), {})) >= 24:
                    break
                await asyncio.sleep(0.1)
    finally:
        await producer.stop()
        await feeder.stop()

    kafka = settings.kafka
    assert await _all(kafka, topics.scores_live) == []
    shadow = [json.loads(r.value) for r in await _all(kafka, topics.scores_shadow)]
    assert {(s["stage"], s["model_version"]) for s in shadow} == {("shadow", "2")}
    assert len({(s["encounter"], s["hour"]) for s in shadow}) == 24
    letters = [ev.DeadLettered.model_validate_json(r.value) for r in await _all(kafka, topics.dead_letter)]
    assert [(d.service, d.source_topic) for d in letters] == [("shadow", topics.observations)]
    assert "{not json" not in letters[0].model_dump_json()  # the reason and coordinates, not the payload
