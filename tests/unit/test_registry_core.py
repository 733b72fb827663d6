"""The registry's core on a real database: the whole state machine, every forbidden transition, the four-eyes
rule, evidence-driven promotion and rollback, the outbox, and a tampered audit entry detected.

These tests run on SQLite here; tests/integration/test_registry_postgres.py runs the very same functions on a
real PostgreSQL server by overriding the ``database_url`` fixture.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from tests import factories
from tests.pg import make_package
from vigil_contracts.events import (
    LifecycleAction,
    ModelLifecycleChanged,
    Severity,
    Stage,
    deterministic_id,
)
from vigil_registry.artifacts import ArtifactStore, package_digest
from vigil_registry.auth import Principal
from vigil_registry.core import Registry
from vigil_registry.db import make_engine, migrate
from vigil_registry.errors import Conflict, Forbidden, InvalidPackage, NotEligible, NotFound
from vigil_registry.models import ModelVersion

SCIENTIST = Principal("dana", "data_scientist")
SCIENTIST_2 = Principal("sam", "data_scientist")
APPROVER = Principal("dr-alice", "clinical_approver")
APPROVER_2 = Principal("dr-bob", "clinical_approver")
ADMIN = Principal("root-admin", "admin")
VIEWER = Principal("vic", "viewer")

FAST_POLICY = {"min_shadow_hours": 24.0, "min_labelled_outcomes": 3}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


def make_registry(database_url: str, tmp_path: Path) -> Registry:
    """A migrated database and a core over it (no Kafka, no HTTP)."""
    migrate(database_url)
    engine = make_engine(database_url)
    return Registry(
        engine,
        ArtifactStore(tmp_path / "artifacts"),
        artifact_url=lambda n, v: f"http://registry.test/models/{n}/versions/{v}/artifact",
    )


@pytest.fixture
def registry(database_url: str, tmp_path: Path) -> Iterator[Registry]:
    core = make_registry(database_url, tmp_path)
    yield core
    core.engine.dispose()


def good_metrics(**override: Any) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "auroc_diff": {"estimate": 0.03, "ci_low": 0.01, "ci_high": 0.05},
        "candidate": {"auroc": 0.84, "ece": 0.04, "disparity_ratio": 1.1, "alert_rate": 0.11},
        "live": {"auroc": 0.81, "ece": 0.05, "disparity_ratio": 1.12, "alert_rate": 0.10},
        "alert_rate_ratio": 1.1,
    }
    metrics.update(override)
    return metrics


def comparison(version: str = "2", live: str = "1", n: int = 1, **override: Any) -> Any:
    fields: dict[str, Any] = {
        "event_id": deterministic_id("cmp", version, live, n),
        "candidate_version": version,
        "live_version": live,
        "shadow_hours": 48.0,
        "labelled_encounters": 50,
        "metrics": good_metrics(),
    }
    fields.update(override)
    return factories.comparison(**fields)


def outcomes(n: int, start: int = 0) -> list[Any]:
    return [factories.outcome(event_id=deterministic_id("outcome", i), encounter=f"enc-{i}") for i in range(start, n)]


def register(registry: Registry, tmp_path: Path, version: str, name: str = "sepsis") -> None:
    registry.register_folder(SCIENTIST, make_package(tmp_path, name=name, version=version))


def to_production_first(registry: Registry, tmp_path: Path, version: str = "1") -> None:
    """The model's first production version: no live model to compare with, approval decides."""
    register(registry, tmp_path, version)
    registry.set_stage(SCIENTIST, "sepsis", version, Stage.SHADOW)
    registry.propose(SCIENTIST, "sepsis", version)
    registry.approve(APPROVER, "sepsis", version)
    registry.promote(APPROVER, "sepsis", version, "first production version")


