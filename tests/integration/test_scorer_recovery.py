"""Scorer processes against the real broker: kill -9 and restart, and two processes sharing six partitions.

Each scorer runs as its own process (``python -m vigil_scorer``), as in production. Checked over every score the
live topic received:

- every stay-hour with data has a score, and the last score of each hour equals the offline model's prediction
  for that hour (which is what an uninterrupted scorer publishes, see test_scorer_service);
- copies of a score delivered more than once (at-least-once) carry the same id and the same content, so
  deduplicating by id leaves exactly one score per (encounter, data time, observations).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from bench.support import events_of, load_stays, offline_predictions, package_path
from tests.conftest import settings_kafka_env
from tests.integration.test_scorer_service import (
    ScoreReader,
    complete,
    end_offsets,
    final_observations,
    final_per_hour,
    hours_of,
    publish,
    settings_for,
)
from tests.processes import ServiceProcess, free_port
from vigil_contracts import events as ev
from vigil_runtime.kafka import ensure_topics
from vigil_scoring.model_package import ModelPackage


class ScorerProcess(ServiceProcess):
    """``python -m vigil_scorer`` with the test's settings in its environment."""

    def __init__(self, settings: Any, tmp_path: Path, name: str) -> None:
        port = free_port()
        env = {
            **os.environ,
            **settings_kafka_env(settings),
            "VIGIL_TOPIC_PREFIX": settings.topic_prefix,
            "VIGIL_PARTITIONS": str(settings.partitions),
            "VIGIL_LOG_LEVEL": "WARNING",
            "SCORER_HTTP_PORT": str(port),
            "SCORER_GROUP_ID": settings.group_id,
            "SCORER_REGISTRY_URL": settings.registry_url,
            "SCORER_DEFAULT_MODEL_PATH": str(settings.default_model_path),
            "SCORER_MODEL_CACHE_DIR": str(settings.model_cache_dir),
            "SCORER_BATCH_MAX_RECORDS": str(settings.batch_max_records),
            "SCORER_CHECKPOINT_INTERVAL_S": str(settings.checkpoint_interval_s),
            # Development mode: these tests kill and restart the scorer without a registry, so only the bundled
            # model can score (refused outside development); what they test is the state's recovery.
            "SCORER_DEVELOPMENT": "true",
        }
        super().__init__("vigil_scorer", env, port, tmp_path / f"{name}.log")


def check_scores(scores: list[ev.RiskScored], stays: Any, events: list[Any]) -> int:
    """The module docstring's checks; returns how many redelivered duplicates there were."""
    package = ModelPackage.load(package_path("1"))
    expected = offline_predictions(stays, package)
    got = final_per_hour(scores)
    hours_with_data = hours_of(events)
    assert set(got) == hours_with_data
    assert max(abs(s.probability - expected[k]) for k, s in got.items()) < 1e-6
    by_id: dict[str, ev.RiskScored] = {}
    for s in scores:
        content = (s.encounter, s.hour, s.data_time, s.observations, s.probability, s.model_version)
        if s.event_id in by_id:
            first = by_id[s.event_id]
            assert content == (
                first.encounter,
                first.hour,
                first.data_time,
                first.observations,
                first.probability,
                first.model_version,
            )
        else:
            by_id[s.event_id] = s
    keys = [(s.encounter, s.data_time, s.observations) for s in by_id.values()]
    assert len(keys) == len(set(keys))  # exactly once after dedupe
    return len(scores) - len(by_id)


