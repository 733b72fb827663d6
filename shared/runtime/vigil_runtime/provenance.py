"""Provenance of lifecycle events: the registry signs each one, scorers and shadow verify before acting.

A lifecycle event changes which model scores patients, so a consumer must know the registry sent it. The registry
signs every ``ModelLifecycleChanged`` it publishes with Ed25519 (the ``cryptography`` package); the signature
travels in the event itself (``signature``, with ``signing_key_id`` naming the key) so it survives any re-publish
and stays visible in the AsyncAPI contract. What is signed is the event's canonical serialisation: every field but
``signature``, as JSON with sorted keys and no whitespace (:func:`canonical_bytes`), so the consumer re-derives
exactly the signed bytes from the parsed event.

A consumer accepts an event only when (:meth:`LifecycleVerifier.check`):

1. it is signed by one of the configured registry public keys (several may be configured during a rotation);
2. its artifact URL is under the configured registry URL (a relative URL is resolved against it); ``file://``
   URLs and local paths are accepted only in development mode.

Anything else raises :class:`ProvenanceRefused` with the reason; the consumer parks the record on the dead-letter
topic, raises an alert and changes nothing. The package's sha256 is checked on download as before.

Keys: the registry's private key is made on first use (:func:`ensure_signing_key`) under ``.vigil/secrets``
(mode 0600), its public key written beside it; consumers are given the public key file.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
from aiokafka import ConsumerRecord
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client import Counter
from pydantic import ValidationError

from vigil_contracts.events import AlertRaised, ModelLifecycleChanged, Severity, deterministic_id, utcnow
from vigil_runtime.kafka import DeadLetters, EventPublisher, describe_error
from vigil_runtime.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class ProvenanceRefused(ValueError):
    """A lifecycle event that must not be acted on; ``reason`` says why, ``code`` is its metric label."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def canonical_bytes(event: ModelLifecycleChanged) -> bytes:
    """The signed bytes: every field but ``signature`` as sorted, compact JSON (UTF-8)."""
    return orjson.dumps(event.model_dump(mode="json", exclude={"signature"}), option=orjson.OPT_SORT_KEYS)


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only, created with that mode (no window with wider permissions)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    path.chmod(0o600)


def public_key_path(private_key_path: Path) -> Path:
    """Where the public key of a private key file is written (``.pub`` beside it)."""
    return private_key_path.with_suffix(".pub")


def ensure_signing_key(path: Path) -> Ed25519PrivateKey:
    """The registry's signing key, made on first use (PKCS#8 PEM, mode 0600) with its public key beside it."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(path, pem)
        log.info("lifecycle signing key created", extra={"key_id": key_id(key.public_key())})
    public = public_key_path(path)
    if not public.exists():
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        public.chmod(0o644)
    return key


def load_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in a PEM file (several during a key rotation: the old and the new)."""
    text = path.read_text()
    marker = "-----END PUBLIC KEY-----"
    keys: list[Ed25519PublicKey] = []
    for block in text.split(marker):
        if "-----BEGIN PUBLIC KEY-----" not in block:
            continue
        key = serialization.load_pem_public_key((block.strip() + "\n" + marker + "\n").encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path} holds a public key that is not Ed25519")
        keys.append(key)
    if not keys:
        raise ValueError(f"{path} holds no public key")
    return keys


