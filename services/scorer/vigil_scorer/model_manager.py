"""Which model is live: confirmed by the registry, swapped on signed lifecycle events, fail-closed without one.

Outside development mode a scorer that cannot confirm its production model with the registry holds no model
(:attr:`ModelManager.core` stays None): it scores nothing, /ready fails, and :meth:`ModelManager.poll_registry`
keeps asking. Swaps happen between batches, under the lock the batch step holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from vigil_contracts.events import LifecycleAction, ModelLifecycleChanged, Stage
from vigil_runtime.producer import AckedProducer
from vigil_runtime.registry_client import PackageRejected, RegistryClient, RegistryUnavailable
from vigil_scorer.metrics import SERVICE, ScorerMetrics
from vigil_scorer.settings import Settings
from vigil_scoring.model_package import ModelPackage, default_package_path
from vigil_scoring.scoring import LivePublisher, ScoringCore

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A fully loaded, verified package and the stage the registry gave it."""

    package: ModelPackage
    stage: Stage
    default_model: bool = False


class ModelManager:
    """Holds the scoring core and its live publisher; installs, swaps and pauses the model."""

    def __init__(
        self,
        settings: Settings,
        metrics: ScorerMetrics,
        *,
        sink: AckedProducer,
        registry: RegistryClient[ModelPackage],
        lock: asyncio.Lock,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sink = sink
        self.registry = registry
        self.lock = lock
        """The batch step's lock: a swap happens between batches."""
        self.core: ScoringCore | None = None
        self.live: LivePublisher | None = None
        self.on_first_model: Callable[[], Awaitable[None]] | None = None
        """Called under the lock once the first confirmed model is installed after failing closed at start
        (the scorer restores the partitions whose restore at assignment could not run without a model)."""

    async def registry_model(self) -> LoadedModel | None:
        """The registry's production version, loaded and verified; None when the registry has none or is unusable."""
        try:
            ref = await self.registry.production(self.settings.model_name)
            if ref is None or not ref.artifact_url:
                return None
            package = await self.registry.fetch_package(
                ref.artifact_url,
                cache_dir=self.settings.model_cache_dir,
                artifact_sha256=ref.artifact_sha256,
                package_sha256=ref.package_sha256,
            )
        except (RegistryUnavailable, PackageRejected) as error:
            log.warning("registry unusable", extra={"error_type": type(error).__name__})
            return None
        return LoadedModel(package, Stage.PRODUCTION)

    async def load_initial_model(self) -> LoadedModel | None:
        """The registry's production version; else, in development mode only, the default package (flagged).

        Outside development mode a scorer that cannot confirm its production model with the registry (refused,
        unreachable, no production version) fails closed: None, so it scores nothing and is not ready, and
        :meth:`poll_registry` keeps asking.
        """
        model = await self.registry_model()
        if model is not None:
            return model
        if not self.settings.development:
            log.error("the registry confirmed no production model: no live scores until it does (fail closed)")
            return None
        log.warning("no production version from the registry; using the default model (development mode)")
        path = self.settings.default_model_path or default_package_path()
        return LoadedModel(ModelPackage.load(path), Stage.PRODUCTION, default_model=True)

    def install(self, model: LoadedModel) -> None:
        """Swap a loaded model in (call between batches: under :attr:`lock`, or before consuming starts)."""
        if self.core is None:
            self.core = ScoringCore(
                model.package,
                stage=model.stage,
                default_model=model.default_model,
                idle_hours=self.settings.idle_hours,
                dedupe_ids=self.settings.dedupe_ids,
                future_skew=timedelta(seconds=self.settings.max_future_skew_s),
            )
        else:
            self.core.swap(model.package, stage=model.stage, default_model=model.default_model)
        self.live = LivePublisher(self._publish_scores, self.settings.topics.scores_live, self.core)
        self.metrics.model.clear()
        self.metrics.model.labels(
            SERVICE, model.package.name, str(model.package.version), model.stage.value, str(model.default_model).lower()
        ).set(1)
        log.info(
            "model in use",
            extra={
                "model_name": model.package.name,
                "model_version": str(model.package.version),
                "stage": model.stage.value,
            },
        )

    async def _publish_scores(self, topic: str, scores: Any) -> None:
        await self.sink.publish_all(topic, scores)

    async def on_lifecycle(self, event: ModelLifecycleChanged) -> None:
        """Load a version the registry put in production and swap it in between batches; stop on a demotion."""
        if event.model_name != self.settings.model_name or self.core is None:
            return
        current = (self.core.model_version, self.core.stage, self.core.default_model)
        if event.to_stage is Stage.PRODUCTION and event.action in (
            LifecycleAction.PROMOTED,
            LifecycleAction.ROLLED_BACK,
            LifecycleAction.STAGE_CHANGED,
        ):
            if current == (event.model_version, Stage.PRODUCTION, False):
                return
            package = await self._announced_package(event)
            if package is None:
                return
            async with self.lock:
                self.install(LoadedModel(package, Stage.PRODUCTION))
            self.metrics.swaps.labels("swapped").inc()
        elif (
            event.model_version == self.core.model_version
            and not self.core.default_model
            and event.to_stage is not Stage.PRODUCTION
        ):
            # Our version left production with no successor announced yet: nothing may reach the live topic
            # until one is (batches wait uncommitted).
            async with self.lock:
                self.core.stage = Stage(event.to_stage)
            log.warning("model left production; live scoring paused", extra={"model_version": event.model_version})

    async def _announced_package(self, event: ModelLifecycleChanged) -> ModelPackage | None:
        """The package a lifecycle event put in production, verified; None (counted, logged) when it is refused."""
        try:
            url = event.artifact_url
            if not url:
                ref = await self.registry.production(event.model_name)
                url = ref.artifact_url if ref and ref.version == event.model_version else None
            if not url:
                raise PackageRejected("the lifecycle event names no artifact")
            package = await self.registry.fetch_package(
                url, cache_dir=self.settings.model_cache_dir, artifact_sha256=event.artifact_sha256
            )
            if str(package.version) != event.model_version or package.name != event.model_name:
                raise PackageRejected("the package is not the version the event announced")
        except (RegistryUnavailable, PackageRejected, ValueError, OSError) as error:
            self.metrics.swaps.labels("refused").inc()
            self.metrics.errors.labels("swap").inc()
            log.error(
                "model swap refused",
                extra={"model_version": event.model_version, "error_type": type(error).__name__},
            )
            return None
        return package

    async def poll_registry(self) -> None:
        """Every ``registry_poll_s``, reconcile with the registry's production version.

        On the default model: swap in the registry's version as soon as there is one. On a registry model: swap
        when the registry names another production version (a lifecycle event missed while the subscriber
        started, say). A registry that does not answer changes nothing.
        """
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            await self.reconcile()

    async def reconcile(self) -> None:
        """One reconciliation with the registry (see :meth:`poll_registry`)."""
        core = self.core
        if core is None:
            # Failed closed at start: the first production model the registry confirms is installed.
            first = await self.registry_model()
            if first is not None:
                async with self.lock:
                    self.install(first)
                    if self.on_first_model is not None:
                        await self.on_first_model()
                self.metrics.swaps.labels("swapped").inc()
            return
        try:
            if not core.default_model:
                ref = await self.registry.production(self.settings.model_name)
                if ref is None or (ref.version == core.model_version and core.stage is Stage.PRODUCTION):
                    return
            model = await self.registry_model()
        except RegistryUnavailable:
            return
        except Exception:  # keep polling; the current model keeps scoring
            log.exception("registry poll failed")
            return
        if model is not None and (
            core.default_model or str(model.package.version) != core.model_version or core.stage is not model.stage
        ):
            async with self.lock:
                self.install(model)
            self.metrics.swaps.labels("swapped").inc()
