"""The scoring core: per-encounter feature state in, one risk score per encounter-hour out, without Kafka.

Two parts, composed rather than inherited: :class:`EncounterTracker` keeps the encounters' states (dedupe,
hour-boundary rows, snapshots, eviction) and knows nothing of models; :func:`predict` turns a batch's rows into
scores with one or several :class:`Deployed` models. The live scorer (:class:`ScoringCore`) passes one model,
shadow and replay pass every candidate; only their transports differ.

How a batch is scored (:meth:`EncounterTracker.apply` then :func:`predict`):

1. each event is routed to its encounter's :class:`~vigil_scoring.features.EncounterState` (created on first
   sight), unless it was already applied: a redelivered Kafka record is recognised by its offset (every
   encounter lives on one partition, so offsets only grow per encounter), a re-published event by its id among
   the encounter's last ``dedupe_ids`` applied ids. Both facts live in the state's snapshot, so dedupe survives a
   restart and a rebalance;
2. when an event opens a newer hour of an encounter whose current hour has unscored data, the features as at the
   current hour are captured first: every hour boundary crossed inside a batch yields a score for that hour;
3. after the batch, every encounter with unscored data contributes one more row (its newest hour);
4. the rows' features are computed in one ``features_many`` pass (a row is computed earlier only when late
   data, a retraction or an admission time is about to change its hour), and all rows of the batch go through
   ONE vectorised :meth:`ModelPackage.predict` call per model.

The last score of an (encounter, hour) includes all of that hour's data and equals the offline prediction of
that hour's row (``offline_features`` + ``ModelPackage.predict``); a batch that ends inside an hour also yields
an earlier, partial score for it (a live scorer publishes as the data arrives).

Score ids are ``RiskScored.make_id(model, version, encounter, data_time, observations)``: a redelivered batch
reproduces the same ids, so consumers dedupe.

Idle encounters (no event for ``idle_hours`` of wall time AND newest data ``idle_hours`` older than the newest
data seen on their partition) are evicted by :meth:`EncounterTracker.evict_idle`, which keeps memory bounded; both
clocks must agree so that neither a fast replay (data time races ahead) nor a quiet night (wall time moves, data
does not) evicts an encounter that is still being fed.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import orjson

from vigil_contracts.events import (
    EncounterRecorded,
    ObservationRecorded,
    ObservationRetracted,
    RiskScored,
    Stage,
    utcnow,
)
from vigil_contracts.headers import SCORER_STATE_VERSION
from vigil_scoring.features import FEATURE_COLUMNS, EncounterState, features_many

log = logging.getLogger(__name__)

CanonicalEventT = ObservationRecorded | ObservationRetracted | EncounterRecorded
SNAPSHOT_VERSION = SCORER_STATE_VERSION  # the changelog's vigil-schema-version header says this one


class NotProductionError(RuntimeError):
    """A non-production model (or a score it made) was about to reach the live topic."""


class Predictor(Protocol):
    """What the core needs of a model package (``vigil_scoring.model_package.ModelPackage`` fits)."""

    name: str
    version: str
    thresholds: dict[str, float]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Probabilities for the rows of X (float32, FEATURE_COLUMNS order)."""
        ...

    def risk_level(self, p: float) -> str:
        """'low', 'medium' or 'high' from the model card's thresholds."""
        ...


@dataclass(slots=True)  # not frozen: a frozen dataclass is several times slower to build, once per record
class Incoming:
    """One event to score with where it came from (all optional outside Kafka)."""

    event: CanonicalEventT
    arrived_at: float | None = None
    """When the event reached the broker (Kafka record timestamp, epoch seconds): start of the score latency."""
    partition: int | None = None
    offset: int | None = None


