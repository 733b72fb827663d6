"""Forged lifecycle events on the real broker: parked with their reason and an alert, and the live model does not
change, not even for one batch (every live score names the model version that made it)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.support import FakeRegistry, events_of, load_stays, package_path
from tests import factories
from tests.integration.test_scorer_service import (
    ScoreReader,
    complete,
    final_observations,
    publish,
    settings_for,
)
from vigil_contracts import events as ev
from vigil_runtime.kafka import ensure_topics
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.provenance import LifecycleSigner, ensure_signing_key
from vigil_scorer.app import create_app


async def read_all(kafka: KafkaConnection, topic: str, expect: int, timeout: float = 30.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, **kafka.client_kwargs(), auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[bytes] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < expect and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return out


async def test_forged_lifecycle_events_are_parked_and_change_nothing(
    settings_env: dict[str, Any], tmp_path: Path, shared_kit: Path
) -> None:
    v1, v2 = package_path("1"), package_path("2")
    registry, attacker = FakeRegistry(), FakeRegistry()
    registry_key = ensure_signing_key(tmp_path / "secrets" / "registry-signing.key")
    genuine = LifecycleSigner(registry_key)
    stranger = LifecycleSigner(Ed25519PrivateKey.generate())
    with registry.serve(), attacker.serve():
        registry.publish("1", v1)
        # Version 2 is a real, loadable package, on the registry and on the attacker's server: what stops the swap
        # is the provenance check alone, not a broken download.
        on_registry = registry.publish("2", v2, production=False)
        on_attacker = attacker.publish("2", v2)
        settings = settings_for(
            settings_env,
            tmp_path,
            registry_url=registry.url,
            lifecycle_public_key_file=tmp_path / "secrets" / "registry-signing.pub",
        )
        await ensure_topics(settings)
        events = events_of(load_stays(4, data=shared_kit / "data" / "physionet2019_setA.parquet"))
        half = len(events) // 2

        def promotion(facts: dict[str, Any], base: str, **o: Any) -> ev.ModelLifecycleChanged:
            return factories.lifecycle(
                model_version="2",
                artifact_url=base + facts["artifact_url"],
                artifact_sha256=facts["artifact_sha256"],
                **o,
            )

        forged = [
            promotion(on_registry, registry.url, event_id="unsigned"),
            stranger.sign(promotion(on_registry, registry.url, event_id="wrong-key")),
            stranger.sign(promotion(on_registry, registry.url, event_id="claims-our-key")).model_copy(
                update={"signing_key_id": genuine.key_id}
            ),
            genuine.sign(promotion(on_attacker, attacker.url, event_id="off-registry")),
            genuine.sign(factories.lifecycle(model_version="2", artifact_url=f"file://{v2}", event_id="local-file")),
        ]
        app = create_app(settings)
        reader = ScoreReader(settings.kafka, settings.topics.scores_live)
        async with reader, app.router.lifespan_context(app):
            service = app.state.scorer
            await publish(settings.kafka, settings.topics.observations, events[:half])
            await reader.wait(complete(final_observations(events[:half])))
            # The forged events go out interleaved with observations, so batches are scored while they arrive.
            for i, event in enumerate(forged):
                await publish(settings.kafka, settings.topics.lifecycle, [event])
                part = events[half + i * 10 : half + (i + 1) * 10]
                await publish(settings.kafka, settings.topics.observations, part)
            await publish(settings.kafka, settings.topics.observations, events[half + 50 :])
            await reader.wait(complete(final_observations(events)))
            letters = [
                ev.DeadLettered.model_validate_json(v)
                for v in await read_all(settings.kafka, settings.topics.dead_letter, len(forged))
            ]
            alerts = [
                ev.AlertRaised.model_validate_json(v)
                for v in await read_all(settings.kafka, settings.topics.alerts, len(forged))
            ]
            still = service.core.model_version
            forged_scores = len(reader.scores)

            # The registry's own signed announcement is still obeyed (the gate is not simply closed).
            await publish(
                settings.kafka,
                settings.topics.lifecycle,
                [genuine.sign(promotion(on_registry, registry.url, event_id="genuine"))],
            )
            for _ in range(100):
                if service.core.model_version == "2":
                    break
                await asyncio.sleep(0.1)
            after = service.core.model_version
            metrics = service.metrics.base.expose().decode()

    assert still == "1" and after == "2"
    during = reader.scores[:forged_scores]
    assert during and {s.model_version for s in during} == {"1"}  # not one score from version 2 before "genuine"
    assert all(not s.default_model for s in reader.scores)
    lifecycle_letters = [d for d in letters if d.source_topic == settings.topics.lifecycle]
    assert sorted(d.error for d in lifecycle_letters) == sorted(
        [
            "unsigned lifecycle event",
            "signed with a key that is not a configured registry key",
            "the signature does not match the event",
            "the artifact URL is not under the configured registry URL",
            "a local artifact (file:// or a path) is refused outside development mode",
        ]
    )
    assert all(d.service == "scorer" and d.source_offset is not None for d in lifecycle_letters)
    assert len(alerts) == len(forged) and {a.kind for a in alerts} == {"provenance"}
    assert all(a.severity is ev.Severity.CRITICAL and a.model_name is None for a in alerts)
    for code in ("unsigned", "unknown_key", "bad_signature", "off_registry", "local_artifact"):
        assert f'vigil_lifecycle_refused_total{{reason="{code}",service="scorer"}} 1.0' in metrics
    assert 'vigil_model_swaps_total{outcome="swapped"} 1.0' in metrics
