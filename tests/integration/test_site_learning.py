"""Learning at the site on the real broker: stays and outcomes streamed -> ``vigil dataset build`` -> rows equal to
the stays' PhysioNet rows -> ``vigil model adapt`` -> a shadow candidate registered with its lineage, and the
registry's adaptation policy saying when that is due."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from fastapi.testclient import TestClient

from tests.conftest import kafka_settings
from tests.factories import T0, stay_stream
from tests.integration.test_registry_kafka import produce, registry_settings, wait_for
from tests.unit.test_registry_api import ADMIN, SCI
from tests.unit.test_site_dataset import assert_same_rows
from vigil.adapt_loop import register_candidate
from vigil.dataset import DatasetSettings, build
from vigil.kafka_local import LocalCluster
from vigil_contracts.topics import Topic
from vigil_ml.adapt import AdaptConfig, adapt
from vigil_ml.data import SAMPLE_PATH
from vigil_registry.app import create_app
from vigil_registry.artifacts import pack_folder
from vigil_runtime.kafka import ensure_topics
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.registry_client import RegistryClient
from vigil_scoring.model_package import ModelPackage, default_package_path
from vigil_scoring.site_dataset import Window


def site_stays(n_plain: int, n_septic: int) -> list[pd.DataFrame]:
    df = pd.read_parquet(SAMPLE_PATH)
    flags = df.groupby("patient_id")["SepsisLabel"].max()
    ids = sorted(flags.index[flags == 0])[:n_plain] + sorted(flags.index[flags == 1])[:n_septic]
    return [df[df["patient_id"] == pid].reset_index(drop=True) for pid in ids]


async def as_scientist(app: Any, package_dir: Path) -> dict[str, Any]:
    """The adaptation job's registration, through the runtime's registry client into the app in process."""
    token = SCI["Authorization"].removeprefix("Bearer ")
    registry: RegistryClient[Any] = RegistryClient("http://registry", token=token, transport=httpx.ASGITransport(app))
    try:
        return await register_candidate(registry, package_dir, name="sepsis", reason="site adaptation")
    finally:
        await registry.aclose()


def test_streamed_outcomes_become_a_shadow_candidate_with_lineage(
    kafka_cluster: LocalCluster,
    kafka: KafkaConnection,
    kafka_as: Callable[[str, str], KafkaConnection],
    settings_env: dict[str, Any],
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    asyncio.run(ensure_topics(DatasetSettings(**settings_env), [Topic.OBSERVATIONS, Topic.OUTCOMES]))
    # The dataset job reads as the analyst principal: its ACLs read observations and outcomes, nothing else.
    analyst = kafka_as("analyst", topic_prefix)
    settings = DatasetSettings(
        **{**settings_env, **kafka_settings(analyst, kafka_cluster.secrets.password_file("analyst"))}
    )
    assert settings.kafka.username == "analyst"
    stays = site_stays(60, 20)
    events: list[Any] = []
    outcomes: list[Any] = []
    for i, stay in enumerate(stays):
        e, o = stay_stream(stay, str(stay["patient_id"].iloc[0]), admitted=T0 + timedelta(hours=i))
        events += e
        outcomes += o
    # Two more stays whose outcome is not known yet: streamed, but left out of the dataset.
    for j, stay in enumerate(site_stays(62, 0)[60:]):
        e, _ = stay_stream(stay, f"pending-{j}", admitted=T0 + timedelta(hours=100 + j), with_outcome=False)
        events += e
    asyncio.run(produce(kafka, settings.topics.observations, events))
    asyncio.run(produce(kafka, settings.topics.outcomes, outcomes))

    manifest = build(tmp_path / "dataset", settings=settings, window=Window())
    rows = pd.read_parquet(tmp_path / "dataset" / "rows.parquet")
    assert_same_rows(rows, stays)
    assert manifest["stays"] == 82 and manifest["labelled_stays"] == 80 and manifest["septic_stays"] == 20
    assert manifest["source"]["unparsed_records"] == 0 and manifest["source"]["observation_records"] == len(events)

    cfg = AdaptConfig(name="sepsis", version="site-1", min_local_septic=10, min_stacked_septic=5, n_boot=20)
    cfg.local_hgb.update(max_iter=10)
    cfg.hgb.update(max_iter=10)  # the local-only model uses the full-size hyperparameters: bounded here
    cfg.local_max_iter = 10
    manifest_path = tmp_path / "dataset" / "manifest.json"
    res = adapt(default_package_path(), rows, tmp_path / "adapt", config=cfg, manifest_path=manifest_path)
    for fitted in res.fitted_ids.values():
        assert not fitted & res.selection_ids

    with TestClient(create_app(registry_settings(settings_env, tmp_path))) as client:
        base = ModelPackage.load(default_package_path())
        client.headers.update(SCI)
        uploaded = client.post(
            "/models/sepsis/versions", content=pack_folder(base.path), headers={"Content-Type": "application/gzip"}
        )
        assert uploaded.status_code == 201, uploaded.text
        client.headers.update(ADMIN)
        assert client.put("/models/sepsis/policy", json={"adapt_min_new_stays": 50}).status_code == 200
        client.headers.update(SCI)
        # The registry consumes the outcomes topic itself: the 80 outcomes make adaptation due by its policy.
        asyncio.run(
            wait_for(lambda: client.get("/models/sepsis/adaptation").json()["due"], "adaptation due", timeout=90)
        )
        assert client.get("/models/sepsis/adaptation").json()["new_labelled_stays"] == 80

        staged = asyncio.run(as_scientist(client.app, res.package_dir))
        assert staged["version"] == "site-1" and staged["stage"] == "shadow"
        lineage = client.get("/models/sepsis/versions/site-1").json()["lineage"]
        assert lineage["base"]["sha256"] == base.sha256
        assert lineage["dataset"]["manifest_sha256"] == hashlib.sha256(manifest_path.read_bytes()).hexdigest()
        assert lineage["dataset"]["content_sha256"] == manifest["content_sha256"]
        verdict = client.get("/models/sepsis/adaptation").json()
        assert verdict["due"] is False and verdict["new_labelled_stays"] == 0  # counted from the new candidate
        actions = [(a["action"], a["actor"]) for a in client.get("/audit", params={"model": "sepsis"}).json()]
        assert ("policy_changed", "root-admin") in actions
        site_actions = [
            a["action"] for a in client.get("/audit", params={"model": "sepsis", "version": "site-1"}).json()
        ]
        assert site_actions[0] == "registered" and len(site_actions) == 2
        # The service principal may register and stage but never approve its own candidate (four eyes).
        assert client.post("/models/sepsis/versions/site-1/approve", json={"reason": "self"}).status_code == 403