@dataclass
class Tracked:
    """An encounter's feature state plus what the scorer needs around it (dedupe, idleness, pending score)."""

    state: EncounterState
    partition: int | None = None
    last_offset: int = -1
    recent_ids: deque[str] = field(default_factory=deque)
    id_set: set[str] = field(default_factory=set)
    last_seen: float = 0.0
    """Wall time (epoch seconds) of the last applied event."""
    dirty: bool = False
    """Data applied since the last score row was taken."""
    pending_arrival: float | None = None
    """Newest broker arrival among the events applied since the last row (for the latency)."""
    cur_hour: int | None = None
    """Newest ICU hour applied (tracked here: asking the state is O(readings))."""
    max_time: datetime | None = None
    """Newest observed time applied."""
    last_row: tuple[datetime, int] | None = None
    """(data_time, observations) of the last row taken: an unchanged state is not scored twice."""
    deferred: list[Row] = field(default_factory=list)
    """This batch's rows of earlier hours whose features are not computed yet (see ``EncounterTracker.apply``)."""
    scored_by: str | None = None
    """Model version of the live scorer's last score (kept in the snapshot): a replay under another is a re-score."""
    restored_by: str | None = None
    """``scored_by`` of the snapshot this state was restored from: the version the replayed records were scored by."""
    pending_replay: bool = False
    """Events applied since the last row include records that existed before this process started."""

    def __post_init__(self) -> None:
        if self.cur_hour is None and self.max_time is None:
            self.resync()

    def resync(self) -> None:
        """Read the hour and newest time back from the state (after a restore or an admission-time change)."""
        self.cur_hour = self.state.hour
        self.max_time = self.state.data_time

    def remember(self, event_id: str, limit: int) -> None:
        """Add an applied id, forgetting the oldest beyond ``limit``."""
        self.recent_ids.append(event_id)
        self.id_set.add(event_id)
        while len(self.recent_ids) > limit:
            self.id_set.discard(self.recent_ids.popleft())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot: the feature state and the dedupe facts (offset and recent ids)."""
        return {
            "v": SNAPSHOT_VERSION,
            "state": self.state.to_dict(),
            "partition": self.partition,
            "last_offset": self.last_offset,
            "recent_ids": list(self.recent_ids),
            "last_seen": self.last_seen,
            "scored_by": self.scored_by,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tracked:
        """Inverse of :meth:`to_dict`."""
        if d.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported scorer snapshot version {d.get('v')!r}")
        ids = deque(str(i) for i in d.get("recent_ids", ()))
        return cls(
            state=EncounterState.from_dict(d["state"]),
            partition=d.get("partition"),
            last_offset=int(d.get("last_offset", -1)),
            recent_ids=ids,
            id_set=set(ids),
            last_seen=float(d.get("last_seen", 0.0)),
            scored_by=d.get("scored_by"),
            restored_by=d.get("scored_by"),
        )


@dataclass(slots=True)
class Row:
    """One encounter-hour to score: who, when, and its feature vector."""

    encounter: str
    patient: str | None
    state: EncounterState
    features: np.ndarray | None
    """None until computed: deferred to the batch's single ``features_many`` call when that is exact."""
    hour: int
    data_time: datetime
    observations: int
    arrived_at: float | None
    replay: bool = False
    """Built from records that existed before this process started (a previous owner may have scored them)."""
    restored_by: str | None = None
    """The model version that scored the encounter before the restart, if known."""
    tracked: Tracked | None = None


@dataclass
class BatchOutcome:
    """What one batch did."""

    scores: list[RiskScored] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    """(index in the batch, reason) of events that could not be used: park them in the dead-letter topic."""
    applied: int = 0
    duplicates: int = 0
    changed: dict[str, int | None] = field(default_factory=dict)
    """Encounters whose state changed, with their partition: their snapshots go to the changelog."""


def _encounter_of(event: CanonicalEventT) -> str | None:
    return event.encounter


def _patient_of(event: CanonicalEventT) -> str | None:
    return event.patient


def _new_state(encounter: str, patient: str | None) -> EncounterState:
    return EncounterState(encounter=encounter, patient=patient)


def _hour_of(state: EncounterState, event: CanonicalEventT) -> int | None:
    """The ICU hour an observation falls in, when the state knows the admission time."""
    if not isinstance(event, ObservationRecorded):
        return None
    admitted: datetime | None = getattr(state, "icu_admitted_at", None)
    if admitted is None:
        return None
    return math.floor((event.observed_at - admitted).total_seconds() / 3600.0)


