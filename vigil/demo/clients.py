"""How the demo talks to the stack: one async HTTP client per service it calls, Kafka clients built in one place.

Everything that carries credentials or transport security is built here (the generated token of each registry
role, the operator's token, the Kafka client options of the secured broker), so the steps never handle a secret.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from vigil.demo.options import MODEL
from vigil.stack import Stack
from vigil_contracts.access import Principal
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.registry_client import RegistryClient
from vigil_scoring.model_package import ModelPackage, verify_package

REGISTRY_ROLES = ("scientist", "approver", "approver2", "admin")
"""The people of the four-eyes path the demo acts as; each has its own generated token (``vigil/http_tokens.py``)."""


def registry_tokens(stack: Stack) -> dict[str, str]:
    """The stack's generated token per registry role; reads go as the operator (a viewer of the registry).

    No development tokens: the registry refuses them outside development mode, and the demo runs on the secured
    stack (issue #13).
    """
    return {**{role: stack.token(role) for role in REGISTRY_ROLES}, "viewer": stack.token("operator")}


class RegistryError(RuntimeError):
    """The registry refused or failed a call; the message names the call, the role and the answer."""


class RegistryApi:
    """The registry's REST API as the demo's people use it, each call in the name of a role.

    One async client: the runtime's :class:`RegistryClient` (the one every service uses), read calls as the viewer,
    the governed steps through its ``request`` with the role's token.
    """

    def __init__(self, base_url: str, tokens: dict[str, str], *, timeout_s: float = 60.0) -> None:
        self.tokens = tokens
        self.client: RegistryClient[ModelPackage] = RegistryClient(
            base_url, verify=verify_package, token=self.tokens["viewer"], timeout=timeout_s
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(self, role: str, method: str, path: str, **kw: Any) -> Any:
        """One call as ``role``; raises :class:`RegistryError` on 4xx/5xx."""
        r = await self.client.request(method, path, token=self.tokens[role], **kw)
        if r.status_code >= 400:
            raise RegistryError(f"registry {method} {path} as {role}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    async def register(self, package: Path) -> dict[str, Any]:
        """Upload a model package as the data scientist (409: already registered, fine for a re-run)."""
        body = await asyncio.to_thread(_tar_gz, package)
        r = await self.client.request(
            "POST",
            f"/models/{MODEL}/versions",
            token=self.tokens["scientist"],
            content=body,
            headers={"Content-Type": "application/gzip"},
        )
        if r.status_code == 409:
            return {"status": "already registered"}
        if r.status_code >= 400:
            raise RegistryError(f"register: {r.status_code} {r.text[:500]}")
        return dict(r.json())

    async def shadow_propose_approve(self, version: str, *, approver: str, reasons: tuple[str, str, str]) -> None:
        """The governed path to production: a data scientist stages and proposes, a clinical approver approves."""
        stage_reason, proposal_reason, approval_reason = reasons
        base = f"/models/{MODEL}/versions/{version}"
        await self.call("scientist", "POST", f"{base}/stage", json={"to": "shadow", "reason": stage_reason})
        await self.call("scientist", "POST", f"{base}/proposals", json={"reason": proposal_reason})
        await self.call(approver, "POST", f"{base}/approve", json={"reason": approval_reason})

    async def stage(self, version: str) -> str | None:
        """The stage of one version (None when the registry does not know it)."""
        record = await self.client.version(MODEL, version)
        return None if record is None else str(record.get("stage"))

    async def production_version(self) -> str:
        """The version in production (raises when there is none: the drill needs one)."""
        ref = await self.client.production(MODEL)
        if ref is None:
            raise RegistryError(f"the registry has no production version of {MODEL}")
        return ref.version

    async def history(self, version: str) -> dict[str, Any]:
        return dict(await self.call("viewer", "GET", f"/models/{MODEL}/versions/{version}/history"))

    async def eligibility(self, version: str) -> dict[str, Any]:
        return dict(await self.call("viewer", "GET", f"/models/{MODEL}/versions/{version}/eligibility"))

    async def audit_verify(self) -> dict[str, Any] | None:
        """The audit chain's verification, or None where the registry does not offer it (or does not answer)."""
        try:
            return dict(await self.call("viewer", "GET", "/audit/verify"))
        except (RegistryError, httpx.HTTPError):
            return None


def _tar_gz(package: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(package.iterdir()):
            if f.is_file():
                tar.add(f, arcname=f.name)
    return buf.getvalue()


def model_in_metrics(text: str) -> tuple[str | None, bool]:
    """From a scorer's Prometheus text: the model version it serves, and whether it is the default model."""
    for family in text_string_to_metric_families(text):
        if family.name != "vigil_model_info":
            continue
        for sample in family.samples:
            if sample.value == 1.0:
                return sample.labels.get("version"), sample.labels.get("default_model") == "True"
    return None, False


class StackProbe:
    """Reads the scorer's and shadow's HTTP side (one async client, as the operator)."""

    def __init__(self, stack: Stack, *, timeout_s: float = 300.0) -> None:
        self.stack = stack
        # Shadow's comparisons (and the publish) need the operator's token; /metrics is open to scrapers.
        self.http = httpx.AsyncClient(timeout=timeout_s, headers={"Authorization": f"Bearer {stack.token('operator')}"})

    async def aclose(self) -> None:
        await self.http.aclose()

    async def scorer_model(self) -> tuple[str | None, bool]:
        """The version the live scorer serves (None if it does not answer) and whether it is the default model."""
        try:
            r = await self.http.get(f"{self.stack.url('scorer')}/metrics", timeout=5)
        except httpx.HTTPError:
            return None, False
        return model_in_metrics(r.text)

    async def shadow_join(self, version: str) -> tuple[bool, int]:
        """Whether shadow's join is rebuilt, and how many encounters of ``version`` it holds with an outcome."""
        try:
            r = await self.http.get(f"{self.stack.url('shadow')}/comparisons", params={"version": version})
            body = r.json()
        except (httpx.HTTPError, ValueError):
            return False, 0
        rows = body.get("comparisons", []) if isinstance(body, dict) else []
        labelled = int(rows[0].get("labelled_encounters") or 0) if rows else 0
        return bool(body.get("join_rebuilt")), labelled

    async def publish_comparison(self) -> int:
        """Ask shadow to publish its comparison now; its HTTP status (409 while it re-reads its topics)."""
        try:
            r = await self.http.post(f"{self.stack.url('shadow')}/comparisons/publish")
        except httpx.HTTPError:
            return 0
        return r.status_code


def kafka_connection(stack: Stack, principal: str = Principal.ADMIN.value) -> KafkaConnection:
    """The stack's broker as ``principal`` (TLS + SCRAM), for the runtime's producer and readers.

    The topic reader and the rollback drill connect as the administrator: the drill stands in for a drift
    monitor (marked as a drill in its evidence) and the reader watches every topic of the run.
    """
    return stack.cluster.connection(principal)


def kafka_options(stack: Stack, principal: str = Principal.ADMIN.value) -> dict[str, Any]:
    """The options a raw aiokafka client of the demo is built with (the topic reader's consumer)."""
    return kafka_connection(stack, principal).client_kwargs()
