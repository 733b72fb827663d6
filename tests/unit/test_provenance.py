"""Signed lifecycle events: the key on first use, signing, and every way a forged event is refused."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests import factories
from vigil_contracts.events import AlertRaised, DeadLettered, Event, ModelLifecycleChanged
from vigil_runtime.kafka import DeadLetters
from vigil_runtime.metrics import ServiceMetrics
from vigil_runtime.provenance import (
    LifecycleGate,
    LifecycleSigner,
    LifecycleVerifier,
    ProvenanceRefused,
    ensure_signing_key,
    load_public_keys,
    public_key_path,
)

REGISTRY = "https://registry.hospital.example:8005"
URL = f"{REGISTRY}/models/sepsis/versions/2/artifact"


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return ensure_signing_key(tmp_path / "secrets" / "lifecycle" / "registry-signing.key")


def verifier(tmp_path: Path, development: bool = False) -> LifecycleVerifier:
    public = public_key_path(tmp_path / "secrets" / "lifecycle" / "registry-signing.key")
    return LifecycleVerifier(load_public_keys(public), REGISTRY, development)


def test_the_signing_key_is_made_once_owner_only(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "secrets" / "lifecycle" / "registry-signing.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = ensure_signing_key(path)
    assert LifecycleSigner(again).key_id == LifecycleSigner(key).key_id


def test_a_signed_event_verifies_and_survives_a_round_trip(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    signed = LifecycleSigner(key).sign(factories.lifecycle(artifact_url=URL, evidence={"auroc": 0.81, "n": [1, 2]}))
    assert signed.signature and signed.signing_key_id
    parsed = ModelLifecycleChanged.model_validate_json(signed.model_dump_json())
    verifier(tmp_path).check(parsed)


def forged(key: Ed25519PrivateKey) -> dict[str, ModelLifecycleChanged]:
    good = LifecycleSigner(key).sign(factories.lifecycle(artifact_url=URL))
    return {
        "unsigned": factories.lifecycle(artifact_url=URL),
        "signed by another key": LifecycleSigner(Ed25519PrivateKey.generate()).sign(
            factories.lifecycle(artifact_url=URL)
        ),
        "another key claiming ours": LifecycleSigner(Ed25519PrivateKey.generate())
        .sign(factories.lifecycle(artifact_url=URL))
        .model_copy(update={"signing_key_id": good.signing_key_id}),
        "tampered version": good.model_copy(update={"model_version": "9"}),
        "tampered url": good.model_copy(update={"artifact_url": "http://attacker.example/m.tar.gz"}),
        "signature garbage": good.model_copy(update={"signature": "not base64!"}),
        "signed but off the registry": LifecycleSigner(key).sign(
            factories.lifecycle(artifact_url="http://attacker.example/models/sepsis/versions/2/artifact")
        ),
        "signed but a local file": LifecycleSigner(key).sign(factories.lifecycle(artifact_url="file:///tmp/model")),
    }


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unsigned", "unsigned"),
        ("signed by another key", "unknown_key"),
        ("another key claiming ours", "bad_signature"),
        ("tampered version", "bad_signature"),
        ("tampered url", "bad_signature"),
        ("signature garbage", "bad_signature"),
        ("signed but off the registry", "off_registry"),
        ("signed but a local file", "local_artifact"),
    ],
)
def test_forged_events_are_refused_with_their_reason(
    tmp_path: Path, key: Ed25519PrivateKey, case: str, code: str
) -> None:
    with pytest.raises(ProvenanceRefused) as refused:
        verifier(tmp_path).check(forged(key)[case])
    assert refused.value.code == code


def test_a_local_artifact_is_accepted_in_development_only(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    event = LifecycleSigner(key).sign(factories.lifecycle(artifact_url="file:///tmp/model"))
    # Development mode is the subject of this test: a local artifact is accepted there and nowhere else.
    verifier(tmp_path, development=True).check(event)
    with pytest.raises(ProvenanceRefused, match="outside development mode"):
        verifier(tmp_path).check(event)


def test_without_a_public_key_every_event_is_refused_outside_development(key: Ed25519PrivateKey) -> None:
    event = LifecycleSigner(key).sign(factories.lifecycle(artifact_url=URL))
    with pytest.raises(ProvenanceRefused, match="no registry public key"):
        LifecycleVerifier([], REGISTRY, development=False).check(event)


def test_a_rotation_accepts_the_old_and_the_new_key(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    new = ensure_signing_key(tmp_path / "new" / "registry-signing.key")
    both = tmp_path / "both.pub"
    both.write_text(
        public_key_path(tmp_path / "secrets" / "lifecycle" / "registry-signing.key").read_text()
        + public_key_path(tmp_path / "new" / "registry-signing.key").read_text()
    )
    check = LifecycleVerifier(load_public_keys(both), REGISTRY).check
    for signer in (LifecycleSigner(key), LifecycleSigner(new)):
        check(signer.sign(factories.lifecycle(artifact_url=URL)))


def lifecycle_record(value: bytes, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("lifecycle", 0, offset, 0, 0, b"sepsis", value, None, 6, len(value), [])


class Recorder:
    def __init__(self) -> None:
        self.sent: dict[str, list[Event]] = {}

    async def publish_all(self, topic: str, events: Any) -> None:
        self.sent.setdefault(topic, []).extend(events)


async def test_the_gate_parks_and_alerts_and_hands_over_only_verified_events(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    recorder = Recorder()
    metrics = ServiceMetrics("scorer")
    gate = LifecycleGate(
        verifier(tmp_path),
        service="scorer",
        dead_letters=DeadLetters(recorder, "dlq", service="scorer"),  # type: ignore[arg-type]
        publisher=recorder,  # type: ignore[arg-type]
        alerts_topic="alerts",
        metrics=metrics,
    )
    good = LifecycleSigner(key).sign(factories.lifecycle(artifact_url=URL))
    record = lifecycle_record(good.model_dump_json().encode(), offset=7)
    assert await gate.admit(record, record.value) == good
    assert recorder.sent == {}

    bad = factories.lifecycle(artifact_url=URL)
    record = lifecycle_record(bad.model_dump_json().encode(), offset=8)
    assert await gate.admit(record, record.value) is None
    (letter,) = recorder.sent["dlq"]
    assert isinstance(letter, DeadLettered)
    assert (letter.source_topic, letter.source_offset, letter.error) == ("lifecycle", 8, "unsigned lifecycle event")
    (alert,) = recorder.sent["alerts"]
    assert isinstance(alert, AlertRaised)
    assert alert.kind == "provenance" and alert.severity.value == "critical" and alert.model_name is None
    assert alert.evidence["claimed"]["model_version"] == "2"
    assert b'vigil_lifecycle_refused_total{reason="unsigned",service="scorer"} 1.0' in metrics.expose()