@dataclass(frozen=True)
class Deployed:
    """A model as a stage deploys it: the package, the stage its scores carry, and whether it is the bundled default."""

    package: Predictor
    stage: Stage
    default_model: bool = False

    def __post_init__(self) -> None:
        columns = tuple(getattr(self.package, "columns", FEATURE_COLUMNS))
        if columns != tuple(FEATURE_COLUMNS):
            raise ValueError("the package's input columns differ from this feature pipeline's FEATURE_COLUMNS")
        object.__setattr__(self, "stage", Stage(self.stage))

    @property
    def threshold(self) -> float:
        """The operating threshold of the model card: a score at or above it is an alert."""
        return float(self.package.thresholds["operating"])


def predict(rows: Sequence[Row], models: Sequence[Deployed], *, created: float) -> list[RiskScored]:
    """Every model's scores of the rows, one vectorised ``predict`` per model; ``created`` is the scores' time.

    The rows' features must be computed (:meth:`EncounterTracker.apply` with ``features=True`` does it).
    """
    if not rows or not models:
        return []
    X = np.vstack([r.features for r in rows if r.features is not None]).astype(np.float32, copy=False)
    if len(X) != len(rows):
        raise ValueError("rows without features cannot be scored")
    created_at = datetime.fromtimestamp(created, UTC)
    scores: list[RiskScored] = []
    for model in models:
        package = model.package
        probabilities = np.asarray(package.predict(X), dtype=np.float64)
        name, version, stage, threshold = package.name, str(package.version), model.stage, model.threshold
        for row, p in zip(rows, probabilities, strict=True):
            probability = min(1.0, max(0.0, float(p)))
            latency = (created - row.arrived_at) * 1000.0 if row.arrived_at is not None else 0.0
            rescore = row.replay and row.restored_by is not None and row.restored_by != version
            scores.append(
                RiskScored(
                    event_id=RiskScored.make_id(name, version, row.encounter, row.data_time, row.observations),
                    occurred_at=created_at,
                    key=row.encounter,
                    encounter=row.encounter,
                    patient=row.patient,
                    model_name=name,
                    model_version=version,
                    stage=stage,
                    default_model=model.default_model,
                    probability=probability,
                    risk_level=package.risk_level(probability),
                    threshold=threshold,
                    alert=probability >= threshold,
                    data_time=row.data_time,
                    hour=row.hour,
                    observations=row.observations,
                    latency_ms=max(0.0, latency),
                    rescore=rescore,
                )
            )
    return scores


@dataclass
class TrackedBatch:
    """What applying one batch did, and the encounter-hours it leaves to score."""

    outcome: BatchOutcome
    rows: list[Row]


