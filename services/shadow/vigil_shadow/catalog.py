"""Which model versions are in shadow, and their loaded packages.

Sources, merged:

- the registry: every version of ``settings.model_names`` whose stage is ``shadow``
  (``GET /models/{name}/versions``; the package from ``artifact_url``, verified against the registry's digests).
  The catalog refreshes on start, on every lifecycle event of a watched model and periodically;
- ``settings.local_models`` (``NAME:VERSION=PATH``): packages declared shadow by the operator (development, tests).

A version the registry reports in any stage other than shadow is never loaded: a production version is the live
scorer's, and scoring it here would only duplicate it (under the shadow topic).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from vigil_contracts.events import Stage
from vigil_runtime.registry_client import RegistryClient
from vigil_scoring.model_package import ModelPackage, verify_package
from vigil_scoring.scoring import Predictor

log = logging.getLogger(__name__)

ModelKey = tuple[str, str]


class ModelRefused(ValueError):
    """A version that is not shadow-stage was offered to the shadow scorer."""


@dataclass(frozen=True)
class ShadowModel:
    """A loaded candidate."""

    name: str
    version: str
    package: Predictor
    stage: Stage
    source: str

    @property
    def key(self) -> ModelKey:
        """(name, version)."""
        return (self.name, self.version)


def parse_model_spec(spec: str) -> tuple[str, str, str | None]:
    """``NAME:VERSION`` or ``NAME:VERSION=PATH`` -> (name, version, path or None)."""
    ref, _, path = spec.partition("=")
    name, sep, version = ref.partition(":")
    if not sep or not name or not version:
        raise ValueError(f"model spec {spec!r} is not NAME:VERSION[=PATH]")
    return name.strip(), version.strip(), (path.strip() or None)


def load_local(spec: str) -> ShadowModel:
    """A package from a local folder, checked to be the version the spec names."""
    name, version, path = parse_model_spec(spec)
    if path is None:
        raise ValueError(f"local model {spec!r} needs a path (NAME:VERSION=PATH)")
    package = ModelPackage.load(Path(path))
    if (package.name, str(package.version)) != (name, version):
        raise ValueError(f"{path} holds {package.name}:{package.version}, not {name}:{version}")
    return ShadowModel(name, version, package, Stage.SHADOW, f"local:{path}")


class RegistryReader:
    """The registry's read API as the shadow service needs it (list versions, fetch a package)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        timeout: float,
        cache_dir: Path,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = cache_dir
        self._client = RegistryClient(
            base_url, verify=verify_package, token=token, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()

    async def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of ``name`` with its stage (404: the model is unknown, no versions)."""
        return await self._client.versions(name)

    async def version(self, name: str, version: str) -> dict[str, Any] | None:
        """One version's record (None when unknown)."""
        return await self._client.version(name, version)

    async def load(self, record: dict[str, Any]) -> ModelPackage:
        """Download and verify a version's package."""
        name, version = str(record["model_name"]), str(record["version"])
        url = record.get("artifact_url") or f"{self.base_url}/models/{name}/versions/{version}/artifact"
        if not httpx.URL(url).scheme:
            url = f"{self.base_url}/{str(url).lstrip('/')}"
        return await self._client.fetch_package(
            url,
            cache_dir=self.cache_dir,
            artifact_sha256=record.get("artifact_sha256"),
            package_sha256=record.get("package_sha256"),
        )


class Catalog:
    """The shadow-stage versions currently scored; ``on_change`` is told whenever the set changes."""

    def __init__(
        self,
        *,
        model_names: list[str],
        local_models: list[str],
        registry: RegistryReader | None,
        on_change: Callable[[dict[ModelKey, ShadowModel]], Awaitable[None] | None] | None = None,
    ) -> None:
        self.model_names = list(model_names)
        self.local_specs = list(local_models)
        self.registry = registry
        self.models: dict[ModelKey, ShadowModel] = {}
        self.on_change = on_change
        self.last_error: str | None = None

    def add(self, model: ShadowModel) -> None:
        """Score a candidate from now on; refuses anything that is not shadow-stage."""
        if model.stage is not Stage.SHADOW:
            raise ModelRefused(f"{model.name}:{model.version} is {model.stage.value}-stage, not shadow")
        self.models[model.key] = model

    async def refresh(self) -> dict[ModelKey, ShadowModel]:
        """Reload the set from the local specs and the registry; keeps what it has when the registry is down."""
        wanted: dict[ModelKey, ShadowModel] = {}
        for spec in self.local_specs:
            model = load_local(spec)
            wanted[model.key] = model
        if self.registry is not None:
            try:
                for name in self.model_names:
                    for record in await self.registry.versions(name):
                        if str(record.get("stage")) != Stage.SHADOW.value:
                            continue
                        key = (name, str(record["version"]))
                        if key in self.models and self.models[key].source.startswith("registry"):
                            wanted[key] = self.models[key]
                            continue
                        package = await self.registry.load(record)
                        wanted[key] = ShadowModel(key[0], key[1], package, Stage.SHADOW, "registry")
                self.last_error = None
            except Exception as error:  # the registry down must not stop shadow scoring of what is loaded
                self.last_error = f"{type(error).__name__}"
                log.warning(
                    "registry refresh failed; keeping the loaded candidates", extra={"error_type": self.last_error}
                )
                wanted.update({k: m for k, m in self.models.items() if m.source.startswith("registry")})
        changed = set(wanted) != set(self.models)
        self.models = {}
        for model in wanted.values():
            self.add(model)
        if changed and self.on_change is not None:
            result = self.on_change(dict(self.models))
            if result is not None:
                await result
        return self.models