def candidate_ready(registry: Registry, tmp_path: Path, version: str = "2", live: str = "1") -> None:
    """A shadow candidate with good evidence and enough outcomes."""
    registry.set_policy(ADMIN, "sepsis", FAST_POLICY)
    register(registry, tmp_path, version)
    registry.set_stage(SCIENTIST, "sepsis", version, Stage.SHADOW)
    registry.handle_outcomes(outcomes(5))
    registry.handle_comparison(comparison(version, live))


def lifecycle_events(registry: Registry) -> list[ModelLifecycleChanged]:
    return [ModelLifecycleChanged.model_validate_json(row.payload) for row in registry.pending_events(1000)]


# --- registration --------------------------------------------------------------------------------


def test_register_stores_package_by_digest_with_lineage_audit_and_event(registry: Registry, tmp_path: Path) -> None:
    folder = make_package(tmp_path, version="1")
    public = registry.register_folder(SCIENTIST, folder, tags=["candidate"])
    assert public.stage == Stage.REGISTERED
    assert public.package_sha256 == package_digest(folder)
    assert (registry.store.path(public.package_sha256) / "model.onnx").read_bytes() == (
        folder / "model.onnx"
    ).read_bytes()
    assert public.lineage["training_data_sha256"] == "ab" * 32
    assert public.lineage["parameters"] == {"max_depth": 4}
    assert public.metrics == {"auroc": 0.81, "ece": 0.03}
    assert public.tags == ["candidate", "hgb", "sepsis"]
    assert public.input_schema["columns"] == ["heart_rate", "temperature", "lactate"]
    assert public.feature_set_version == "fs-1"
    [entry] = registry.audit_log("sepsis")
    assert (entry.action, entry.actor, entry.role, entry.to_stage) == (
        "registered",
        "dana",
        "data_scientist",
        "registered",
    )
    [event] = lifecycle_events(registry)
    assert event.action == LifecycleAction.REGISTERED
    assert event.artifact_sha256 == public.artifact_sha256
    assert event.artifact_url == "http://registry.test/models/sepsis/versions/1/artifact"
    assert event.key == "sepsis"
    assert event.audit_id == entry.seq


def test_registering_the_same_package_again_is_idempotent_other_content_conflicts(
    registry: Registry, tmp_path: Path
) -> None:
    folder = make_package(tmp_path, version="1")
    first = registry.register_folder(SCIENTIST, folder)
    again = registry.register_folder(SCIENTIST, folder)
    assert again.package_sha256 == first.package_sha256
    assert len(registry.audit_log("sepsis")) == 1
    other = make_package(tmp_path, version="1", onnx=b"different bytes")
    with pytest.raises(Conflict, match="already exists with different content"):
        registry.register_folder(SCIENTIST, other)


