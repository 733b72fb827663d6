"""The registry against the real Kafka broker (and a SQLite file):

- lifecycle events decided while Kafka was off wait in the outbox and are published once a relay runs;
- a shadow candidate whose comparison meets the policy is promoted after approval, and ModelLifecycleChanged
  (with the artifact's sha256 and URL) lands on the lifecycle topic;
- a critical performance alert on the production model triggers the configured rollback, published likewise;
- a comparison about an unknown model is parked in the dead-letter topic with its reason.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from fastapi.testclient import TestClient

from tests import factories
from tests.integration.test_broker import consume
from tests.pg import make_package
from tests.unit.test_registry_api import ADMIN, APP, SCI, TOKENS, VIEW
from tests.unit.test_registry_core import comparison, outcomes
from vigil_contracts import events as ev
from vigil_registry.app import create_app
from vigil_registry.artifacts import pack_folder
from vigil_registry.settings import Settings
from vigil_runtime.kafka import encode, ensure_topics


def registry_settings(settings_env: dict[str, Any], tmp_path: Path, **extra: Any) -> Settings:
    fields: dict[str, Any] = {
        **settings_env,
        "database_url": f"sqlite:///{tmp_path / 'registry.db'}",
        "artifact_root": tmp_path / "artifacts",
        "public_url": "http://registry.test:8005",
        "tokens": TOKENS,
        "outbox_poll_seconds": 0.2,
        "group_id": f"registry-{settings_env['topic_prefix']}",
    }
    fields.update(extra)
    return Settings(**fields)


def step(client: TestClient, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    response = client.post(path, json=body, headers=headers)
    assert response.status_code in (200, 201), (path, response.text)
    return response.json()


def upload(client: TestClient, tmp_path: Path, version: str) -> dict[str, Any]:
    archive = pack_folder(make_package(tmp_path, version=version))
    response = client.post(
        "/models/sepsis/versions", content=archive, headers={**SCI, "Content-Type": "application/gzip"}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def produce(bootstrap: str, topic: str, events: list[ev.Event]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(topic, encode(event), key=event.key_bytes())
    finally:
        await producer.stop()


def lifecycle(records: list[Any]) -> list[ev.ModelLifecycleChanged]:
    return [ev.ModelLifecycleChanged.model_validate_json(r.value) for r in records]


async def test_promotion_on_evidence_and_rollback_on_a_critical_alert_publish_lifecycle_events(
    settings_env: dict[str, Any], tmp_path: Path
) -> None:
    settings = registry_settings(settings_env, tmp_path)
    topics = settings.topics
    bootstrap = settings.kafka_bootstrap_servers

    # Decisions taken while Kafka is off (a registry that died before publishing) wait in the outbox.
    offline_app = create_app(registry_settings(settings_env, tmp_path, kafka_enabled=False))
    with TestClient(offline_app) as offline:
        first = upload(offline, tmp_path, "1")
        step(offline, "/models/sepsis/versions/1/stage", {"to": "shadow"}, SCI)
        step(offline, "/models/sepsis/versions/1/proposals", {"reason": "first"}, SCI)
        step(offline, "/models/sepsis/versions/1/approve", {}, APP)
        step(offline, "/models/sepsis/versions/1/promote", {}, APP)
        assert len(offline_app.state.registry.pending_events()) == 3

    await ensure_topics(settings)
    app = create_app(settings)
    with TestClient(app) as client:
        registry = app.state.registry
        await wait_for(lambda: not registry.pending_events(), "the outbox to drain")
        published = lifecycle(await consume(bootstrap, topics.lifecycle, 3))
        assert [(e.model_version, e.action) for e in published] == [
            ("1", ev.LifecycleAction.REGISTERED),
            ("1", ev.LifecycleAction.STAGE_CHANGED),
            ("1", ev.LifecycleAction.PROMOTED),
        ]
        assert published[2].artifact_sha256 == first["artifact_sha256"]

        response = client.put(
            "/models/sepsis/policy",
            json={"min_shadow_hours": 24, "min_labelled_outcomes": 3, "auto_promote": True, "auto_rollback": True},
            headers=ADMIN,
        )
        assert response.status_code == 200
        second = upload(client, tmp_path, "2")
        step(client, "/models/sepsis/versions/2/stage", {"to": "shadow"}, SCI)
        step(client, "/models/sepsis/versions/2/proposals", {"reason": "better in shadow"}, SCI)
        step(client, "/models/sepsis/versions/2/approve", {"reason": "clinical review ok"}, APP)
        assert client.get("/models/sepsis/production", headers=VIEW).json()["version"] == "1"

        # The evidence arrives through Kafka: outcomes, then shadow's comparison (and one about an unknown model).
        await produce(bootstrap, topics.outcomes, outcomes(5))
        await wait_for(lambda: registry.get_version("sepsis", "2").outcomes_labelled == 5, "the outcomes to be counted")
        unknown = comparison("2", "1", n=99, model_name="no-such-model", key="no-such-model")
        await produce(bootstrap, topics.comparisons, [unknown, comparison("2", "1")])
        await wait_for(lambda: registry.production("sepsis").version == "2", "the promotion of version 2")

        records = await consume(bootstrap, topics.lifecycle, 7)
        events = lifecycle(records)
        assert len(events) == 7  # registered, shadow and promoted for v2; v1 archived; three earlier
        promoted = next(e for e in events if e.action == ev.LifecycleAction.PROMOTED and e.model_version == "2")
        assert promoted.to_stage == ev.Stage.PRODUCTION and promoted.from_stage == ev.Stage.SHADOW
        assert promoted.actor == "policy"
        assert promoted.artifact_sha256 == second["artifact_sha256"]
        assert promoted.artifact_url == "http://registry.test:8005/models/sepsis/versions/2/artifact"
        assert promoted.evidence["policy"]["eligible"] is True
        assert promoted.evidence["approved_by"] == "dr-alice"
        assert all(r.key == b"sepsis" for r in records)
        archived = events[events.index(promoted) + 1]
        assert (archived.model_version, archived.to_stage) == ("1", ev.Stage.ARCHIVED)

        letters = await consume(bootstrap, topics.dead_letter, 1)
        letter = ev.DeadLettered.model_validate_json(letters[0].value)
        assert letter.source_topic == topics.comparisons and "no-such-model" in letter.error

        # A critical performance alert on the production model: the policy rolls back.
        alert = factories.alert(
            event_id=ev.deterministic_id("alert", "perf", 1),
            alert_key="performance:sepsis:auroc",
            kind="performance",
            severity=ev.Severity.CRITICAL,
            model_version="2",
            metric="auroc",
            value=0.71,
            threshold=0.85,
        )
        await produce(bootstrap, topics.alerts, [alert])
        await wait_for(lambda: registry.production("sepsis").version == "1", "the rollback to version 1")
        events = lifecycle(await consume(bootstrap, topics.lifecycle, 9))
        assert len(events) == 9
        rolled = next(e for e in events if e.action == ev.LifecycleAction.ROLLED_BACK)
        assert (rolled.model_version, rolled.to_stage, rolled.actor) == ("1", ev.Stage.PRODUCTION, "policy")
        assert rolled.artifact_sha256 == first["artifact_sha256"]
        assert rolled.evidence["alert"]["alert_key"] == "performance:sepsis:auroc"
        assert (events[-1].model_version, events[-1].to_stage) == ("2", ev.Stage.ARCHIVED)
        assert len({e.event_id for e in events}) == len(events)

        verification = client.get("/audit/verify", headers=VIEW).json()
        assert verification["ok"] is True
        history = client.get("/models/sepsis/versions/2/history", headers=VIEW).json()
        assert [a["action_taken"] for a in history["alerts"]] == ["rolled_back"]
        assert len(history["comparisons"]) == 1
        metrics = client.get("/metrics").text
        assert 'vigil_registry_lifecycle_published_total{action="rolled_back"} 1.0' in metrics
        assert 'vigil_messages_total{outcome="promoted",service="registry"' in metrics
