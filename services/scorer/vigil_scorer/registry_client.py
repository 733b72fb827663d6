"""The scorer's view of the model registry: which version is in production, and fetching its package.

``GET {registry_url}/models/{name}/production`` answers the production version as JSON. The client is tolerant
about the field names, because it only needs four facts:

- the version: ``version`` (or ``model_version``);
- where the package is: ``artifact_url`` (or ``url``), absolute or relative to the registry;
- the model file's digest: ``artifact_sha256`` (or ``sha256``), the ``sha256`` of the package's manifest;
- optionally the package's digest: ``package_sha256`` (the downloaded archive's bytes or the unpacked folder's
  ``sha256_of_dir``).

404 means "no production version" (``None``); a connection error, a timeout or a 5xx raise
:class:`RegistryUnavailable`. The package is downloaded as a tar (optionally gzipped) or zip archive of the
package folder from a URL under the registry's; ``file://`` URLs and local paths only in development mode
(``vigil_common.provenance.check_artifact_url``). A package is accepted
only when every digest the registry gave matches, its manifest's file digests hold and its input schema is this
feature pipeline's (``ModelPackage.load``).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import httpx

from vigil_common.features import FEATURE_COLUMNS, FEATURE_SET_VERSION
from vigil_common.model_package import ModelPackage, sha256_of_dir
from vigil_common.provenance import ProvenanceRefused, check_artifact_url

log = logging.getLogger(__name__)


class RegistryUnavailable(RuntimeError):
    """The registry did not answer usably (down, timing out, or failing)."""


class PackageRejected(RuntimeError):
    """A downloaded package failed its digest or schema checks."""


@dataclass(frozen=True)
class ProductionRef:
    """What the registry says about a model's production version."""

    name: str
    version: str
    artifact_url: str | None
    artifact_sha256: str | None
    package_sha256: str | None = None

    @classmethod
    def from_json(cls, name: str, body: dict[str, Any], base_url: str) -> ProductionRef:
        """Read the registry's answer, whatever the exact field names (see the module docstring)."""
        version = body.get("version", body.get("model_version"))
        if version is None:
            raise RegistryUnavailable("the registry's production answer has no version")
        url = body.get("artifact_url") or body.get("url")
        if url and not urlparse(str(url)).scheme:
            url = urljoin(base_url.rstrip("/") + "/", str(url).lstrip("/"))
        return cls(
            name=str(body.get("model_name", body.get("name", name))),
            version=str(version),
            artifact_url=str(url) if url else None,
            artifact_sha256=body.get("artifact_sha256") or body.get("sha256"),
            package_sha256=body.get("package_sha256"),
        )


class RegistryClient:
    """A small async client of the registry's read API."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        development: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
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

    async def fetch_package(
        self,
        url: str,
        *,
        cache_dir: Path,
        artifact_sha256: str | None,
        package_sha256: str | None = None,
    ) -> ModelPackage:
        """Download, unpack and verify a package; the result is fully loaded (ready to swap in).

        The URL must be under the registry's (local files only in development mode): PackageRejected otherwise.
        """
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
                    verify_package, local, artifact_sha256=artifact_sha256, package_sha256=package_sha256
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
        return await asyncio.to_thread(
            unpack_and_verify, data, cache_dir=cache_dir, artifact_sha256=artifact_sha256, package_sha256=package_sha256
        )


def _local_path(url: str) -> Path | None:
    """The local file or folder a ``file://`` URL or plain path names (None for a URL on a server)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if not parsed.scheme and Path(url).exists():
        return Path(url)
    return None


def unpack_and_verify(
    data: bytes, *, cache_dir: Path, artifact_sha256: str | None, package_sha256: str | None
) -> ModelPackage:
    """Unpack an archived package under ``cache_dir/<sha256 of the bytes>`` and verify it."""
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
    return verify_package(target, artifact_sha256=artifact_sha256, package_sha256=package_sha256, archive_sha=digest)


def verify_package(
    path: Path, *, artifact_sha256: str | None, package_sha256: str | None, archive_sha: str | None = None
) -> ModelPackage:
    """Load a package folder, refusing it unless every digest the registry gave matches it."""
    try:
        package = ModelPackage.load(path)
    except Exception as error:
        raise PackageRejected(f"package does not load: {type(error).__name__}: {error}") from error
    accepted = {package.sha256, archive_sha, sha256_of_dir(path)} - {None}
    for given in (artifact_sha256, package_sha256):
        if given and given not in accepted:
            raise PackageRejected("sha256 mismatch: the package is not the one the registry announced")
    if package.feature_set_version != FEATURE_SET_VERSION or tuple(package.columns) != tuple(FEATURE_COLUMNS):
        # A package of another feature-set version loads (a registry may hold it) but this scorer cannot feed it.
        raise PackageRejected("the package's input schema is not this scorer's feature pipeline")
    return package


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