async def test_kill_9_mid_stream_then_restart_loses_nothing(
    settings_env: dict[str, Any], tmp_path: Path, shared_kit: Path
) -> None:
    # Checkpoints every 0.2 s: the kill lands after some, so the restart restores states from the changelog and
    # replays only what came after the last commit. Development mode: no registry runs here, so only the bundled
    # model can score (outside it the scorer fails closed); what is tested is the state's recovery.
    settings = settings_for(settings_env, tmp_path, batch_max_records=40, checkpoint_interval_s=0.2, development=True)
    await ensure_topics(settings)
    stays = load_stays(24, first=40, data=shared_kit / "data" / "physionet2019_setA.parquet")
    events = events_of(stays)
    await publish(settings.kafka, settings.topics.observations, events)
    expected_rows = len({(s, h) for s, h in zip(stays["patient_id"], stays["hour"], strict=True)})
    async with ScoreReader(settings.kafka, settings.topics.scores_live) as reader:
        first = ScorerProcess(settings, tmp_path, "first")
        try:
            await reader.wait(lambda scores: len(scores) >= expected_rows // 4, timeout=60)
            for _ in range(100):
                saved = await end_offsets(settings.kafka, settings.topics.scorer_state, settings.partitions)
                if saved:
                    break
                await asyncio.sleep(0.05)
        finally:
            first.kill()
        at_kill = len(reader.scores)
        second = ScorerProcess(settings, tmp_path, "second")
        try:
            await reader.wait(complete(final_observations(events)), timeout=75)
            metrics = await second.metrics()
        finally:
            second.stop()
    assert at_kill < expected_rows  # killed mid-stream
    restored = [line for line in metrics.splitlines() if line.startswith("vigil_scorer_restored_states_total")]
    assert saved and restored and float(restored[0].rsplit(" ", 1)[1]) > 0  # restored from a checkpoint
    duplicates = check_scores(reader.scores, stays, events)
    print(f"\n[kill -9] scores at kill {at_kill}, total {len(reader.scores)}, redelivered duplicates {duplicates}")
    # The topics are the stack's to create (ensure_topics, the administrator): a FastStream subscriber left to
    # declare its own logged "Failed to create topic" for each of them at every start of a secured service.
    assert "Failed to create topic" not in (tmp_path / "second.log").read_text()


async def test_two_scorers_share_six_partitions_across_a_rebalance(
    settings_env: dict[str, Any], tmp_path: Path, shared_kit: Path
) -> None:
    # Development mode: no registry runs in this test, so only the bundled model can score (outside development
    # mode the scorers would fail closed); what it tests is state following partitions across a rebalance.
    settings = settings_for({**settings_env, "partitions": 6}, tmp_path, batch_max_records=40, development=True)
    await ensure_topics(settings)
    stays = load_stays(24, first=80, data=shared_kit / "data" / "physionet2019_setA.parquet")
    events = events_of(stays)
    half = len(events) // 2
    await publish(settings.kafka, settings.topics.observations, events[:half])
    async with ScoreReader(settings.kafka, settings.topics.scores_live) as reader:
        a = ScorerProcess(settings, tmp_path, "a")
        b: ScorerProcess | None = None
        try:
            await reader.wait(lambda scores: len(scores) >= 50, timeout=60)
            b = ScorerProcess(settings, tmp_path, "b")  # joins mid-stream: the group rebalances
            await b.wait_ready()
            await publish(settings.kafka, settings.topics.observations, events[half:])
            await reader.wait(complete(final_observations(events)), timeout=75)
            metrics_a, metrics_b = await a.metrics(), await b.metrics()
        finally:
            a.stop()
            if b is not None:
                b.stop()
    for text in (metrics_a, metrics_b):
        scored = [line for line in text.splitlines() if line.startswith("vigil_scores_total{")]
        assert scored and float(scored[0].rsplit(" ", 1)[1]) > 0  # both processes scored
    restored = [line for line in metrics_b.splitlines() if line.startswith("vigil_scorer_restored_states_total")]
    assert restored and float(restored[0].rsplit(" ", 1)[1]) > 0  # b took over states a had built
    duplicates = check_scores(reader.scores, stays, events)
    print(f"\n[rebalance] total scores {len(reader.scores)}, redelivered duplicates {duplicates}")
