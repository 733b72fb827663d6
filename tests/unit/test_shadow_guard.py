"""No path from the shadow service to the live topic: settings, publisher, catalog and engine each refuse."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tests import factories
from vigil_contracts import events as ev
from vigil_runtime.metrics import ServiceMetrics
from vigil_scoring.features import FEATURE_COLUMNS
from vigil_shadow.app import ShadowService
from vigil_shadow.catalog import Catalog, ModelRefused, ShadowModel
from vigil_shadow.engine import ShadowCore
from vigil_shadow.guard import ShadowScorePublisher, ShadowStageRefused
from vigil_shadow.settings import LiveTopicRefused, Settings


class FakePackage:
    columns = FEATURE_COLUMNS

    def __init__(self, version: str, offset: float = 0.0) -> None:
        self.name = "sepsis"
        self.version = version
        self.thresholds = {"operating": 0.5, "medium": 0.5, "high": 0.8}
        self.offset = offset
        self.calls = 0

    def predict(self, X: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.full(len(X), 0.25 + self.offset)

    def risk_level(self, p: float) -> str:
        return "low"


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[ev.RiskScored]]] = []

    async def __call__(self, topic: str, scores: Sequence[ev.RiskScored]) -> None:
        self.sent.append((topic, list(scores)))


def test_settings_refuse_the_live_topic_as_shadow_output(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="live score topic"):
        Settings(topic_prefix="x.", output_topic="x.scores.live")
    monkeypatch.setenv("SHADOW_OUTPUT_TOPIC", "vigil.scores.live")
    with pytest.raises(ValidationError, match="live score topic"):
        Settings()
    monkeypatch.setenv("SHADOW_OUTPUT_TOPIC", "vigil.scores.shadow")
    assert Settings().shadow_topic == "vigil.scores.shadow"


def test_a_service_built_from_unvalidated_settings_still_refuses_the_live_topic() -> None:
    settings = Settings.model_construct(output_topic="vigil.scores.live", registry_url=None)
    sink = Sink()

    class FakePublisher:
        publish_all = sink

    with pytest.raises(LiveTopicRefused):
        ShadowService(settings, metrics=ServiceMetrics("shadow"), publisher=FakePublisher())  # type: ignore[arg-type]
    assert sink.sent == []


async def test_publisher_refuses_live_topic_and_production_scores() -> None:
    sink = Sink()
    with pytest.raises(LiveTopicRefused):
        ShadowScorePublisher(sink, topic="vigil.scores.live", live_topic="vigil.scores.live")
    publisher = ShadowScorePublisher(sink, topic="vigil.scores.shadow", live_topic="vigil.scores.live")
    with pytest.raises(ShadowStageRefused):
        await publisher.publish([factories.score(stage=ev.Stage.SHADOW), factories.score(stage=ev.Stage.PRODUCTION)])
    assert sink.sent == []  # the whole batch is refused, nothing half-published
    publisher.topic = "vigil.scores.live"  # a later mutation is caught at use
    with pytest.raises(LiveTopicRefused):
        await publisher.publish([factories.score(stage=ev.Stage.SHADOW)])
    assert sink.sent == []
    publisher.topic = "vigil.scores.shadow"
    await publisher.publish([factories.score(stage=ev.Stage.SHADOW)])
    assert [t for t, _ in sink.sent] == ["vigil.scores.shadow"]


class FakeRegistry:
    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    async def versions(self, name: str) -> list[dict[str, Any]]:
        return self.records

    async def load(self, record: dict[str, Any]) -> FakePackage:
        return FakePackage(str(record["version"]))

    async def aclose(self) -> None:
        return None


async def test_catalog_loads_shadow_stage_versions_only() -> None:
    registry = FakeRegistry(
        [
            {"model_name": "sepsis", "version": "1", "stage": "production"},
            {"model_name": "sepsis", "version": "2", "stage": "shadow"},
            {"model_name": "sepsis", "version": "3", "stage": "archived"},
        ]
    )
    seen: list[list[tuple[str, str]]] = []
    catalog = Catalog(
        model_names=["sepsis"],
        local_models=[],
        registry=registry,  # type: ignore[arg-type]
        on_change=lambda models: seen.append(sorted(models)),
    )
    await catalog.refresh()
    assert sorted(catalog.models) == [("sepsis", "2")]
    with pytest.raises(ModelRefused):
        catalog.add(ShadowModel("sepsis", "1", FakePackage("1"), ev.Stage.PRODUCTION, "misconfigured"))
    registry.records[1]["stage"] = "production"  # promoted: it leaves the shadow scorer
    await catalog.refresh()
    assert catalog.models == {}
    assert seen == [[("sepsis", "2")], []]


def test_engine_scores_every_candidate_in_shadow_stage_only() -> None:
    a, b = FakePackage("2"), FakePackage("3", offset=0.5)
    core = ShadowCore({("sepsis", "2"): a, ("sepsis", "3"): b})
    with pytest.raises(ModelRefused):
        core.set_models({("sepsis", "2"): a}, stage=ev.Stage.PRODUCTION)
    events: list[Any] = [
        factories.encounter(),
        factories.observation(feature="age", value=60.0, unit="a"),
        factories.observation(source=factories.source(resource_id="hr"), value=90.0),
    ]
    warm = core.warm(events[:2])
    assert warm.scores == [] and warm.applied == 2
    scores = core.score(events[2:])
    assert {(s.model_version, s.stage) for s in scores} == {("2", ev.Stage.SHADOW), ("3", ev.Stage.SHADOW)}
    assert a.calls == b.calls == 1  # one vectorised call per candidate per batch
    assert {s.model_version: s.alert for s in scores} == {"2": False, "3": True}
    core.set_models({})
    assert core.score([factories.observation(source=factories.source(resource_id="hr2"), value=91.0)]) == []


async def test_a_lifecycle_event_of_a_watched_model_refreshes_the_candidates() -> None:
    sink = Sink()

    class FakePublisher:
        publish_all = sink

    service = ShadowService(
        Settings(registry_url=None),
        metrics=ServiceMetrics("shadow"),
        publisher=FakePublisher(),  # type: ignore[arg-type]
    )
    registry = FakeRegistry([{"model_name": "sepsis", "version": "2", "stage": "shadow"}])
    service.catalog.registry = registry  # type: ignore[assignment]
    await service.on_lifecycle(factories.lifecycle(model_name="other", to_stage=ev.Stage.SHADOW))
    assert service.core.models == {}
    await service.on_lifecycle(factories.lifecycle(model_version="2", from_stage=None, to_stage=ev.Stage.SHADOW))
    assert list(service.core.models) == [("sepsis", "2")]
    registry.records[0]["stage"] = "production"
    await service.on_lifecycle(factories.lifecycle(model_version="2"))
    assert service.core.models == {}
