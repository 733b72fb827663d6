"""Shadow scoring on top of the shared scoring core: one feature state per encounter, every candidate scored.

:class:`ShadowCore` is the scoring core (:mod:`vigil_common.scoring`) with its per-encounter states and hour-boundary
rows, and with several packages instead of one: each batch's rows are built once and every shadow-stage candidate
predicts them in one vectorised call. The stage of every score it makes is ``shadow``: it refuses any other stage,
so its scores cannot pass the live publisher's production check nor the shadow publisher's shadow check otherwise.

Candidates added later start with the encounters' full history, since the states are shared and kept warm even
when no candidate is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from vigil_common.events import Stage
from vigil_common.features import FEATURE_COLUMNS
from vigil_common.scoring import BatchOutcome, CanonicalEventT, Incoming, Predictor, ScoringCore
from vigil_shadow.catalog import ModelKey, ModelRefused


class _NoModel:
    """Stands in while no candidate is loaded: the core keeps the states warm and scores nothing."""

    name = "-"
    version = "-"
    thresholds: dict[str, float] = {"operating": 1.0, "medium": 1.0, "high": 1.0}  # noqa: RUF012
    columns = FEATURE_COLUMNS

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.zeros(len(X))

    def risk_level(self, p: float) -> str:
        return "low"


class ShadowCore(ScoringCore):
    """The scoring core with every candidate predicting the same rows; shadow stage only."""

    def __init__(self, models: Mapping[ModelKey, Predictor] | None = None, **kwargs: Any) -> None:
        kwargs.pop("stage", None)
        super().__init__(_NoModel(), stage=Stage.SHADOW, **kwargs)
        self.models: dict[ModelKey, Predictor] = {}
        self.muted = False
        """True while rebuilding state from the log: events are applied, nothing is scored."""
        self.set_models(models or {})

    def swap(self, package: Predictor, *, stage: Stage, default_model: bool = False) -> None:
        """Only shadow stage, ever."""
        if Stage(stage) is not Stage.SHADOW:
            raise ModelRefused(f"the shadow core scores shadow-stage models only, not {Stage(stage).value}")
        super().swap(package, stage=stage, default_model=False)

    def set_models(self, models: Mapping[ModelKey, Predictor]) -> None:
        """Score exactly these candidates from the next batch on (their input columns are checked)."""
        for package in models.values():
            if tuple(getattr(package, "columns", FEATURE_COLUMNS)) != tuple(FEATURE_COLUMNS):
                raise ValueError(f"{package.name}:{package.version}: input columns differ from FEATURE_COLUMNS")
        self.models = dict(sorted(models.items()))

    def _materialise(self, rows: list[Any]) -> None:  # type: ignore[override]
        # Rows are dropped while muted or without candidates: computing their features would be wasted work.
        if self.muted or not self.models:
            return
        ScoringCore._materialise(rows)

    def _predict(self, rows: list[Any]) -> list[Any]:
        if self.muted or not rows or not self.models:
            return []
        scores: list[Any] = []
        for package in self.models.values():
            self.swap(package, stage=Stage.SHADOW)
            scores.extend(super()._predict(rows))
        return scores

    def warm(self, events: Iterable[Incoming | CanonicalEventT]) -> BatchOutcome:
        """Apply events without scoring (state rebuild from the log, replay's warm-up)."""
        self.muted = True
        try:
            return self.process(events)
        finally:
            self.muted = False
