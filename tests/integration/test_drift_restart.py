"""Drift restarted mid-stream resumes its windows from the changelog: the alerts equal an uninterrupted run's.

Two copies of one stream (each under its own topic prefix, one partition so the order is the same): run A consumes
it whole; run B consumes the first half, stops, and a new process consumes the second half. Temperatures turn to
Fahrenheit and scores shift inside the first half, so both alerts open before the restart. Each half holds enough
stay-hours (396) for two evaluations of a full window: without its state the second process would open them again
(a fresh window fills with drifted data); with it, it carries on.

Batches differ between runs (the service judges a batch's readings before its scores, and closes stay-hours per
batch), so alert values may differ in their last digits; what must be equal is which conditions opened and resolved,
in order per condition. The unit tier (tests/unit/test_drift_state.py) checks exact equality with equal batches.

A third copy runs on two drift instances in one group (active/standby, :mod:`vigil_runtime.assignors`): one holds
every partition and the other none; the active one stops mid-stream and the standby takes over from the changelog.
Their alerts equal the uninterrupted run's too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from tests import factories
from tests.integration.test_drift_service import SMALL, observations
from tests.unit.test_drift_reference import synthetic_stays
from vigil_contracts import events as ev
from vigil_drift.app import create_app
from vigil_drift.settings import Settings
from vigil_runtime.kafka import ensure_topics
from vigil_runtime.producer import AckedProducer
from vigil_scoring.reference import build_reference
from vigil_shadow import logscan


def _stream() -> tuple[list[ev.Event], list[ev.Event], list[ev.Event], list[ev.Event]]:
    """(observations, scores) of the first half, then of the second."""
    celsius = observations(72, 12, temp_f=False, rng=np.random.default_rng(1))
    fahrenheit = observations(72, 12, temp_f=True, rng=np.random.default_rng(1))
    drifted = {f"enc-{s}" for s in range(10, 72)}

    def pick(stays: range) -> list[ev.Event]:
        names = {f"enc-{s}" for s in stays}
        source = [(c, f) for c, f in zip(celsius, fahrenheit, strict=True) if getattr(c, "encounter", None) in names]
        return [f if getattr(c, "encounter", None) in drifted else c for c, f in source]

    scores: list[ev.Event] = [
        factories.score(
            encounter=f"enc-{i % 40}",
            key=f"enc-{i % 40}",
            model_name="sepsis",
            probability=0.1 if i < 100 else 0.3,
            data_time=factories.T0 + timedelta(minutes=i),
            observations=i,
        )
        for i in range(600)
    ]
    return pick(range(36)), scores[:300], pick(range(36, 72)), scores[300:]


async def _publish(settings: Settings, obs: list[ev.Event], scores: list[ev.Event]) -> None:
    publisher = AckedProducer(settings.kafka, client_id="it-drift-restart")
    await publisher.start()
    try:
        await publisher.publish_all(settings.topics.observations, obs)
        await publisher.publish_all(settings.topics.scores_live, scores)
    finally:
        await publisher.stop()


async def _committed_to_end(settings: Settings) -> None:
    """Wait until the group has committed every record of its topics."""
    topics = [settings.topics.observations, settings.topics.scores_live, settings.topics.outcomes]
    ends = await logscan.end_offsets(settings.kafka, topics)
    for _ in range(600):
        committed = {
            (t, p): o
            for t in topics
            for p, o in (await logscan.committed_offsets(settings.kafka, settings.group_id, t)).items()
        }
        if all(committed.get(k, 0) >= end for k, end in ends.items()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("drift did not commit to the end of its topics")


async def _consume_to_end(settings: Settings) -> None:
    """Run one drift process until its group has committed every record of its topics, then stop it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await _committed_to_end(settings)


async def _run_pair(
    settings: Settings, first: tuple[list[Any], list[Any]], second: tuple[list[Any], list[Any]]
) -> None:
    """Two instances of one group; the active one stops after the first half, the standby consumes the second."""
    apps = [create_app(settings), create_app(settings)]
    stacks = [contextlib.AsyncExitStack(), contextlib.AsyncExitStack()]
    try:
        for app, stack in zip(apps, stacks, strict=True):
            await stack.enter_async_context(app.router.lifespan_context(app))
        await _publish(settings, *first)
        await _committed_to_end(settings)
        seen = [app.state.drift.inputs.rows_seen for app in apps]
        assert min(seen) == 0 < max(seen), seen  # one holds every partition; the other stands by with none
        active = seen.index(max(seen))
        await stacks[active].aclose()  # the active instance leaves mid-stream
        await _publish(settings, *second)
        await _committed_to_end(settings)
        assert apps[1 - active].state.drift.inputs.rows_seen > 0  # the standby took over (state restored)
    finally:
        for stack in stacks:
            await stack.aclose()


async def _alerts(settings: Settings) -> list[ev.AlertRaised]:
    """The alerts topic to its end, in partition order (alerts are keyed by subject: one key, one partition)."""
    return [
        ev.AlertRaised.model_validate_json(r.value or b"")
        async for chunk in logscan.read_until(settings.kafka, settings.topics.alerts)
        for r in chunk
    ]


def _transitions(alerts: list[ev.AlertRaised]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in alerts:
        out.setdefault(a.alert_key, []).append(a.state)
    return out


async def test_a_restarted_drift_service_raises_the_alerts_of_an_uninterrupted_one(
    settings_env: dict[str, Any], tmp_path: Path
) -> None:
    ref_df = synthetic_stays(200, seed=11)
    ref_df["Temp"] = np.random.default_rng(0).normal(37.0, 0.6, len(ref_df))
    reference = build_reference(ref_df, np.full(len(ref_df), 0.1), threshold=0.5)
    path = reference.save(tmp_path / "reference.json")
    obs1, scores1, obs2, scores2 = _stream()
    run = uuid.uuid4().hex[:6]

    def settings(name: str) -> Settings:
        return Settings(
            **{**settings_env, "partitions": 1, "topic_prefix": f"{settings_env['topic_prefix']}{name}."},
            reference_path=str(path),
            model_name="sepsis",
            thresholds=json.dumps({"*": SMALL}),
            group_id=f"vigil-drift-{name}-{run}",
            batch_timeout_ms=50,
            checkpoint_interval_s=0.2,
        )

    whole, restarted, pair = settings("whole"), settings("restarted"), settings("pair")
    for s in (whole, restarted, pair):
        await ensure_topics(s)

    await _publish(whole, obs1 + obs2, scores1 + scores2)
    await _consume_to_end(whole)

    await _publish(restarted, obs1, scores1)
    await _consume_to_end(restarted)
    before_restart = _transitions(await _alerts(restarted))
    await _publish(restarted, obs2, scores2)
    await _consume_to_end(restarted)  # a new process: restores, then reads the second half

    expected, got = _transitions(await _alerts(whole)), _transitions(await _alerts(restarted))
    opened_early = {"data_drift:inputs:temperature", "prediction_drift:sepsis:mean_score_shift"}
    assert opened_early <= {k for k, states in before_restart.items() if "open" in states}, before_restart
    assert got == expected
    assert all(got[k] == ["open"] for k in opened_early), got  # not opened a second time after the restart

    await _run_pair(pair, (obs1, scores1), (obs2, scores2))
    assert _transitions(await _alerts(pair)) == expected
