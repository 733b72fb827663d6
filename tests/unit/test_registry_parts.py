"""The registry's parts in isolation: the policy's report, package validation and the archive format, the
outbox relay's at-least-once publishing, and the evidence consumer's handling of unknown models."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from tests import factories
from tests.pg import make_package
from tests.unit.test_registry_core import (
    SCIENTIST,
    comparison,
    good_metrics,
    make_registry,
    outcomes,
    to_production_first,
)
from vigil_contracts.events import Event, ModelLifecycleChanged, Stage
from vigil_registry.artifacts import ArtifactStore, pack_folder, package_digest, read_package, unpack_archive
from vigil_registry.consumer import EvidenceHandler
from vigil_registry.core import Registry
from vigil_registry.errors import InvalidPackage, StoreCorrupted
from vigil_registry.outbox import OutboxRelay
from vigil_registry.policy import PromotionPolicy, alert_rate_ratio, evaluate
from vigil_runtime.kafka import Parsed
from vigil_runtime.provenance import LifecycleSigner, LifecycleVerifier, ensure_signing_key, load_public_keys

# --- policy --------------------------------------------------------------------------------------


def judge(metrics: dict[str, Any] | None = None, **over: Any) -> Any:
    cmp: dict[str, Any] = {
        "event_id": "e1",
        "live_version": "1",
        "shadow_hours": 400.0,
        "labelled_encounters": 150,
        "metrics": good_metrics() if metrics is None else metrics,
    }
    cmp.update(over)
    return evaluate(
        PromotionPolicy(),
        model_name="sepsis",
        version="2",
        comparison=cmp,
        live_version="1",
        registry_outcomes=120,
        open_critical_alerts=[],
    )


def test_article_defaults() -> None:
    policy = PromotionPolicy()
    assert policy.min_shadow_hours == 336.0
    assert policy.max_calibration_error == 0.1
    assert policy.max_disparity_ratio == 1.25
    assert (policy.auto_promote, policy.auto_rollback) == (False, False)


def test_a_good_comparison_passes_every_criterion() -> None:
    report = judge()
    assert report.eligible and report.failed == []
    assert [c.name for c in report.criteria] == [
        "no_open_critical_alerts",
        "comparison_against_live",
        "shadow_duration",
        "labelled_outcomes",
        "auroc_diff_ci_low",
        "calibration_error",
        "disparity_ratio",
        "alert_rate_ratio",
    ]
    assert report.as_dict()["comparison_event_id"] == "e1"


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({"auroc_diff": {"estimate": 0.0, "ci_low": 0.0, "ci_high": 0.02}}, "auroc_diff_ci_low"),  # not above 0
        ({"candidate": {"ece": 0.1001, "disparity_ratio": 1.0}}, "calibration_error"),
        ({"candidate": {"ece": 0.01, "disparity_ratio": 1.26}}, "disparity_ratio"),
        ({"alert_rate_ratio": 1.21}, "alert_rate_ratio"),
        ({"auroc_diff": "n/a"}, "auroc_diff_ci_low"),
        ({"candidate": {"ece": float("nan"), "disparity_ratio": 1.0}}, "calibration_error"),
        ({"candidate": {"ece": True, "disparity_ratio": 1.0}}, "calibration_error"),
    ],
)
def test_each_criterion_fails_on_its_own(change: dict[str, Any], failed: str) -> None:
    report = judge({**good_metrics(), **change})
    assert report.failed == [failed]
    assert not report.eligible


def test_missing_metrics_fail_closed() -> None:
    report = judge({})
    assert set(report.failed) == {"auroc_diff_ci_low", "calibration_error", "disparity_ratio", "alert_rate_ratio"}
    detail = {c.name: c.detail for c in report.criteria}
    assert "metrics['candidate']['ece']" in detail["calibration_error"]


def test_boundaries_and_aliases() -> None:
    at_limit = {**good_metrics(), "candidate": {"ece": 0.1}, "disparity_ratio": 1.25, "alert_rate_ratio": 1.2}
    assert judge(at_limit).eligible  # "at most" includes the limit
    assert alert_rate_ratio({"candidate": {"alert_rate": 0.2}, "live": {"alert_rate": 0.1}}) == pytest.approx(2.0)
    assert alert_rate_ratio({"candidate": {"alert_rate": 0.0}, "live": {"alert_rate": 0.0}}) == 1.0
    assert judge(shadow_hours=335.9).failed == ["shadow_duration"]
    assert judge(labelled_encounters=99).failed == ["labelled_outcomes"]


def test_first_production_needs_no_comparison_unless_the_policy_says_so() -> None:
    kwargs: dict[str, Any] = {
        "model_name": "sepsis",
        "version": "1",
        "comparison": None,
        "live_version": None,
        "registry_outcomes": 0,
        "open_critical_alerts": [],
    }
    first = evaluate(PromotionPolicy(), **kwargs)
    assert first.eligible and first.criteria[1].passed is None
    strict = evaluate(PromotionPolicy(first_production_without_comparison=False), **kwargs)
    assert strict.failed == ["comparison"]
    blocked = evaluate(PromotionPolicy(), **{**kwargs, "open_critical_alerts": ["k"]})
    assert blocked.failed == ["no_open_critical_alerts"]


# --- packages and archives -----------------------------------------------------------------------


def test_repository_packages_register_and_their_digests_match_the_model_package_code(tmp_path: Path) -> None:
    model_package = pytest.importorskip("vigil_scoring.model_package")
    for version in ("1", "2", "3", "4"):
        path = model_package.default_package_path(version)
        if not path.is_dir():
            pytest.skip("the model work has not committed its packages")
        info = read_package(path)
        assert info.package_sha256 == model_package.sha256_of_dir(path)
        stored = ArtifactStore(tmp_path).put(info)
        out = tmp_path / f"download-{version}"
        unpack_archive(ArtifactStore(tmp_path).archive(info.package_sha256), out, max_bytes=1 << 30)
        loaded = model_package.ModelPackage.load(out, expected_sha256=info.artifact_sha256)
        assert loaded.version == version and stored.is_dir()


def test_pack_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    folder = make_package(tmp_path)
    assert pack_folder(folder) == pack_folder(folder)
    out = unpack_archive(pack_folder(folder), tmp_path / "out", max_bytes=10_000_000)
    assert package_digest(out) == package_digest(folder)


def test_a_corrupted_stored_package_is_never_served(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    info = read_package(make_package(tmp_path))
    stored = store.put(info)
    (stored / "card.md").write_text("edited in the store")
    with pytest.raises(StoreCorrupted):
        store.archive(info.package_sha256)


def _tar(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if symlink:
            link = tarfile.TarInfo("link")
            link.type = tarfile.SYMTYPE
            link.linkname = symlink
            archive.addfile(link)
    return raw.getvalue()


@pytest.mark.parametrize(
    "archive",
    [
        _tar({"../evil.txt": b"x"}),
        _tar({"/etc/evil": b"x"}),
        _tar({"manifest.json": b"{}"}, symlink="/etc/passwd"),
    ],
)
def test_hostile_archives_are_refused(tmp_path: Path, archive: bytes) -> None:
    with pytest.raises(InvalidPackage):
        unpack_archive(archive, tmp_path, max_bytes=10_000)


def test_zip_uploads_and_size_limits(tmp_path: Path) -> None:
    folder = make_package(tmp_path)
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as archive:
        for path in folder.iterdir():
            archive.write(path, f"pkg/{path.name}")
    out = unpack_archive(raw.getvalue(), tmp_path / "zip", max_bytes=10_000_000)
    assert read_package(out).name == "sepsis"
    with pytest.raises(InvalidPackage, match="too large"):
        unpack_archive(raw.getvalue(), tmp_path / "small", max_bytes=10)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: (f / "card.json").unlink(), "lacks card.json"),
        (lambda f: (f / "card.md").write_text("changed"), "card.md does not match"),
        (lambda f: (f / "manifest.json").write_text("[]"), "JSON object"),
    ],
)
def test_invalid_packages_name_their_problem(tmp_path: Path, edit: Any, message: str) -> None:
    folder = make_package(tmp_path)
    edit(folder)
    with pytest.raises(InvalidPackage, match=message):
        read_package(folder)


# --- outbox relay --------------------------------------------------------------------------------


class FlakyPublisher:
    """Acknowledges, fails, or acknowledges and then 'crashes' before the relay marks the rows."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes]] = []
        self.fail_next = False

    async def publish_all(self, topic: str, events: Sequence[Event]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker unreachable")
        self.sent.extend((event.key_bytes(), event.model_dump_json().encode()) for event in events)


async def test_relay_publishes_in_order_retries_and_republishes_after_a_crash(tmp_path: Path) -> None:
    registry = make_registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path)
    to_production_first(registry, tmp_path, "1")
    publisher = FlakyPublisher()
    key = ensure_signing_key(tmp_path / "secrets" / "signing.key")
    relay = OutboxRelay(registry.outbox, publisher, "lifecycle", signer=LifecycleSigner(key), batch_size=2)

    publisher.fail_next = True
    with pytest.raises(ConnectionError):
        await relay.drain()
    assert len(registry.outbox.pending_events()) == 3
    assert registry.outbox.pending_events()[0].attempts == 1

    # A crash after the broker acknowledged but before the rows were marked: the same events go out again.
    original = registry.outbox.mark_published
    registry.outbox.mark_published = lambda ids: (_ for _ in ()).throw(SystemExit("crash"))  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        await relay.drain()
    registry.outbox.mark_published = original  # type: ignore[method-assign]
    assert await relay.drain() == 3
    ids = [ModelLifecycleChanged.model_validate_json(v).event_id for _, v in publisher.sent]
    assert len(ids) == 5 and ids[:2] == ids[2:4]  # at least once, same ids: consumers dedupe
    actions = [ModelLifecycleChanged.model_validate_json(v).to_stage for _, v in publisher.sent[2:]]
    assert actions == [Stage.REGISTERED, Stage.SHADOW, Stage.PRODUCTION]
    # Every event leaves signed, and the signature verifies with the public key written beside the private one.
    verifier = LifecycleVerifier(load_public_keys(tmp_path / "secrets" / "signing.pub"), "http://registry.test")
    for _, value in publisher.sent:
        verifier.check(ModelLifecycleChanged.model_validate_json(value))
    assert all(k == b"sepsis" for k, _ in publisher.sent)
    assert registry.outbox.pending_events() == []


# --- consumer handler ----------------------------------------------------------------------------


def _record(topic: str, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(topic, 0, offset, 0, 0, b"sepsis", b"", None, 0, 0, [])


async def test_handler_applies_evidence_and_returns_unknown_models_for_parking(tmp_path: Path) -> None:
    registry: Registry = make_registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path)
    to_production_first(registry, tmp_path, "1")
    registry.lifecycle.register_folder(SCIENTIST, make_package(tmp_path, version="2"))
    handler = EvidenceHandler(registry)
    unknown = comparison("2", "1", n=7, model_name="ghost", key="ghost")
    items = [
        Parsed(_record("outcomes", 0), outcomes(1)[0]),
        Parsed(_record("comparisons", 0), comparison("2", "1")),
        Parsed(_record("comparisons", 1), unknown),
        Parsed(_record("alerts", 0), factories.alert()),
    ]
    failed = await handler(items)  # type: ignore[arg-type]
    assert [(r.topic, r.offset) for r, _ in failed] == [("comparisons", 1)]
    assert "ghost" in str(failed[0][1])
    assert handler.outcomes == {"processed": 1, "duplicate": 0, "recorded": 2}
