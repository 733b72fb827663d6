"""The shadow service and the registry agree: candidates come from the registry's real API, and the comparison
carries exactly the keys the registry's promotion policy reads."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from tests import factories
from tests.factories import T0
from tests.unit.test_registry_api import SCI, TOKENS, settings_for
from vigil_contracts import events as ev
from vigil_registry.app import create_app
from vigil_registry.artifacts import pack_folder
from vigil_registry.policy import PromotionPolicy, evaluate
from vigil_scoring.model_package import ModelPackage, default_package_path
from vigil_shadow.catalog import Catalog, RegistryReader
from vigil_shadow.compare import CompareConfig, compare
from vigil_shadow.join import JoinState


async def test_candidates_are_the_registry_shadow_versions(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path))
    with TestClient(app) as client:
        for version in ("1", "2"):
            archive = pack_folder(default_package_path(version))
            response = client.post(
                "/models/sepsis/versions", content=archive, headers={**SCI, "Content-Type": "application/gzip"}
            )
            assert response.status_code == 201, response.text
        response = client.post(
            "/models/sepsis/versions/2/stage", json={"to": "shadow", "reason": "candidate"}, headers=SCI
        )
        assert response.status_code == 200, response.text
        reader = RegistryReader(
            "http://registry.test:8005",
            token=next(iter(TOKENS)),
            timeout=10.0,
            cache_dir=tmp_path / "cache",
            transport=httpx.ASGITransport(app=app),
        )
        catalog = Catalog(model_names=["sepsis"], local_models=[], registry=reader)
        try:
            models = await catalog.refresh()
            record = await reader.version("sepsis", "1")  # replay may fetch any stage by name and version
            assert record is not None and record["stage"] == "registered"
            replayable = await reader.load(record)
            assert await reader.version("sepsis", "9") is None
        finally:
            await reader.aclose()
    assert sorted(models) == [("sepsis", "2")]  # version 1 is only registered: not a shadow candidate
    loaded = models[("sepsis", "2")].package
    assert isinstance(loaded, ModelPackage)
    assert loaded.sha256 == ModelPackage.load(default_package_path("2")).sha256
    assert (replayable.name, replayable.version) == ("sepsis", "1")


def test_the_policy_finds_every_key_it_reads_in_a_comparison() -> None:
    state = JoinState()
    for i in range(12):
        enc = f"e{i}"
        state.add(factories.observation(encounter=enc, key=enc, feature="sex", value=float(i % 2), unit="1"))
        for h in range(10):
            t = T0 + timedelta(hours=h)
            septic_hour = i % 3 == 0 and h >= 4
            for stage, version, p in (
                (ev.Stage.PRODUCTION, "1", 0.45),
                (ev.Stage.SHADOW, "2", 0.6 if septic_hour else 0.2),
            ):
                p = p + 0.01 * h
                state.add(
                    factories.score(
                        encounter=enc,
                        hour=h,
                        data_time=t,
                        probability=p,
                        alert=p >= 0.5,
                        threshold=0.5,
                        model_version=version,
                        stage=stage,
                    )
                )
        outcome = (
            factories.outcome(encounter=enc, key=enc, onset_at=T0 + timedelta(hours=10))
            if i % 3 == 0
            else factories.outcome(encounter=enc, key=enc, outcome="discharged", onset_at=None)
        )
        state.add(outcome)
    comparison = compare(state, "sepsis", "2", config=CompareConfig(bootstrap_iterations=50, min_subgroup_positives=1))
    event = comparison.to_event().model_dump(mode="json")
    report = evaluate(
        PromotionPolicy(
            min_shadow_hours=0, min_labelled_outcomes=0, max_alert_rate_ratio=10.0, max_calibration_error=1.0
        ),
        model_name="sepsis",
        version="2",
        comparison=event,
        live_version="1",
        registry_outcomes=12,
        open_critical_alerts=[],
    )
    by_name = {c.name: c for c in report.criteria}
    assert not [c.name for c in report.criteria if "missing" in c.detail]
    assert by_name["auroc_diff_ci_low"].observed == {
        k: event["metrics"]["auroc_diff"][k] for k in ("estimate", "ci_low", "ci_high")
    }
    assert by_name["calibration_error"].observed == event["metrics"]["candidate"]["ece"]
    assert by_name["disparity_ratio"].observed == event["metrics"]["candidate"]["disparity_ratio"] == 1.0
    assert by_name["alert_rate_ratio"].observed == event["metrics"]["alert_rate_ratio"]
    assert by_name["comparison_against_live"].passed
    assert report.eligible, report.as_dict()
