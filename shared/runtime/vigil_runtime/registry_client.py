"""The one client of the registry's read API, for every service that asks it something.

``GET {registry_url}/models/{name}/production`` answers the production version as JSON
(:class:`vigil_contracts.registry.ProductionRef` reads it, tolerant about the field names);
``/models/{name}/versions`` and ``/models/{name}/versions/{version}`` list versions with their stages (shadow).

404 means "no production version" (``None``); a connection error, a timeout or a 5xx raise
:class:`RegistryUnavailable`. The package is downloaded as a tar (optionally gzipped) or zip archive of the
package folder, from a URL under the registry's (``file://`` URLs and local paths only in development mode:
``vigil_runtime.provenance.check_artifact_url``). The client unpacks it and hands the folder to the ``verify``
function it was built with (the scoring core's ``verify_package``: digests, manifest, input schema), so the runtime
needs no model code and no onnxruntime.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urljoin, urlparse

import httpx

from vigil_contracts.registry import PackageRejected, ProductionRef, RegistryUnavailable
from vigil_runtime.provenance import ProvenanceRefused, check_artifact_url

__all__ = ["PackageRejected", "PackageVerifier", "ProductionRef", "RegistryClient", "RegistryUnavailable"]

log = logging.getLogger(__name__)


PackageT_co = TypeVar("PackageT_co", covariant=True)


class PackageVerifier(Protocol[PackageT_co]):
    """Loads an unpacked package folder, raising :class:`PackageRejected` unless the given digests match it."""

    def __call__(
        self, path: Path, /, *, artifact_sha256: str | None, package_sha256: str | None, archive_sha: str | None = None
    ) -> PackageT_co: ...


PackageT = TypeVar("PackageT")


class RegistryClient(Generic[PackageT]):
    """The one client of the registry's API: async; the CLI runs it under ``asyncio.run``.

    ``verify`` is needed only by :meth:`fetch_package` (a client that only reads or asks, such as ``vigil registry``,
    has none).
    """

    def __init__(
        self,
        base_url: str,
        *,
        verify: PackageVerifier[PackageT] | None = None,
        token: str | None = None,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        development: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.verify = verify
        self.development = development
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(timeout=timeout, headers=headers, transport=transport)

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def production(self, name: str) -> ProductionRef | None:
        """The production version of ``name``; None when the registry has none."""
        try:
            response = await self._http.get(f"{self.base_url}/models/{name}/production")
        except httpx.HTTPError as error:
            raise RegistryUnavailable(f"{type(error).__name__}") from error
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise RegistryUnavailable(f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as error:
            raise RegistryUnavailable("the registry's answer is not JSON") from error
        if isinstance(body, dict) and isinstance(body.get("version"), dict):
            body = body["version"]  # {"model": ..., "version": {...}} shapes
        return ProductionRef.from_json(name, body, self.base_url)

    async def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of ``name`` with its stage (404: the model is unknown, no versions)."""
        response = await self._http.get(f"{self.base_url}/models/{name}/versions")
        if response.status_code == 404:
            return []
        response.raise_for_status()
        body = response.json()
        return list(body.get("versions", []) if isinstance(body, dict) else body)

    async def version(self, name: str, version: str) -> dict[str, Any] | None:
        """One version's record (None when unknown)."""
        response = await self._http.get(f"{self.base_url}/models/{name}/versions/{version}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    async def adaptation(self, name: str) -> dict[str, Any]:
        """Whether adapting ``name`` to this site is due by the registry's adaptation policy, and why."""
        response = await self._http.get(f"{self.base_url}/models/{name}/adaptation")
        response.raise_for_status()
        return dict(response.json())

    async def request(self, method: str, path: str, *, token: str | None = None, **kw: Any) -> httpx.Response:
        """Any call of the registry's API on this client's connections, as the holder of ``token`` when given.

        For the governed steps people take through the API (register, stage, propose, approve, policy), as the
        demo does; the answer is returned as is, its status for the caller to judge.
        """
        headers = dict(kw.pop("headers", None) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return await self._http.request(method, f"{self.base_url}{path}", headers=headers, **kw)

    async def fetch_package(
        self,
        url: str,
        *,
        cache_dir: Path,
        artifact_sha256: str | None,
        package_sha256: str | None = None,
    ) -> PackageT:
        """Download, unpack and verify a package; the result is fully loaded (ready to swap in).

        The URL must be under the registry's (local files only in development mode): PackageRejected otherwise.
        """
        verify = self.verify
        if verify is None:
            raise RuntimeError("this RegistryClient was built without a package verifier")
        try:
            check_artifact_url(url, registry_url=self.base_url, development=self.development)
        except ProvenanceRefused as refused:
            raise PackageRejected(refused.reason) from refused
        local = _local_path(url)
        if local is None and not urlparse(url).scheme:
            # A path on the registry (lifecycle events may carry relative artifact URLs).
            url = urljoin(self.base_url + "/", url.lstrip("/"))
        if local is not None:
            # Verification hashes files and loads the ONNX session: keep it off the event loop.
            if local.is_dir():
                return await asyncio.to_thread(
                    verify, local, artifact_sha256=artifact_sha256, package_sha256=package_sha256
                )
            data = await asyncio.to_thread(local.read_bytes)
        else:
            try:
                response = await self._http.get(url, follow_redirects=True)
            except httpx.HTTPError as error:
                raise RegistryUnavailable(f"download failed: {type(error).__name__}") from error
            if response.status_code >= 400:
                raise RegistryUnavailable(f"download failed: HTTP {response.status_code}")
            data = response.content
        target, digest = await asyncio.to_thread(unpack, data, cache_dir=cache_dir)
        return await asyncio.to_thread(
            verify, target, artifact_sha256=artifact_sha256, package_sha256=package_sha256, archive_sha=digest
        )


def _local_path(url: str) -> Path | None:
    """The local file or folder a ``file://`` URL or plain path names (None for a URL on a server)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if not parsed.scheme and Path(url).exists():
        return Path(url)
    return None


def unpack(data: bytes, *, cache_dir: Path) -> tuple[Path, str]:
    """Unpack an archived package under ``cache_dir/<sha256 of the bytes>``; (the folder, that digest)."""
    digest = hashlib.sha256(data).hexdigest()
    target = cache_dir / digest
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".unpack-"))
        try:
            _extract(data, tmp)
            root = _package_root(tmp)
            shutil.move(str(root), str(target))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


def _extract(data: bytes, into: Path) -> None:
    buffer = io.BytesIO(data)
    if zipfile.is_zipfile(buffer):
        with zipfile.ZipFile(buffer) as archive:
            for member in archive.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise PackageRejected("unsafe path in the package archive")
            archive.extractall(into)  # noqa: S202 - member paths checked above
        return
    buffer.seek(0)
    try:
        with tarfile.open(fileobj=buffer, mode="r:*") as archive:
            archive.extractall(into, filter="data")
    except tarfile.TarError as error:
        raise PackageRejected("the package is neither a tar nor a zip archive") from error


def _package_root(folder: Path) -> Path:
    """The folder holding manifest.json (archives may wrap the package in one top folder)."""
    if (folder / "manifest.json").exists():
        return folder
    found = sorted(folder.rglob("manifest.json"))
    if not found:
        raise PackageRejected("the package archive has no manifest.json")
    return found[0].parent
