"""The shadow service against the real broker, end to end with set A stays.

One scenario (it is the expensive part, so it is shared by the claims it proves):

1. 24 set A stays are published as canonical events (in two halves, with a shadow restart in between); the real
   scorer service (the repository's default package 1, production stage, no registry) publishes live scores;
2. the shadow service scores with package 2 and publishes to the shadow topic only;
3. outcomes are published only after all scoring is done (delayed): before, every hour is censored;
4. the published ComparisonSummarized equals the offline computation from ``offline_features`` +
   ``ModelPackage.predict`` on the same rows (AUROC, utility, alert rates, sensitivity);
5. ``vigil shadow replay`` over a data-time range produces the same comparison as the service over that range;
6. the live topic holds only the live scorer's production scores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from tests.factories import AUTH
from vigil_contracts import events as ev
from vigil_contracts.access import Principal
from vigil_runtime.kafka import ensure_topics
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.producer import AckedProducer
from vigil_scorer.app import create_app as create_scorer_app
from vigil_scorer.settings import Settings as ScorerSettings
from vigil_scoring.features import offline_features
from vigil_scoring.model_package import ModelPackage, default_package_path
from vigil_scoring.physionet import ICU_EPOCH, sepsis_onset_hour, stay_events
from vigil_scoring.scoring import ScoringCore
from vigil_scoring.utility import normalized_utility
from vigil_shadow import logscan
from vigil_shadow.app import create_app
from vigil_shadow.compare import CompareConfig
from vigil_shadow.replay import ReplayRequest, run_replay
from vigil_shadow.settings import Settings

N_SEPTIC, N_OTHER = 8, 16


def _stays(kit: Path) -> pd.DataFrame:
    path = kit / "data" / "physionet2019_setA.parquet"
    index = pq.read_table(path, columns=["patient_id", "hour", "SepsisLabel"]).to_pandas()
    sizes = index.groupby("patient_id")["hour"].size()
    septic = index.groupby("patient_id")["SepsisLabel"].max()
    short = sizes[(sizes >= 20) & (sizes <= 48)].index
    chosen = list(septic[short][septic[short] == 1].index[:N_SEPTIC]) + list(
        septic[short][septic[short] == 0].index[:N_OTHER]
    )
    return pq.read_table(path, filters=[("patient_id", "in", chosen)]).to_pandas()


def _offline_risk(package: ModelPackage, rows: pd.DataFrame) -> np.ndarray:
    """What ``vigil model predict`` computes for these rows (its core function when installed)."""
    try:
        from vigil_ml.predict import predict_rows
    except ImportError:  # the same definition: shared offline features, then the package's ONNX session
        return package.predict(offline_features(rows).to_numpy(np.float32))
    return predict_rows(package, rows)["risk"].to_numpy()


def _encounter(pid: str) -> str:
    return f"enc-{pid}"


def _admission(i: int) -> Any:
    return ICU_EPOCH + timedelta(hours=3 * i)


async def _consume_all(kafka: KafkaConnection, topic: str) -> list[Any]:
    return [r async for chunk in logscan.read_until(kafka, topic) for r in chunk]


async def _until(predicate: Any, what: str, attempts: int = 600) -> None:
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def _approx_equal(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys differ"
        for k in a:
            _approx_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _approx_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


async def test_shadow_compares_with_live_like_offline_and_like_replay(
    shared_kit: Path,
    settings_env: dict[str, Any],
    tmp_path: Path,
    principal_env: Callable[..., dict[str, str]],
    kafka_as: Callable[[str, str], KafkaConnection],
) -> None:
    test_started = datetime.now(UTC)
    df = _stays(shared_kit)
    pids = sorted(df["patient_id"].unique())
    settings = Settings(
        **settings_env,
        group_id=f"shadow-{uuid.uuid4().hex[:8]}",
        registry_url=None,
        local_models=[f"sepsis:2={default_package_path('2')}"],
        publish_every_s=3600,
        bootstrap_iterations=100,
        batch_max_records=400,
    )
    topics = settings.topics
    kafka = settings.kafka
    await ensure_topics(settings)
    live_pkg = ModelPackage.load(default_package_path())
    cand_pkg = ModelPackage.load(default_package_path("2"))

    # Two halves per stay: the shadow service restarts between them and must rebuild its feature state.
    halves: tuple[list[Any], list[Any]] = ([], [])
    for i, pid in enumerate(pids):
        stay = df[df["patient_id"] == pid]
        cut = int(stay["hour"].max() * 2 / 3)
        events = stay_events(stay, encounter=_encounter(pid), patient=pid, icu_admitted_at=_admission(i))
        for e in events:
            late = isinstance(e, ev.ObservationRecorded) and e.observed_at >= _admission(i) + timedelta(hours=cut)
            halves[int(late)].append(e)

    publisher = AckedProducer(settings.kafka, client_id="test-shadow-feeder")
    await publisher.start()
    # The live side is the real scorer service; with no registry answering it scores with the repository's
    # default package in production stage, which needs development mode (outside it, a scorer the
    # registry does not confirm serves nothing). A local core only tells which hours it will score.
    scorer = create_scorer_app(
        ScorerSettings(
            **settings_env,
            development=True,  # no registry answers here: only development mode lets the bundled model score live
            group_id=f"scorer-{uuid.uuid4().hex[:8]}",
            registry_url="http://127.0.0.1:9",
            registry_timeout_s=1.0,
            model_cache_dir=tmp_path / "scorer-models",
        )
    )
    expected = ScoringCore(live_pkg, stage=ev.Stage.PRODUCTION)
    expected_keys: set[tuple[str, int]] = set()
    stack = contextlib.AsyncExitStack()

    async def live_keys() -> set[tuple[str, int]]:
        return {
            (json.loads(r.value)["encounter"], json.loads(r.value)["hour"])
            for r in await _consume_all(kafka, topics.scores_live)
        }

    async def feed(events: list[Any]) -> None:
        await publisher.publish_all(topics.observations, events)
        expected_keys.update((s.encounter, s.hour) for s in expected.score(events))
        for _ in range(240):
            if await live_keys() >= expected_keys:
                return
            await asyncio.sleep(0.25)
        raise AssertionError("the live scorer did not score every hour")

    async def run_service(until_hours: int) -> dict[str, Any]:
        app = create_app(settings)
        service = app.state.shadow
        async with app.router.lifespan_context(app):
            await _until(
                lambda: len(service.join.shadow.get(("sepsis", "2"), {})) >= until_hours, "shadow scores joined"
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shadow", headers=AUTH) as client:
                return {"app": app, "first": (await client.get("/comparisons")).json()}

    try:
        await stack.enter_async_context(scorer.router.lifespan_context(scorer))
        await feed(halves[0])
        first_keys = await live_keys()
        run1 = await run_service(len(first_keys))
        assert run1["first"]["comparisons"], run1
        assert run1["first"]["comparisons"][0]["labelled_hours"] == 0  # no outcome yet: censored, not negative
        await feed(halves[1])
        all_keys = await live_keys()
        assert all_keys == expected_keys
        assert len(all_keys) > len(first_keys)

        # Second run: feature state and join restored from the changelog, read on from there; outcomes arrive late.
        app = create_app(settings)
        service = app.state.shadow
        async with app.router.lifespan_context(app):
            await _until(lambda: len(service.join.shadow.get(("sepsis", "2"), {})) >= len(all_keys), "all hours")
            outcomes = []
            for i, pid in enumerate(pids):
                stay = df[df["patient_id"] == pid]
                onset = sepsis_onset_hour(stay)
                enc = _encounter(pid)
                last = _admission(i) + timedelta(hours=int(stay["hour"].max()) + 1)
                outcomes.append(
                    ev.OutcomeRecorded(
                        event_id=ev.deterministic_id("outcome", enc),
                        occurred_at=last + timedelta(days=2),
                        key=enc,
                        encounter=enc,
                        patient=pid,
                        outcome="sepsis" if onset is not None else "discharged",
                        onset_at=_admission(i) + timedelta(hours=onset) if onset is not None else None,
                        recorded_at=last + timedelta(days=2),
                    )
                )
            await publisher.publish_all(topics.outcomes, outcomes)
            await _until(lambda: len(service.join.outcomes) == len(pids), "outcomes joined")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shadow", headers=AUTH) as client:
                await _until(lambda: service.join_rebuilt, "join rebuilt")
                # The join came back from the changelog and was read on from the first run's positions: the
                # second run reads fewer records than the join's topics hold (the comparisons below check it).
                assert service.join_log.restored_encounters == len(pids)
                assert service.join_reader.started_from
                held = sum(end for end in (await logscan.end_offsets(kafka, service.join_reader.topics)).values())
                assert 0 < service.join_reader.records_read < held, (service.join_reader.records_read, held)
                ready = await client.get("/ready")
                assert ready.status_code == 200, ready.text
                published = (await client.post("/comparisons/publish")).json()["published"]
                window = {
                    "from": (ICU_EPOCH + timedelta(hours=20)).isoformat(),
                    "to": (ICU_EPOCH + timedelta(hours=60)).isoformat(),
                }
                windowed = (await client.get("/comparisons", params=window)).json()["comparisons"]
                everything = (await client.get("/comparisons")).json()["comparisons"]
                metrics_text = (await client.get("/metrics")).text
            final_shadow = {k: p.probability for k, p in service.join.shadow[("sepsis", "2")].items()}
    finally:
        await stack.aclose()
        await publisher.stop()

    # --- the comparison event on the topic --------------------------------------------------------------
    records = await _consume_all(kafka, topics.comparisons)
    assert len(records) == 1 and records[0].key == b"sepsis"
    summary = ev.ComparisonSummarized.model_validate_json(records[0].value)
    assert summary.event_id == published[0]["event_id"]
    assert (summary.candidate_version, summary.live_version) == ("2", live_pkg.version)
    m = summary.metrics

    # --- offline: the same rows through offline_features + predict ---------------------------------------
    rows = df.assign(encounter=df["patient_id"].map(_encounter)).reset_index(drop=True)
    rows = rows.assign(p_live=_offline_risk(live_pkg, rows), p_cand=_offline_risk(cand_pkg, rows))
    rows = rows[[(e, int(h)) in all_keys for e, h in zip(rows["encounter"], rows["hour"], strict=True)]]
    rows = rows.sort_values(["encounter", "hour"], kind="stable")
    # The shadow's final score of every hour is the offline prediction of that hour's row (restart included).
    offline_cand = {(e, int(h)): p for e, h, p in zip(rows["encounter"], rows["hour"], rows["p_cand"], strict=True)}
    assert set(final_shadow) == set(offline_cand)
    assert max(abs(final_shadow[k] - offline_cand[k]) for k in offline_cand) < 1e-6
    y = rows["SepsisLabel"].to_numpy()
    codes = pd.factorize(rows["encounter"])[0]
    threshold_live, threshold_cand = live_pkg.thresholds["operating"], cand_pkg.thresholds["operating"]
    a_live, a_cand = rows["p_live"].to_numpy() >= threshold_live, rows["p_cand"].to_numpy() >= threshold_cand
    assert summary.scored_hours == summary.labelled_hours == len(rows)
    assert summary.labelled_encounters == len(pids)
    assert summary.positive_encounters == N_SEPTIC
    assert m["live"]["auroc"] == pytest.approx(roc_auc_score(y, rows["p_live"]), abs=1e-9)
    assert m["candidate"]["auroc"] == pytest.approx(roc_auc_score(y, rows["p_cand"]), abs=1e-9)
    assert m["live"]["utility"] == pytest.approx(normalized_utility(codes, y, a_live), abs=1e-9)
    assert m["candidate"]["utility"] == pytest.approx(normalized_utility(codes, y, a_cand), abs=1e-9)
    assert m["live"]["alert_rate"] == pytest.approx(a_live.mean(), abs=1e-12)
    assert m["candidate"]["alert_rate"] == pytest.approx(a_cand.mean(), abs=1e-12)
    assert m["candidate"]["sensitivity"] == pytest.approx(a_cand[y == 1].mean(), abs=1e-12)
    assert m["agreement"] == pytest.approx((a_live == a_cand).mean(), abs=1e-12)
    assert m["auroc_diff"]["ci_low"] <= m["auroc_diff"]["estimate"] <= m["auroc_diff"]["ci_high"]
    assert set(m["subgroups"]) == {"sex", "age_band", "unit"}
    assert 'vigil_shadow_comparison{metric="auroc_candidate",model="sepsis",version="2"}' in metrics_text

    # --- replay over a data-time range equals the service's comparison over that range -------------------
    report, out = tmp_path / "replay.html", tmp_path / "replay.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from vigil_shadow.cli import app; app()",
        "replay",
        "--from",
        window["from"],
        "--to",
        window["to"],
        "--model",
        f"sepsis:2={default_package_path('2')}",
        "--report",
        str(report),
        "--json",
        str(out),
        "--bootstrap-servers",
        kafka.bootstrap_servers,
        "--topic-prefix",
        settings.topic_prefix,
        "--bootstrap-iterations",
        "100",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Replay reads as the analyst principal: observations, live scores and outcomes, and nothing else.
        env={**os.environ, **principal_env(Principal.ANALYST, settings.topic_prefix, "SHADOW")},
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    replayed = json.loads(out.read_text())["comparisons"]
    assert len(replayed) == 1 and len(windowed) == 1
    assert 0 < windowed[0]["scored_hours"] < summary.scored_hours
    replayed[0].pop("plots")
    _approx_equal(replayed[0], windowed[0])
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 4 and "AUROC" in page

    # --- replay by arrival time (Kafka record timestamps, offsets_for_times) over the whole test --------------
    arrival = await run_replay(
        ReplayRequest(
            start=test_started - timedelta(minutes=5),
            end=datetime.now(UTC) + timedelta(minutes=5),
            models=[f"sepsis:2={default_package_path('2')}"],
            kafka=kafka_as(Principal.ANALYST, settings.topic_prefix),
            topic_prefix=settings.topic_prefix,
            warmup_hours=0.0,
            time_basis="arrival",
            config=CompareConfig.from_settings(settings),
        )
    )
    assert len(arrival.comparisons) == 1
    _approx_equal(arrival.comparisons[0].summary(), everything[0])

    # --- nothing but production-stage live scores on the live topic ---------------------------------------
    live_records = await _consume_all(kafka, topics.scores_live)
    assert {(json.loads(r.value)["stage"], json.loads(r.value)["model_version"]) for r in live_records} == {
        ("production", live_pkg.version)
    }
    shadow_records = await _consume_all(kafka, topics.scores_shadow)
    assert shadow_records and {json.loads(r.value)["stage"] for r in shadow_records} == {"shadow"}
    assert not math.isnan(m["candidate"]["ece"])