def test_a_package_whose_digest_does_not_match_is_refused(registry: Registry, tmp_path: Path) -> None:
    folder = make_package(tmp_path, version="1")
    (folder / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(InvalidPackage, match="sha256"):
        registry.register_folder(SCIENTIST, folder)
    with pytest.raises(NotFound):
        registry.show_model("sepsis")


# --- the state machine ---------------------------------------------------------------------------


def test_whole_lifecycle_promotion_rollback_and_retirement(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    assert registry.production("sepsis").version == "1"
    candidate_ready(registry, tmp_path, "2", "1")
    registry.propose(SCIENTIST, "sepsis", "2", "better AUROC in shadow")
    registry.approve(APPROVER, "sepsis", "2", "reviewed")
    promoted = registry.promote(APPROVER, "sepsis", "2", "met policy")
    assert promoted.stage == Stage.PRODUCTION
    assert promoted.replaced_version == "1"
    assert registry.get_version("sepsis", "1").stage == Stage.ARCHIVED
    assert registry.show_model("sepsis").production_version == "2"

    restored = registry.rollback(APPROVER_2, "sepsis", "AUROC dropped")
    assert restored.version == "1"
    assert restored.stage == Stage.PRODUCTION
    assert registry.get_version("sepsis", "2").stage == Stage.ARCHIVED

    retired = registry.retire(ADMIN, "sepsis", "2", "superseded; accuracy degraded")
    assert retired.stage == Stage.RETIRED
    assert retired.retired_reason == "superseded; accuracy degraded"
    # Retired, it keeps its card, metrics and audit trail.
    kept = registry.get_version("sepsis", "2")
    assert kept.card["description"] == "Sepsis risk within 6 hours"
    assert kept.metrics["auroc"] == 0.81
    assert [e.action for e in registry.audit_log("sepsis", "2")][-1] == "retired"
    history = registry.history("sepsis", "2")
    assert [c["event_id"] for c in history["comparisons"]] == [deterministic_id("cmp", "2", "1", 1)]
    assert history["stage"] == "retired" and history["outcomes_labelled"] == 5

    actions = [(e.model_version, e.action.value, e.to_stage.value) for e in lifecycle_events(registry)]
    assert actions == [
        ("1", "registered", "registered"),
        ("1", "stage_changed", "shadow"),
        ("1", "promoted", "production"),
        ("2", "registered", "registered"),
        ("2", "stage_changed", "shadow"),
        ("2", "promoted", "production"),
        ("1", "stage_changed", "archived"),
        ("1", "rolled_back", "production"),
        ("2", "stage_changed", "archived"),
        ("2", "retired", "retired"),
    ]
    entries = registry.audit_log("sepsis")
    assert {"proposed", "approved", "policy_changed"} <= {e.action for e in entries}
    assert registry.verify_audit().ok


STAGES = (Stage.REGISTERED, Stage.SHADOW, Stage.PRODUCTION, Stage.ARCHIVED, Stage.RETIRED)


def put_in_stage(registry: Registry, tmp_path: Path, stage: Stage) -> str:
    """A version named after its stage ('v-shadow'...), brought there by allowed moves only."""
    version = f"v-{stage.value}"
    register(registry, tmp_path, version)
    if stage in (Stage.SHADOW, Stage.PRODUCTION):
        registry.set_stage(SCIENTIST, "sepsis", version, Stage.SHADOW)
    if stage == Stage.PRODUCTION:
        registry.propose(SCIENTIST, "sepsis", version)
        registry.approve(APPROVER, "sepsis", version)
        registry.promote(APPROVER, "sepsis", version)
    if stage == Stage.ARCHIVED:
        registry.set_stage(SCIENTIST, "sepsis", version, Stage.ARCHIVED)
    if stage == Stage.RETIRED:
        registry.retire(ADMIN, "sepsis", version, "withdrawn")
    assert registry.get_version("sepsis", version).stage == stage
    return version


OPERATIONS = (
    "to_shadow",
    "to_archived",
    "to_production",
    "to_retired",
    "to_registered",
    "propose",
    "promote",
    "retire",
)
ALLOWED = {
    (Stage.REGISTERED, "to_shadow"),
    (Stage.REGISTERED, "to_archived"),
    (Stage.REGISTERED, "retire"),
    (Stage.SHADOW, "to_archived"),
    (Stage.SHADOW, "propose"),
    (Stage.SHADOW, "retire"),
    (Stage.ARCHIVED, "to_shadow"),
    (Stage.ARCHIVED, "retire"),
}
"""What each stage allows through these calls (promotion of a shadow version needs an approval: tested apart;
production -> archived and archived -> production happen only through promotion of another and rollback)."""


def attempt(registry: Registry, version: str, operation: str) -> None:
    if operation.startswith("to_"):
        registry.set_stage(SCIENTIST, "sepsis", version, Stage(operation[3:]), "test")
    elif operation == "propose":
        registry.propose(SCIENTIST, "sepsis", version)
    elif operation == "promote":
        registry.promote(APPROVER, "sepsis", version)
    elif operation == "retire":
        registry.retire(ADMIN, "sepsis", version, "test")


@pytest.mark.parametrize("stage", STAGES, ids=[s.value for s in STAGES])
def test_every_transition_from_every_stage(registry: Registry, tmp_path: Path, stage: Stage) -> None:
    version = put_in_stage(registry, tmp_path, stage)
    for operation in OPERATIONS:
        before = registry.get_version("sepsis", version).stage
        audit_before = len(registry.audit_log("sepsis"))
        if (stage, operation) in ALLOWED:
            attempt(registry, version, operation)
            # Undo so the next operation starts from the same stage again (a fresh version).
            version = put_in_stage_again(registry, tmp_path, stage, operation)
            continue
        refused = (Conflict, Forbidden) if operation == "promote" and stage == Stage.SHADOW else Conflict
        with pytest.raises(refused):
            attempt(registry, version, operation)
        assert registry.get_version("sepsis", version).stage == before
        assert len(registry.audit_log("sepsis")) == audit_before, f"a refused {operation} left an audit entry"


_counter = {"n": 0}


def put_in_stage_again(registry: Registry, tmp_path: Path, stage: Stage, _: str) -> str:
    """A new version in ``stage`` (names stay unique); a production one replaces the current."""
    _counter["n"] += 1
    version = f"v-{stage.value}-{_counter['n']}"
    register(registry, tmp_path, version)
    if stage in (Stage.SHADOW, Stage.PRODUCTION):
        registry.set_stage(SCIENTIST, "sepsis", version, Stage.SHADOW)
    if stage == Stage.ARCHIVED:
        registry.set_stage(SCIENTIST, "sepsis", version, Stage.ARCHIVED)
    if stage == Stage.RETIRED:
        registry.retire(ADMIN, "sepsis", version, "withdrawn")
    if stage == Stage.PRODUCTION:
        pytest.fail("no operation is allowed on a production version through these calls")
    return version


def test_production_version_cannot_be_retired_or_archived_directly(registry: Registry, tmp_path: Path) -> None:
    version = put_in_stage(registry, tmp_path, Stage.PRODUCTION)
    with pytest.raises(Conflict, match="promote another version or roll back first"):
        registry.retire(ADMIN, "sepsis", version, "old")
    with pytest.raises(Conflict, match="made by 'replace'"):
        registry.set_stage(SCIENTIST, "sepsis", version, Stage.ARCHIVED)


def test_retired_version_can_no_longer_be_staged(registry: Registry, tmp_path: Path) -> None:
    version = put_in_stage(registry, tmp_path, Stage.RETIRED)
    for target in (Stage.SHADOW, Stage.ARCHIVED):
        with pytest.raises(Conflict, match="retired version can no longer be staged"):
            registry.set_stage(SCIENTIST, "sepsis", version, target)
    with pytest.raises(Conflict, match="retired"):
        registry.retire(ADMIN, "sepsis", version, "again")


def test_retirement_needs_a_reason(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, "1")
    with pytest.raises(Conflict, match="reason"):
        registry.retire(ADMIN, "sepsis", "1", "  ")


def test_rollback_needs_a_previous_production_version_that_is_not_retired(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        registry.rollback(APPROVER, "sepsis", "none")
    to_production_first(registry, tmp_path, "1")
    with pytest.raises(Conflict, match="nothing to roll back to"):
        registry.rollback(APPROVER, "sepsis", "no earlier version")
    candidate_ready(registry, tmp_path, "2", "1")
    registry.propose(SCIENTIST, "sepsis", "2")
    registry.approve(APPROVER, "sepsis", "2")
    registry.promote(APPROVER, "sepsis", "2")
    registry.retire(ADMIN, "sepsis", "1", "withdrawn from use")
    with pytest.raises(Conflict, match="is retired"):
        registry.rollback(APPROVER, "sepsis", "try")
    assert registry.production("sepsis").version == "2"


def test_the_database_itself_allows_one_production_version_per_model(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    register(registry, tmp_path, "2")
    with registry.session() as session, pytest.raises(IntegrityError):
        session.execute(text("UPDATE model_versions SET stage = 'production' WHERE version = '2'"))
        session.commit()


# --- roles and the four-eyes rule --------------------------------------------------------------


def test_roles_are_enforced_with_reasons(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(Forbidden, match="role 'viewer' may not register"):
        registry.register_folder(VIEWER, make_package(tmp_path))
    register(registry, tmp_path, "1")
    with pytest.raises(Forbidden, match="may not stage"):
        registry.set_stage(APPROVER, "sepsis", "1", Stage.SHADOW)
    registry.set_stage(SCIENTIST, "sepsis", "1", Stage.SHADOW)
    with pytest.raises(Forbidden, match="may not propose"):
        registry.propose(APPROVER, "sepsis", "1")
    registry.propose(SCIENTIST, "sepsis", "1")
    for not_clinical in (SCIENTIST_2, ADMIN, VIEWER):
        with pytest.raises(Forbidden, match="may not approve"):
            registry.approve(not_clinical, "sepsis", "1")
    with pytest.raises(Forbidden, match="may not promote"):
        registry.promote(SCIENTIST, "sepsis", "1")
    with pytest.raises(Forbidden, match="may not policy"):
        registry.set_policy(APPROVER, "sepsis", {"auto_promote": True})


def test_four_eyes_the_proposer_cannot_approve(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, "1")
    registry.set_stage(SCIENTIST, "sepsis", "1", Stage.SHADOW)
    # One person holding both roles (two tokens, one user name) is still one pair of eyes.
    registry.propose(Principal("dr-carol", "data_scientist"), "sepsis", "1")
    with pytest.raises(Forbidden, match="four-eyes"):
        registry.approve(Principal("dr-carol", "clinical_approver"), "sepsis", "1")
    with pytest.raises(Forbidden, match="approved by a clinical approver"):
        registry.promote(APPROVER, "sepsis", "1")
    registry.approve(APPROVER, "sepsis", "1")
    assert registry.promote(ADMIN, "sepsis", "1").stage == Stage.PRODUCTION


def test_promotion_without_a_proposal_or_after_rejection_is_refused(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, "1")
    registry.set_stage(SCIENTIST, "sepsis", "1", Stage.SHADOW)
    with pytest.raises(Forbidden):
        registry.promote(APPROVER, "sepsis", "1")
    registry.propose(SCIENTIST, "sepsis", "1")
    with pytest.raises(Conflict, match="already has an open proposal"):
        registry.propose(SCIENTIST, "sepsis", "1")
    registry.reject(APPROVER, "sepsis", "1", "card incomplete")
    with pytest.raises(Forbidden):
        registry.promote(APPROVER, "sepsis", "1")
    with pytest.raises(Conflict, match="no open proposal"):
        registry.approve(APPROVER, "sepsis", "1")
    assert registry.proposals("sepsis")[0].status == "rejected"


# --- evidence-driven policy ----------------------------------------------------------------------


def test_promotion_is_refused_with_the_failing_criteria(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    registry.set_policy(ADMIN, "sepsis", FAST_POLICY)
    register(registry, tmp_path, "2")
    registry.set_stage(SCIENTIST, "sepsis", "2", Stage.SHADOW)
    registry.propose(SCIENTIST, "sepsis", "2")
    registry.approve(APPROVER, "sepsis", "2")
    with pytest.raises(NotEligible) as no_comparison:
        registry.promote(APPROVER, "sepsis", "2")
    assert no_comparison.value.report["failed"] == ["comparison"]

    bad = good_metrics(candidate={"ece": 0.15, "disparity_ratio": 1.4, "alert_rate": 0.2})
    bad["auroc_diff"] = {"estimate": 0.01, "ci_low": -0.01, "ci_high": 0.03}
    bad.pop("alert_rate_ratio")
    registry.handle_outcomes(outcomes(2))
    registry.handle_comparison(comparison("2", "1", metrics=bad, shadow_hours=10.0))
    with pytest.raises(NotEligible) as refused:
        registry.promote(APPROVER, "sepsis", "2")
    report: dict[str, Any] = refused.value.report
    assert report["failed"] == [
        "shadow_duration",
        "labelled_outcomes",
        "auroc_diff_ci_low",
        "calibration_error",
        "disparity_ratio",
        "alert_rate_ratio",
    ]
    by_name = {c["name"]: c for c in report["criteria"]}
    assert by_name["alert_rate_ratio"]["observed"] == pytest.approx(2.0)
    assert by_name["labelled_outcomes"]["observed"] == {"shadow_labelled_encounters": 50.0, "registry_outcomes": 2}
    assert registry.production("sepsis").version == "1"

    registry.handle_outcomes(outcomes(5, start=2))
    registry.handle_comparison(comparison("2", "1", n=2, occurred_at=factories.T0 + timedelta(days=1)))
    assert registry.eligibility("sepsis", "2").eligible
    registry.promote(APPROVER, "sepsis", "2")
    promoted = next(e for e in registry.audit_log("sepsis", "2") if e.action == "promoted")
    evidence = json.loads(promoted.evidence)
    assert evidence["policy"]["eligible"] is True
    assert evidence["approved_by"] == "dr-alice" and evidence["proposed_by"] == "dana"
    assert evidence["policy"]["comparison_event_id"] == deterministic_id("cmp", "2", "1", 2)


def test_a_comparison_against_another_live_version_does_not_count(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    candidate_ready(registry, tmp_path, "2", live="0")
    report = registry.eligibility("sepsis", "2")
    assert report.failed == ["comparison_against_live"]


def test_critical_alert_on_the_candidate_blocks_promotion(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    candidate_ready(registry, tmp_path, "2", "1")
    alert = factories.alert(
        event_id=deterministic_id("a", 1), kind="calibration", severity=Severity.CRITICAL, model_version="2"
    )
    assert registry.handle_alert(alert) == "recorded"
    assert registry.eligibility("sepsis", "2").failed == ["no_open_critical_alerts"]
    resolved = factories.alert(
        event_id=deterministic_id("a", 2),
        kind="calibration",
        severity=Severity.CRITICAL,
        model_version="2",
        state="resolved",
        occurred_at=factories.T0 + timedelta(hours=1),
    )
    registry.handle_alert(resolved)
    assert registry.eligibility("sepsis", "2").eligible


def test_auto_promote_when_approved_and_the_evidence_arrives(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    registry.set_policy(ADMIN, "sepsis", {**FAST_POLICY, "auto_promote": True})
    register(registry, tmp_path, "2")
    registry.set_stage(SCIENTIST, "sepsis", "2", Stage.SHADOW)
    registry.propose(SCIENTIST, "sepsis", "2")
    registry.approve(APPROVER, "sepsis", "2")  # not yet eligible: stays in shadow
    assert registry.get_version("sepsis", "2").stage == Stage.SHADOW
    registry.handle_outcomes(outcomes(5))
    # Without approval the evidence alone would never promote; with it, the policy acts.
    assert registry.handle_comparison(comparison("2", "1")) == "promoted"
    assert registry.handle_comparison(comparison("2", "1")) == "duplicate"
    assert registry.production("sepsis").version == "2"
    promoted = [e for e in lifecycle_events(registry) if e.action == LifecycleAction.PROMOTED][-1]
    assert promoted.actor == "policy"
    assert promoted.evidence["policy"]["eligible"] is True


def test_auto_promote_when_the_outcomes_arrive_after_the_comparison(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    registry.set_policy(ADMIN, "sepsis", {**FAST_POLICY, "auto_promote": True})
    register(registry, tmp_path, "2")
    registry.set_stage(SCIENTIST, "sepsis", "2", Stage.SHADOW)
    registry.propose(SCIENTIST, "sepsis", "2")
    registry.approve(APPROVER, "sepsis", "2")
    assert registry.handle_comparison(comparison("2", "1")) == "recorded"  # too few outcomes yet
    registry.handle_outcomes(outcomes(2))
    assert registry.get_version("sepsis", "2").stage == Stage.SHADOW
    registry.handle_outcomes(outcomes(3, start=2))
    assert registry.production("sepsis").version == "2"


def test_evidence_alone_never_promotes_without_approval(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    registry.set_policy(ADMIN, "sepsis", {**FAST_POLICY, "auto_promote": True})
    register(registry, tmp_path, "2")
    registry.set_stage(SCIENTIST, "sepsis", "2", Stage.SHADOW)
    registry.handle_outcomes(outcomes(5))
    assert registry.handle_comparison(comparison("2", "1")) == "recorded"
    assert registry.get_version("sepsis", "2").stage == Stage.SHADOW


def _promote_two(registry: Registry, tmp_path: Path, **policy: Any) -> None:
    to_production_first(registry, tmp_path, "1")
    candidate_ready(registry, tmp_path, "2", "1")
    registry.set_policy(ADMIN, "sepsis", {**FAST_POLICY, **policy})
    registry.propose(SCIENTIST, "sepsis", "2")
    registry.approve(APPROVER, "sepsis", "2")
    registry.promote(APPROVER, "sepsis", "2")


def test_critical_performance_alert_rolls_back_when_the_policy_says_so(registry: Registry, tmp_path: Path) -> None:
    _promote_two(registry, tmp_path, auto_rollback=True)
    warning = factories.alert(
        event_id=deterministic_id("a", "w"), kind="performance", severity=Severity.WARNING, model_version="2"
    )
    assert registry.handle_alert(warning) == "recorded"
    drift = factories.alert(event_id=deterministic_id("a", "d"), severity=Severity.CRITICAL, model_version="2")
    assert registry.handle_alert(drift) == "recorded"  # data drift is not a performance alert
    critical = factories.alert(
        event_id=deterministic_id("a", "c"),
        alert_key="performance:sepsis:auroc",
        kind="performance",
        severity=Severity.CRITICAL,
        model_version="2",
        metric="auroc",
        value=0.7,
        threshold=0.85,
    )
    assert registry.handle_alert(critical) == "rolled_back"
    assert registry.handle_alert(critical) == "duplicate"
    assert registry.production("sepsis").version == "1"
    events = lifecycle_events(registry)
    rolled = [e for e in events if e.action == LifecycleAction.ROLLED_BACK]
    assert len(rolled) == 1
    assert (rolled[0].model_version, rolled[0].actor, rolled[0].to_stage) == ("1", "policy", Stage.PRODUCTION)
    assert rolled[0].evidence["alert"]["alert_key"] == "performance:sepsis:auroc"
    assert events[-1].model_version == "2" and events[-1].to_stage == Stage.ARCHIVED


def test_critical_alert_flags_without_auto_rollback(registry: Registry, tmp_path: Path) -> None:
    _promote_two(registry, tmp_path)
    critical = factories.alert(
        event_id=deterministic_id("a", "c"), kind="performance", severity=Severity.CRITICAL, model_version="2"
    )
    assert registry.handle_alert(critical) == "flagged"
    version = registry.get_version("sepsis", "2")
    assert version.stage == Stage.PRODUCTION and version.flagged
    assert "auto_rollback is off" in registry.audit_log("sepsis", "2")[-1].reason
    assert registry.handle_alert(factories.alert(model_name="unknown-model")) == "ignored"


def test_unknown_model_comparison_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound):
        registry.handle_comparison(comparison("9", "1"))


def test_outcomes_are_counted_once_for_versions_in_shadow_or_production(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    register(registry, tmp_path, "2")
    register(registry, tmp_path, "3")
    registry.set_stage(SCIENTIST, "sepsis", "2", Stage.SHADOW)
    assert registry.handle_outcomes(outcomes(4)) == 4
    assert registry.handle_outcomes(outcomes(6)) == 2  # four of them were seen already
    counts = {v.version: v.outcomes_labelled for v in registry.list_versions("sepsis")}
    assert counts == {"1": 6, "2": 6, "3": 0}


# --- the audit trail -----------------------------------------------------------------------------


def test_a_tampered_audit_entry_is_detected(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    assert registry.verify_audit().ok
    entries = registry.audit_log()
    assert [e.prev_hash for e in entries[1:]] == [e.entry_hash for e in entries[:-1]]
    victim = entries[2]
    with registry.session() as session:
        session.execute(text("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = :s"), {"s": victim.seq})
        session.commit()
    result = registry.verify_audit()
    assert not result.ok
    assert result.first_bad_seq == victim.seq
    assert "altered" in result.problem


def test_a_recomputed_hash_still_breaks_the_next_link_and_a_cut_tail_is_seen(
    registry: Registry, tmp_path: Path
) -> None:
    to_production_first(registry, tmp_path, "1")
    entries = registry.audit_log()
    with registry.session() as session:
        # A forger who recomputes the altered entry's own hash still breaks the next entry's link.
        session.execute(text("UPDATE audit_log SET actor = 'someone', entry_hash = :h WHERE seq = 2"), {"h": "f" * 64})
        session.commit()
    assert registry.verify_audit().first_bad_seq in (2, 3)
    with registry.session() as session:
        session.execute(
            text("UPDATE audit_log SET actor = :a, entry_hash = :h WHERE seq = 2"),
            {"a": entries[1].actor, "h": entries[1].entry_hash},
        )
        session.commit()
    assert registry.verify_audit().ok
    with registry.session() as session:
        session.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": entries[-1].seq})
        session.commit()
    result = registry.verify_audit()
    assert not result.ok and "truncated" in result.problem


def test_refused_decisions_leave_no_trace(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, "1")
    before = (len(registry.audit_log()), len(registry.pending_events(1000)))
    with pytest.raises(Conflict):
        registry.set_stage(SCIENTIST, "sepsis", "1", Stage.PRODUCTION)
    with pytest.raises(Forbidden):
        registry.retire(SCIENTIST, "sepsis", "1", "no")
    assert (len(registry.audit_log()), len(registry.pending_events(1000))) == before


# --- the outbox ----------------------------------------------------------------------------------


def test_outbox_keeps_events_until_marked_published(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    pending = registry.pending_events(2)
    assert [ModelLifecycleChanged.model_validate_json(p.payload).action for p in pending] == [
        LifecycleAction.REGISTERED,
        LifecycleAction.STAGE_CHANGED,
    ]
    registry.mark_failed([p.id for p in pending if p.id], "broker down")
    assert [p.id for p in registry.pending_events(2)] == [p.id for p in pending]
    registry.mark_published([p.id for p in pending if p.id])
    remaining = registry.pending_events(100)
    assert [ModelLifecycleChanged.model_validate_json(p.payload).action for p in remaining] == [
        LifecycleAction.PROMOTED
    ]
    ids = {ModelLifecycleChanged.model_validate_json(p.payload).event_id for p in pending + remaining}
    assert len(ids) == 3


def test_version_rows_hold_stage_strings_the_contract_knows(registry: Registry, tmp_path: Path) -> None:
    to_production_first(registry, tmp_path, "1")
    with registry.session() as session:
        stages = {row.stage for row in session.exec(select(ModelVersion)).all()}
    assert stages <= {s.value for s in Stage}


def test_concurrent_decisions_keep_one_linear_audit_chain(registry: Registry, tmp_path: Path) -> None:
    for i in range(8):
        registry.register_folder(SCIENTIST, make_package(tmp_path, name=f"m{i}", version="1"))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            registry.set_stage(SCIENTIST, f"m{i}", "1", Stage.SHADOW)
            registry.set_stage(SCIENTIST, f"m{i}", "1", Stage.ARCHIVED)
            registry.retire(ADMIN, f"m{i}", "1", "done")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    verification = registry.verify_audit()
    assert verification.ok, verification
    assert verification.entries == 8 * 4