class EncounterTracker:
    """Per-encounter states: dedupe, hour-boundary rows, snapshots and eviction (see the module docstring)."""

    def __init__(
        self,
        *,
        idle_hours: float = 24.0,
        dedupe_ids: int = 1024,
        clock: Callable[[], float] = time.time,
        future_skew: timedelta = timedelta(minutes=5),
        utc_now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.states: dict[str, Tracked] = {}
        self.replay_until: dict[int, int] = {}
        """Per partition, the log end when its states were restored: records before it are a replay."""
        # Defence in depth behind ingest's time rules (the topic may have other producers): one reading dated past
        # the scorer's own clock would move the encounter's hour there and keep it in a false alarm for good.
        self.future_skew = future_skew
        self.utc_now = utc_now
        self.idle_hours = idle_hours
        self.dedupe_ids = dedupe_ids
        self.clock = clock
        self._newest_data: dict[int | None, datetime] = {}

    def apply(
        self, events: Iterable[Incoming | CanonicalEventT], *, now: float | None = None, features: bool = True
    ) -> TrackedBatch:
        """Apply a batch of events in order; the rows are every touched encounter-hour to score.

        ``features=False`` skips computing the rows' features (nothing will score them: a warm-up, or no model).
        """
        out = BatchOutcome()
        rows: list[Row] = []
        touched: dict[str, Tracked] = {}
        wall = self.clock() if now is None else now
        latest_believable = self.utc_now() + self.future_skew
        for index, item in enumerate(events):
            inc = item if isinstance(item, Incoming) else Incoming(item)
            event = inc.event
            if isinstance(event, ObservationRecorded) and event.observed_at > latest_believable:
                out.failures.append((index, "observed_at is later than the scorer's clock plus the allowed skew"))
                continue
            encounter = _encounter_of(event)
            if not encounter:
                out.failures.append((index, "no encounter linked: cannot be scored"))
                continue
            tracked = self.states.get(encounter)
            if tracked is None:
                tracked = Tracked(_new_state(encounter, _patient_of(event)), partition=inc.partition)
                self.states[encounter] = tracked
            if self._is_duplicate(tracked, inc):
                out.duplicates += 1
                continue
            state = tracked.state
            hour = _hour_of(state, event)
            if tracked.deferred and (hour is None or hour <= tracked.deferred[-1].hour):
                # Late data, a retraction or an admission time could change an earlier hour's features: compute
                # the deferred rows before the state moves (otherwise they are computed once, after the batch).
                if features:
                    _materialise(tracked.deferred)
                tracked.deferred.clear()
            if tracked.dirty:
                # An hour boundary: capture the features as at the current hour before the newer data lands.
                if hour is not None:
                    crossing = tracked.cur_hour is not None and hour > tracked.cur_hour
                else:
                    crossing = (
                        isinstance(event, ObservationRecorded)
                        and tracked.max_time is not None
                        and event.observed_at > tracked.max_time
                    )
                if crossing:
                    self._take_row(tracked, rows, defer=hour is not None or not features)
            try:
                state.apply(event)
            except (ValueError, KeyError, TypeError) as error:
                out.failures.append((index, f"{type(error).__name__}: {error}"[:300]))
                continue
            out.applied += 1
            self._applied(tracked, inc, hour, wall)
            touched[encounter] = tracked
            out.changed[encounter] = tracked.partition
        for tracked in touched.values():
            if tracked.dirty:
                self._take_row(tracked, rows, defer=True)
            tracked.deferred.clear()
        if features:
            _materialise(rows)
        return TrackedBatch(out, rows)

    def _applied(self, tracked: Tracked, inc: Incoming, hour: int | None, wall: float) -> None:
        """Book an applied event: hour and newest time, dedupe facts, idleness, latency start."""
        event = inc.event
        tracked.dirty = True
        if isinstance(event, ObservationRecorded):
            if hour is not None and (tracked.cur_hour is None or hour > tracked.cur_hour):
                tracked.cur_hour = hour
            if tracked.max_time is None or event.observed_at > tracked.max_time:
                tracked.max_time = event.observed_at
        else:
            tracked.resync()  # an admission time re-buckets the readings; a retraction may lower both
        if inc.partition is not None:
            tracked.partition = inc.partition
        if inc.offset is not None:
            tracked.last_offset = max(tracked.last_offset, inc.offset)
        tracked.remember(event.event_id, self.dedupe_ids)
        tracked.last_seen = wall
        if inc.arrived_at is not None:
            tracked.pending_arrival = max(tracked.pending_arrival or 0.0, inc.arrived_at)
        if (
            inc.offset is not None
            and inc.partition is not None
            and inc.offset < self.replay_until.get(inc.partition, -1)
        ):
            tracked.pending_replay = True
        if tracked.max_time is not None:
            newest = self._newest_data.get(tracked.partition)
            if newest is None or tracked.max_time > newest:
                self._newest_data[tracked.partition] = tracked.max_time

    def _is_duplicate(self, tracked: Tracked, inc: Incoming) -> bool:
        if (
            inc.offset is not None
            and inc.partition is not None
            and inc.partition == tracked.partition
            and inc.offset <= tracked.last_offset
        ):
            return True
        return inc.event.event_id in tracked.id_set

    def _take_row(self, tracked: Tracked, rows: list[Row], *, defer: bool) -> None:
        state = tracked.state
        hour, data_time = state.hour, state.data_time
        if hour is None or data_time is None:
            return  # no data yet: nothing to score, stays dirty
        observations = int(state.observations)
        tracked.dirty = False
        if tracked.last_row == (data_time, observations):
            tracked.pending_arrival = None
            return  # e.g. a reading the state ignores: the same score again would add nothing
        tracked.last_row = (data_time, observations)
        row = Row(
            encounter=state.encounter or "",
            patient=state.patient,
            state=state,
            features=None if defer else state.features(),
            hour=int(hour),
            data_time=data_time,
            observations=observations,
            arrived_at=tracked.pending_arrival,
            replay=tracked.pending_replay,
            restored_by=tracked.restored_by,
            tracked=tracked,
        )
        tracked.pending_replay = False
        rows.append(row)
        if defer:
            tracked.deferred.append(row)
        tracked.pending_arrival = None

    # --- state management (changelog, rebalance, eviction) -----------------------------------------

    def snapshot(self, encounter: str) -> bytes | None:
        """The changelog value of an encounter's state (None when it is not held)."""
        tracked = self.states.get(encounter)
        if tracked is None:
            return None
        # Compacted in place, not only in the snapshot: the state that goes on scoring is the one a restart restores,
        # so a restart re-sends nothing that differs. Between batches only (the pipeline snapshots there).
        tracked.state.compact()
        return orjson.dumps(tracked.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)

    def restore(self, encounter: str, value: bytes | None) -> None:
        """Install a state from its changelog value; a tombstone (None) forgets it."""
        if value is None:
            self.states.pop(encounter, None)
            return
        tracked = Tracked.from_dict(orjson.loads(value))
        self.states[encounter] = tracked
        if tracked.max_time is not None:
            newest = self._newest_data.get(tracked.partition)
            if newest is None or tracked.max_time > newest:
                self._newest_data[tracked.partition] = tracked.max_time

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the states of partitions this process no longer owns; returns how many were dropped."""
        gone = set(partitions)
        victims = [e for e, t in self.states.items() if t.partition in gone]
        for encounter in victims:
            del self.states[encounter]
        for p in gone:
            self._newest_data.pop(p, None)
        return len(victims)

    def evict_idle(self, now: float | None = None) -> list[tuple[str, int | None]]:
        """Evict encounters idle by both clocks (see the module docstring); returns (encounter, partition)."""
        wall = self.clock() if now is None else now
        limit_s = self.idle_hours * 3600.0
        evicted: list[tuple[str, int | None]] = []
        for encounter, tracked in list(self.states.items()):
            if wall - tracked.last_seen <= limit_s:
                continue
            newest = self._newest_data.get(tracked.partition)
            data_time = tracked.max_time
            if data_time is not None and newest is not None and (newest - data_time).total_seconds() <= limit_s:
                continue
            del self.states[encounter]
            evicted.append((encounter, tracked.partition))
        return evicted

    def __len__(self) -> int:
        return len(self.states)


def _materialise(rows: list[Row]) -> None:
    """Compute the features of rows in one vectorised pass.

    A row of hour h computed after later-hour data arrived equals the row computed at the boundary: features
    at hour h read only the buckets <= h, and any event that could touch them first materialises the row.
    """
    pending = [r for r in rows if r.features is None]
    if not pending:
        return
    matrix = features_many([r.state for r in pending], [r.hour for r in pending])
    for row, vector in zip(pending, matrix, strict=True):
        row.features = vector


class ScoringCore:
    """The live scorer's core: an :class:`EncounterTracker` and ONE deployed model (see the module docstring).

    Scoring goes through :func:`predict`, the same function shadow and replay call with several models; the
    state-keeping methods are the tracker's.
    """

    def __init__(
        self,
        package: Predictor,
        *,
        stage: Stage,
        default_model: bool = False,
        idle_hours: float = 24.0,
        dedupe_ids: int = 1024,
        clock: Callable[[], float] = time.time,
        future_skew: timedelta = timedelta(minutes=5),
        utc_now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.tracker = EncounterTracker(
            idle_hours=idle_hours, dedupe_ids=dedupe_ids, clock=clock, future_skew=future_skew, utc_now=utc_now
        )
        self.replay_until = self.tracker.replay_until
        self.model = Deployed(package, Stage(stage), default_model)
        self.states = self.tracker.states
        self.snapshot = self.tracker.snapshot
        self.restore = self.tracker.restore
        self.drop_partitions = self.tracker.drop_partitions
        self.evict_idle = self.tracker.evict_idle

    def swap(self, package: Predictor, *, stage: Stage, default_model: bool = False) -> None:
        """Use another (fully loaded and verified) package from the next batch on; states are kept."""
        self.model = Deployed(package, Stage(stage), default_model)

    @property
    def package(self) -> Predictor:
        """The package in use."""
        return self.model.package

    @property
    def stage(self) -> Stage:
        """The stage the scores carry."""
        return self.model.stage

    @stage.setter
    def stage(self, stage: Stage) -> None:
        # A promotion of the version in use changes the stage its scores carry, not the package.
        self.model = Deployed(self.model.package, Stage(stage), self.model.default_model)

    @property
    def default_model(self) -> bool:
        """True while the bundled default package is in use (no registry answer yet)."""
        return self.model.default_model

    @property
    def threshold(self) -> float:
        """The operating threshold of the package in use."""
        return self.model.threshold

    @property
    def model_name(self) -> str:
        """Name of the package in use."""
        return self.model.package.name

    @property
    def model_version(self) -> str:
        """Version of the package in use."""
        return str(self.model.package.version)

    def score(self, events: Iterable[Incoming | CanonicalEventT], *, now: float | None = None) -> list[RiskScored]:
        """Apply the events and return the batch's scores (unusable events are skipped; see :meth:`process`)."""
        return self.process(events, now=now).scores

    def process(self, events: Iterable[Incoming | CanonicalEventT], *, now: float | None = None) -> BatchOutcome:
        """Apply a batch of events in order, then score every touched encounter-hour in one vectorised call."""
        batch = self.tracker.apply(events, now=now)
        batch.outcome.scores = predict(batch.rows, [self.model], created=self.tracker.clock())
        version = self.model_version
        for row in batch.rows:
            if row.tracked is not None:
                row.tracked.scored_by = version  # what a replay after a restart compares its version with
        return batch.outcome

    def __len__(self) -> int:
        return len(self.tracker)

    def predict_snapshot(self, features: dict[str, float | None]) -> tuple[float, str, bool]:
        """Stateless scoring of one feature snapshot (FEATURE_COLUMNS names to numbers or null)."""
        unknown = set(features) - set(FEATURE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown feature columns: {sorted(unknown)[:5]}")
        x = np.array(
            [[np.nan if features.get(c) is None else float(features[c]) for c in FEATURE_COLUMNS]],  # type: ignore[arg-type]
            dtype=np.float32,
        )
        p = min(1.0, max(0.0, float(self.package.predict(x)[0])))
        return p, self.package.risk_level(p), p >= self.threshold


class LivePublisher:
    """The only way scores reach the live topic: refuses any model or score that is not production-stage."""

    def __init__(self, publish: Callable[[str, Sequence[RiskScored]], Any], topic: str, core: ScoringCore) -> None:
        if core.stage is not Stage.PRODUCTION:
            raise NotProductionError(f"a {core.stage.value} model may not publish to the live topic")
        self._publish = publish
        self.topic = topic
        self.core = core

    async def publish(self, scores: Sequence[RiskScored]) -> None:
        """Publish scores to the live topic (awaiting acknowledgement) after checking every score's stage."""
        if self.core.stage is not Stage.PRODUCTION:
            raise NotProductionError(f"the model in use is {self.core.stage.value}, not production")
        for s in scores:
            if s.stage is not Stage.PRODUCTION:
                raise NotProductionError(f"score {s.event_id} comes from a {s.stage.value} model")
        await self._publish(self.topic, scores)
