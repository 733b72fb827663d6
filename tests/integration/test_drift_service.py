"""The drift service over the real broker: consumes observations, scores and outcomes, publishes alerts."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer
from fastapi.testclient import TestClient

from tests import factories
from tests.conftest import ready_within
from tests.unit.test_drift_reference import synthetic_stays
from vigil_contracts import events as ev
from vigil_drift.app import bootstrap, create_app
from vigil_drift.settings import Settings
from vigil_runtime.kafka import encode, ensure_topics
from vigil_runtime.producer import AckedProducer
from vigil_scoring.reference import build_reference

SMALL = {
    "psi_window_rows": 300,
    "psi_window_min": 200,
    "psi_window_max": 300,
    "psi_every": 50,
    "missing_window_min": 200,
    "missing_every": 50,
    "prediction_window": 200,
    "prediction_every": 50,
    "latency_window": 100,
    "latency_every": 50,
    "latency_min": 100,
    "open_after": 2,
}


def observations(n_stays: int, hours: int, temp_f: bool, rng: np.random.Generator) -> list[ev.Event]:
    out: list[ev.Event] = []
    for s in range(n_stays):
        enc = f"enc-{s}"
        admit = factories.T0 + timedelta(minutes=37 * s)
        out.append(factories.encounter(encounter=enc, key=enc, event_id=f"e{s}", icu_admitted_at=admit))
        for h in range(hours):
            at = admit + timedelta(hours=h, minutes=10)
            temp = rng.normal(37.0, 0.6)
            for feature, value in (
                ("heart_rate", rng.normal(85, 8)),
                ("temperature", temp * 1.8 + 32 if temp_f else temp),
            ):
                out.append(
                    factories.observation(
                        encounter=enc,
                        key=enc,
                        feature=feature,
                        value=float(value),
                        observed_at=at,
                        source=factories.source(resource_id=f"{enc}-{feature}-{h}"),
                    )
                )
    return out


async def test_service_consumes_live_topics_and_publishes_alerts(settings_env: dict[str, Any], tmp_path: Path) -> None:
    ref_df = synthetic_stays(200, seed=11)
    ref_df["Temp"] = np.random.default_rng(0).normal(37.0, 0.6, len(ref_df))
    ref_df["SBP"] = np.nan
    scores = np.full(len(ref_df), 0.1)
    reference = build_reference(ref_df, scores, threshold=0.5)
    path = reference.save(tmp_path / "reference.json")
    settings = Settings(
        **settings_env,
        reference_path=str(path),
        model_name="sepsis",
        thresholds=json.dumps({"*": SMALL}),
        group_id="drift-it",
        batch_timeout_ms=50,
    )
    await ensure_topics(settings)
    rng = np.random.default_rng(1)
    events: list[ev.Event] = observations(40, 12, temp_f=True, rng=rng)
    bad_scores = [
        factories.score(
            encounter=f"enc-{i % 40}",
            key=f"enc-{i % 40}",
            model_name="sepsis",
            probability=0.3,
            data_time=factories.T0 + timedelta(minutes=i),
            observations=i,
            latency_ms=900.0,
        )
        for i in range(400)
    ]
    publisher = AckedProducer(settings.kafka, client_id="it-producer")
    await publisher.start()
    try:
        await publisher.publish_all(settings.topics.observations, events)
        await publisher.publish_all(settings.topics.scores_live, bad_scores)
        await publisher.publish_all(settings.topics.outcomes, [factories.outcome(encounter="enc-1", key="enc-1")])
        await publisher.send_all(settings.topics.scores_live, [(b"enc-1", b"{not json", None)])
        # a valid event on the wrong topic is parked too, with its reason
        await publisher.publish_all(settings.topics.scores_live, [factories.outcome(encounter="enc-2", key="enc-2")])
    finally:
        await publisher.stop()

    runtime = bootstrap(settings)
    assert runtime.broker is not None
    # As the service's lifespan does: its hooks (the producer) start before the broker and stop after it.
    for hook in runtime.on_start:
        await hook()
    await runtime.broker.start()
    consumer = AIOKafkaConsumer(
        settings.topics.alerts,
        settings.topics.dead_letter,
        **settings.kafka.client_kwargs(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    alerts: list[ev.AlertRaised] = []
    letters: list[ev.DeadLettered] = []
    wanted = {
        "data_drift:inputs:temperature",
        "prediction_drift:sepsis:mean_score_shift",
        "latency:sepsis:latency_p99_ms",
    }
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    e = ev.any_event_adapter.validate_json(r.value)
                    (alerts if isinstance(e, ev.AlertRaised) else letters).append(e)
            if wanted <= {a.alert_key for a in alerts} and len(letters) >= 2:
                break
    finally:
        await consumer.stop()
        await runtime.broker.stop()
        for hook in runtime.on_stop:
            await hook()
    opened = {a.alert_key for a in alerts if a.state == "open"}
    assert wanted <= opened, opened
    assert "data_drift:inputs:heart_rate" not in opened
    temp = next(a for a in alerts if a.alert_key == "data_drift:inputs:temperature")
    assert temp.key == "inputs" and temp.kind == "data_drift" and temp.value >= temp.threshold
    assert len([a for a in alerts if a.alert_key == "data_drift:inputs:temperature" and a.state == "open"]) == 1
    assert len(letters) == 2
    assert all(x.service == "drift" and x.source_topic == settings.topics.scores_live for x in letters)
    assert any("does not belong" in x.error for x in letters)
    exposed = runtime.metrics.expose().decode()
    assert 'vigil_drift_feature{feature="temperature",quantity="drift_score"}' in exposed
    assert 'vigil_drift_alerts_total{kind="data_drift",state="open"}' in exposed
    assert encode(temp)  # alerts are well-formed events


def test_http_app_runs_the_consumer_and_serves_state(settings_env: dict[str, Any], tmp_path: Path) -> None:
    reference = build_reference(synthetic_stays(30, seed=3))
    path = reference.save(tmp_path / "reference.json")
    settings = Settings(**settings_env, reference_path=str(path), model_name="sepsis", group_id="drift-http")
    with TestClient(create_app(settings), headers=factories.AUTH) as client:
        ready = ready_within(client)
        assert ready.status_code == 200, ready.json()
        assert ready.json()["checks"]["reference"] is True
        state = client.get("/drift").json()
        assert "heart_rate" in state["inputs"] and state["open_alerts"] == []
        metrics = client.get("/metrics").text
        assert "vigil_drift_open_alerts" in metrics and "vigil_ready" in metrics