class LifecycleSigner:
    """Signs lifecycle events with the registry's key (used by the outbox relay)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.key_id = key_id(key.public_key())

    def sign(self, event: ModelLifecycleChanged) -> ModelLifecycleChanged:
        """The event with ``signing_key_id`` and ``signature`` set."""
        stamped = event.model_copy(update={"signing_key_id": self.key_id, "signature": None})
        signature = self._key.sign(canonical_bytes(stamped))
        return stamped.model_copy(update={"signature": base64.b64encode(signature).decode()})


def check_artifact_url(url: str | None, *, registry_url: str, development: bool) -> None:
    """Refuse an artifact URL that is not under the registry (local files only in development mode)."""
    if not url:
        return
    parsed = urlparse(url)
    if parsed.scheme == "file" or (not parsed.scheme and Path(url).exists()):
        if development:
            return
        raise ProvenanceRefused(
            "a local artifact (file:// or a path) is refused outside development mode", "local_artifact"
        )
    if not parsed.scheme:
        if parsed.netloc or ".." in Path(parsed.path).parts:
            raise ProvenanceRefused("a relative artifact URL must be a path on the registry", "off_registry")
        return  # a path on the registry, resolved against the registry URL by the client
    base = urlparse(registry_url.rstrip("/") + "/")
    same_origin = (parsed.scheme, parsed.hostname, parsed.port) == (base.scheme, base.hostname, base.port)
    if not same_origin or not parsed.path.startswith(base.path) or ".." in Path(parsed.path).parts:
        raise ProvenanceRefused("the artifact URL is not under the configured registry URL", "off_registry")


@dataclass
class LifecycleVerifier:
    """What a consumer checks before acting on a lifecycle event (see the module docstring)."""

    public_keys: list[Ed25519PublicKey]
    registry_url: str
    development: bool = False

    @classmethod
    def from_settings(cls, key_file: Path | None, *, registry_url: str, development: bool) -> LifecycleVerifier:
        """A verifier from a public key file (None: no key, so every event is refused outside development)."""
        keys = load_public_keys(key_file) if key_file is not None else []
        if not keys and not development:
            log.error("no registry public key configured: every lifecycle event will be refused")
        return cls(keys, registry_url, development)

    def _by_id(self) -> dict[str, Ed25519PublicKey]:
        return {key_id(k): k for k in self.public_keys}

    def check(self, event: ModelLifecycleChanged) -> None:
        """Raise ProvenanceRefused unless the event is the registry's and names an artifact on the registry."""
        if not self.public_keys:
            if not self.development:
                raise ProvenanceRefused("no registry public key is configured, so no event can be verified", "no_key")
            # Development without a key: signatures are not checked (said once at start-up), URLs still are.
        else:
            if not event.signature:
                raise ProvenanceRefused("unsigned lifecycle event", "unsigned")
            key = self._by_id().get(event.signing_key_id or "")
            if key is None:
                raise ProvenanceRefused("signed with a key that is not a configured registry key", "unknown_key")
            try:
                key.verify(base64.b64decode(event.signature, validate=True), canonical_bytes(event))
            except (InvalidSignature, ValueError) as error:
                raise ProvenanceRefused("the signature does not match the event", "bad_signature") from error
        check_artifact_url(event.artifact_url, registry_url=self.registry_url, development=self.development)


def fingerprints(keys: Iterable[Ed25519PublicKey]) -> list[str]:
    """Key ids, for logs and ``/ready`` details (public information)."""
    return [key_id(k) for k in keys]


class LifecycleGate:
    """What stands between the lifecycle topic and a consumer's models: verify, or park and alert.

    A refused record (unreadable, unsigned, wrongly signed, off the registry) is parked on the dead-letter topic
    with its reason and coordinates, an ``alerts`` event (kind ``provenance``, critical) is published, and
    ``vigil_lifecycle_refused_total`` counts it by reason; the consumer never sees it, so nothing changes.
    The alert names no model (the claimed one is in its evidence): a forger must not be able to block a real
    version's promotion with alerts about it.
    """

    def __init__(
        self,
        verifier: LifecycleVerifier,
        *,
        service: str,
        dead_letters: DeadLetters,
        publisher: EventPublisher,
        alerts_topic: str,
        metrics: ServiceMetrics,
    ) -> None:
        self.verifier = verifier
        self.service = service
        self.dead_letters = dead_letters
        self.publisher = publisher
        self.alerts_topic = alerts_topic
        self.refused = Counter(
            "vigil_lifecycle_refused",
            "Lifecycle events parked instead of acted on, by reason.",
            ["service", "reason"],
            registry=metrics.registry,
        )

    async def admit(self, record: ConsumerRecord[Any, Any] | None, body: bytes) -> ModelLifecycleChanged | None:
        """The verified event, or None after parking the record and raising the alert."""
        claimed: dict[str, Any] = {}
        try:
            event = ModelLifecycleChanged.model_validate_json(body)
            claimed = {"model_name": event.model_name, "model_version": event.model_version, "to": event.to_stage}
            self.verifier.check(event)
        except ValidationError as error:
            await self._refuse(record, f"unreadable lifecycle event: {describe_error(error)}", "unreadable", claimed)
            return None
        except ProvenanceRefused as refused:
            await self._refuse(record, refused.reason, refused.code, claimed)
            return None
        return event

    async def _refuse(
        self, record: ConsumerRecord[Any, Any] | None, reason: str, code: str, claimed: dict[str, Any]
    ) -> None:
        self.refused.labels(self.service, code).inc()
        where = (record.topic, record.partition, record.offset) if record is not None else (None, None, None)
        alert = AlertRaised(
            event_id=deterministic_id("provenance", self.service, *where, code),
            occurred_at=utcnow(),
            key=f"provenance:{self.service}",
            alert_key=f"provenance:{self.service}:lifecycle",
            state="open",
            kind="provenance",
            severity=Severity.CRITICAL,
            value=1.0,
            threshold=0.0,
            window="one lifecycle event",
            evidence={
                "reason": reason,
                "code": code,
                "service": self.service,
                "topic": where[0],
                "partition": where[1],
                "offset": where[2],
                "claimed": {k: str(v) for k, v in claimed.items()},
            },
        )
        await self.dead_letters.park([(record, reason)] if record is not None else [])
        await self.publisher.publish_all(self.alerts_topic, [alert])
        log.error(
            "lifecycle event refused",
            extra={"service": self.service, "reason": code, "partition": where[1], "offset": where[2]},
        )
