"""Shadow scoring over the shared scoring core: one feature state per encounter, every candidate scored.

:class:`ShadowCore` holds an :class:`~vigil_scoring.scoring.EncounterTracker` (per-encounter states and
hour-boundary rows, as the live scorer keeps them) and the shadow-stage candidates: each batch's rows are built
once and :func:`~vigil_scoring.scoring.predict` has every candidate predict them in one vectorised call. The stage
of every score it makes is ``shadow``: it refuses any other stage, so its scores cannot pass the live publisher's
production check nor the shadow publisher's shadow check otherwise.

Candidates added later start with the encounters' full history, since the states are shared and kept warm even
when no candidate is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from vigil_contracts.events import RiskScored, Stage
from vigil_scoring.scoring import (
    BatchOutcome,
    CanonicalEventT,
    Deployed,
    EncounterTracker,
    Incoming,
    Predictor,
    predict,
)
from vigil_shadow.catalog import ModelKey, ModelRefused
from vigil_shadow.join import is_join_key


class ShadowCore:
    """The encounter tracker with every candidate predicting the same rows; shadow stage only."""

    def __init__(
        self,
        models: Mapping[ModelKey, Predictor] | None = None,
        *,
        idle_hours: float = 24.0,
        dedupe_ids: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tracker = EncounterTracker(idle_hours=idle_hours, dedupe_ids=dedupe_ids, clock=clock)
        self.models: dict[ModelKey, Predictor] = {}
        self._deployed: list[Deployed] = []
        self.set_models(models or {})

    def set_models(self, models: Mapping[ModelKey, Predictor], *, stage: Stage = Stage.SHADOW) -> None:
        """Score exactly these candidates from the next batch on (shadow stage only; input columns checked)."""
        if Stage(stage) is not Stage.SHADOW:
            raise ModelRefused(f"the shadow core scores shadow-stage models only, not {Stage(stage).value}")
        ordered = dict(sorted(models.items()))
        self._deployed = [Deployed(package, Stage.SHADOW) for package in ordered.values()]
        self.models = ordered

    def process(self, events: Iterable[Incoming | CanonicalEventT], *, now: float | None = None) -> BatchOutcome:
        """Apply a batch, then score its rows with every candidate (nothing is scored without candidates)."""
        # Without candidates the rows' features would be wasted work: the states are kept warm all the same.
        batch = self.tracker.apply(events, now=now, features=bool(self._deployed))
        batch.outcome.scores = predict(batch.rows, self._deployed, created=self.tracker.clock())
        return batch.outcome

    def score(self, events: Iterable[Incoming | CanonicalEventT], *, now: float | None = None) -> list[RiskScored]:
        """Apply the events and return every candidate's scores of the batch."""
        return self.process(events, now=now).scores

    def warm(self, events: Iterable[Incoming | CanonicalEventT]) -> BatchOutcome:
        """Apply events without scoring (state rebuild from the log, replay's warm-up)."""
        return self.tracker.apply(events, features=False).outcome

    # --- the changelog's view (vigil_runtime.changelog.KeyedState): per-encounter JSON snapshots -----------

    def snapshot(self, encounter: str) -> bytes | None:
        """The encounter's state as its changelog value (None when not held)."""
        return self.tracker.snapshot(encounter)

    def restore(self, encounter: str, value: bytes | None) -> None:
        """Install an encounter's state from its changelog value (a tombstone forgets it)."""
        if is_join_key(encounter):  # the join's records share the changelog (vigil_shadow.joinlog)
            return
        self.tracker.restore(encounter, value)

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the encounters of partitions this process no longer owns."""
        return self.tracker.drop_partitions(partitions)

    def evict_idle(self, now: float | None = None) -> list[tuple[str, int | None]]:
        """Evict encounters idle by both clocks (the tracker's rule)."""
        return self.tracker.evict_idle(now)

    def __len__(self) -> int:
        return len(self.tracker)
