"""The scorer's instruments beyond the shared convention, shared by its model manager, checkpointer and batch step."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from vigil_runtime.metrics import ServiceMetrics

SERVICE = "scorer"


class ScorerMetrics:
    """The service's instruments beyond the shared convention (same registry)."""

    def __init__(self, base: ServiceMetrics) -> None:
        r = base.registry
        self.base = base
        self.errors = Counter("vigil_scorer_errors", "Failed batches and refused swaps, by kind.", ["kind"], registry=r)
        self.model = Gauge(
            "vigil_model_info",
            "The model in use (value 1).",
            ["service", "model", "version", "stage", "default_model"],
            registry=r,
        )
        self.states = Gauge("vigil_scorer_states", "Encounter states held in memory.", registry=r)
        self.evictions = Counter("vigil_scorer_evictions", "Idle encounter states evicted.", registry=r)
        self.swaps = Counter("vigil_model_swaps", "Model swaps, by outcome.", ["outcome"], registry=r)
        self.restored = Counter("vigil_scorer_restored_states", "States restored from the changelog.", registry=r)
        self.checkpoint_failures = Gauge(
            "vigil_scorer_checkpoint_failures", "Checkpoints failed in a row (0 once one is written).", registry=r
        )
