"""Join state: live and shadow scores for the same encounter-hour, delayed outcomes, subgroup attributes.

Everything here is plain data fed by events; the service feeds it from Kafka, replay from a topic scan, tests from
lists. Keys:

- a score belongs to ``(model name, encounter, hour)`` where ``hour`` is ``RiskScored.hour`` (whole hours since ICU
  admission of its newest data). The live scorer may publish an early, partial score for an hour and then the
  hour's complete one; the join keeps, per key, the score with the most observations (the hour's complete state),
  which is the score the offline row of that hour reproduces. Redelivered scores (same id) change nothing.
- live scores are production-stage scores, candidates are ``(model name, version)`` of shadow-stage scores;
- outcomes are per encounter: a sepsis outcome (with ``onset_at``) wins over a discharge or death.

Labelling (PhysioNet's SepsisLabel): a prediction at data time ``t`` of an encounter with sepsis onset ``t_sepsis``
is positive iff ``t >= t_sepsis - horizon``; an encounter discharged or dead without sepsis has negatives only; an
encounter without an outcome yet is censored (its hours are excluded, not counted as negatives).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson

from vigil_contracts.events import (
    EncounterRecorded,
    ObservationRecorded,
    ObservationRetracted,
    OutcomeRecorded,
    RiskScored,
    Stage,
)

JOIN_KEY = "~join/"
"""``shadow.state`` key prefix of one encounter's join state (``~`` keeps it apart from encounter ids)."""
POSITIONS_KEY = "~join@"
"""``shadow.state`` key prefix of the join reader's positions, one record per changelog partition."""


def is_join_key(key: str) -> bool:
    """Whether a ``shadow.state`` key belongs to the join (the feature-state restore skips these)."""
    return key.startswith(JOIN_KEY) or key.startswith(POSITIONS_KEY)


ScoreKey = tuple[str, int]
"""(encounter, hour)."""


@dataclass(slots=True)
class ScorePoint:
    """What the comparison needs of one score."""

    probability: float
    alert: bool
    threshold: float
    data_time: datetime
    observations: int
    version: str
    hour: int


@dataclass(slots=True)
class Outcome:
    """What is known about an encounter's outcome."""

    sepsis_onset: datetime | None = None
    septic: bool = False
    ended: bool = False
    recorded_at: datetime | None = None

    @property
    def known(self) -> bool:
        """True once the encounter can be labelled (sepsis with onset, or ended without sepsis)."""
        return (self.septic and self.sepsis_onset is not None) or (self.ended and not self.septic)


@dataclass(slots=True)
class Attributes:
    """Subgroup attributes of an encounter (from the canonical observation stream)."""

    age: float | None = None
    sex: float | None = None
    unit: str | None = None


@dataclass
class Joined:
    """One candidate against live on their common encounter-hours (rows sorted by encounter, then hour)."""

    model_name: str
    candidate_version: str
    live_versions: list[str]
    encounters: list[str]
    """Distinct encounters; ``enc`` indexes into this list."""
    enc: np.ndarray
    hour: np.ndarray
    data_time: np.ndarray
    """datetime64[us] (UTC, naive)."""
    label: np.ndarray
    """1.0 positive, 0.0 negative, NaN censored."""
    p_live: np.ndarray
    p_cand: np.ndarray
    alert_live: np.ndarray
    alert_cand: np.ndarray
    threshold_live: float
    threshold_cand: float
    attributes: list[Attributes]
    """Per distinct encounter."""
    septic: np.ndarray
    """Per distinct encounter: True when its outcome is sepsis."""

    @property
    def labelled(self) -> np.ndarray:
        """Mask of the labelled (not censored) rows."""
        mask: np.ndarray = ~np.isnan(self.label)
        return mask

    def __len__(self) -> int:
        return len(self.enc)


def _better(new: ScorePoint, old: ScorePoint | None) -> bool:
    """The complete hour wins: more observations, then newer data."""
    if old is None:
        return True
    return (new.observations, new.data_time) > (old.observations, old.data_time)


@dataclass
class JoinState:
    """Scores, outcomes and attributes seen so far; :meth:`joined` aligns one candidate with live."""

    horizon: timedelta = timedelta(hours=6)
    live: dict[str, dict[ScoreKey, ScorePoint]] = field(default_factory=dict)
    shadow: dict[tuple[str, str], dict[ScoreKey, ScorePoint]] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    attributes: dict[str, Attributes] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"live": 0, "shadow": 0, "outcome": 0, "ignored": 0})
    hours: dict[str, set[tuple[str, str, int]]] = field(default_factory=dict)
    """Per encounter, the scores it holds as (model name, candidate version or "" for live, hour): what one
    encounter's snapshot writes, found without scanning every table."""
    changed: set[str] = field(default_factory=set)
    """Encounters whose join state changed since the changelog last took them (:mod:`vigil_shadow.joinlog`)."""

    # --- feeding ---------------------------------------------------------------------------------------

    def add(self, event: object) -> bool:
        """Feed any event the join cares about; returns False for events it ignores."""
        if isinstance(event, RiskScored):
            return self.add_score(event)
        if isinstance(event, OutcomeRecorded):
            self.add_outcome(event)
            return True
        if isinstance(event, EncounterRecorded | ObservationRecorded | ObservationRetracted):
            return self.add_canonical(event)
        self.counts["ignored"] += 1
        return False

    def add_score(self, score: RiskScored) -> bool:
        """A live (production-stage) or shadow score; other stages are ignored."""
        point = ScorePoint(
            probability=float(score.probability),
            alert=bool(score.alert),
            threshold=float(score.threshold),
            data_time=score.data_time,
            observations=int(score.observations),
            version=str(score.model_version),
            hour=int(score.hour),
        )
        if score.stage is Stage.PRODUCTION:
            table = self.live.setdefault(score.model_name, {})
            version = ""
            self.counts["live"] += 1
        elif score.stage is Stage.SHADOW:
            version = str(score.model_version)
            table = self.shadow.setdefault((score.model_name, version), {})
            self.counts["shadow"] += 1
        else:
            self.counts["ignored"] += 1
            return False
        key = (score.encounter, int(score.hour))
        if _better(point, table.get(key)):
            table[key] = point
            self.hours.setdefault(score.encounter, set()).add((score.model_name, version, int(score.hour)))
            self.changed.add(score.encounter)
        return True

    def add_outcome(self, outcome: OutcomeRecorded) -> None:
        """A delayed outcome; sepsis (with its onset) takes precedence over discharge or death."""
        state = self.outcomes.setdefault(outcome.encounter, Outcome())
        self.counts["outcome"] += 1
        self.changed.add(outcome.encounter)
        if outcome.outcome == "sepsis":
            state.septic = True
            if outcome.onset_at is not None and (state.sepsis_onset is None or outcome.onset_at < state.sepsis_onset):
                state.sepsis_onset = outcome.onset_at
        else:
            state.ended = True
        state.recorded_at = max(filter(None, (state.recorded_at, outcome.recorded_at)))

    def add_canonical(self, event: EncounterRecorded | ObservationRecorded | ObservationRetracted) -> bool:
        """Subgroup attributes: the unit from EncounterRecorded, age and sex observations."""
        if isinstance(event, EncounterRecorded):
            if event.unit is not None:
                self.attributes.setdefault(event.encounter, Attributes()).unit = event.unit
                self.changed.add(event.encounter)
            return True
        if isinstance(event, ObservationRecorded) and event.encounter and event.feature in ("age", "sex"):
            setattr(self.attributes.setdefault(event.encounter, Attributes()), event.feature, float(event.value))
            self.changed.add(event.encounter)
            return True
        return False

    # --- one encounter as a changelog value (vigil_shadow.joinlog) -------------------------------------------

    def holds(self, encounter: str) -> bool:
        """Whether the join knows anything of ``encounter``."""
        return encounter in self.hours or encounter in self.outcomes or encounter in self.attributes

    def encounter_snapshot(self, encounter: str) -> bytes:
        """Everything the join holds of one encounter, as JSON (never pickle: the value is read back from a topic)."""
        scores = []
        for name, version, hour in sorted(self.hours.get(encounter, ())):
            table = self.shadow.get((name, version)) if version else self.live.get(name)
            p = (table or {}).get((encounter, hour))
            if p is not None:
                scores.append(
                    [name, version, hour, p.probability, p.alert, p.threshold, p.data_time, p.observations, p.version]
                )
        outcome = self.outcomes.get(encounter)
        attributes = self.attributes.get(encounter)
        value: dict[str, Any] = {
            "scores": scores,
            "outcome": None
            if outcome is None
            else [outcome.sepsis_onset, outcome.septic, outcome.ended, outcome.recorded_at],
            "attributes": None if attributes is None else [attributes.age, attributes.sex, attributes.unit],
        }
        return orjson.dumps(value)

    def restore_encounter(self, encounter: str, value: bytes) -> None:
        """Install what :meth:`encounter_snapshot` wrote, merged with what is held (the better score wins)."""
        raw = orjson.loads(value)
        for name, version, hour, probability, alert, threshold, data_time, observations, scored_by in raw["scores"]:
            point = ScorePoint(
                probability=float(probability),
                alert=bool(alert),
                threshold=float(threshold),
                data_time=datetime.fromisoformat(data_time),
                observations=int(observations),
                version=str(scored_by),
                hour=int(hour),
            )
            table = self.shadow.setdefault((name, version), {}) if version else self.live.setdefault(name, {})
            key = (encounter, int(hour))
            if _better(point, table.get(key)):
                table[key] = point
                self.hours.setdefault(encounter, set()).add((name, version, int(hour)))
        if raw["outcome"] is not None:
            onset, septic, ended, recorded_at = raw["outcome"]
            state = self.outcomes.setdefault(encounter, Outcome())
            if onset is not None:
                onset_at = datetime.fromisoformat(onset)
                state.sepsis_onset = onset_at if state.sepsis_onset is None else min(state.sepsis_onset, onset_at)
            state.septic = state.septic or bool(septic)
            state.ended = state.ended or bool(ended)
            if recorded_at is not None:
                at = datetime.fromisoformat(recorded_at)
                state.recorded_at = at if state.recorded_at is None else max(state.recorded_at, at)
        if raw["attributes"] is not None:
            age, sex, unit = raw["attributes"]
            held = self.attributes.setdefault(encounter, Attributes())
            held.age = held.age if age is None else float(age)
            held.sex = held.sex if sex is None else float(sex)
            held.unit = held.unit if unit is None else str(unit)

    def snapshot(self) -> JoinState:
        """A copy to compute on in another thread while the event loop keeps feeding this one."""
        return JoinState(
            horizon=self.horizon,
            live={name: dict(table) for name, table in self.live.items()},
            shadow={key: dict(table) for key, table in self.shadow.items()},
            outcomes={e: replace(o) for e, o in self.outcomes.items()},
            attributes={e: replace(a) for e, a in self.attributes.items()},
            counts=dict(self.counts),
        )

    # --- labelling -------------------------------------------------------------------------------------

    def label(self, encounter: str, data_time: datetime) -> float:
        """1.0 / 0.0 for a prediction at ``data_time``; NaN when the encounter is censored."""
        outcome = self.outcomes.get(encounter)
        if outcome is None or not outcome.known:
            return float("nan")
        if outcome.septic:
            if outcome.sepsis_onset is None:
                raise ValueError("a septic outcome without an onset time")
            return 1.0 if data_time >= outcome.sepsis_onset - self.horizon else 0.0
        return 0.0

    # --- reading ---------------------------------------------------------------------------------------

    def candidates(self) -> list[tuple[str, str]]:
        """(model name, version) of every candidate seen, sorted."""
        return sorted(self.shadow)

    def joined(
        self,
        model_name: str,
        version: str,
        *,
        window_start: datetime | None = None,
        window_end: datetime | None = None,
    ) -> Joined:
        """The candidate's and live scores on their common encounter-hours, with labels.

        Rows are those with ``window_start <= data_time < window_end`` (the candidate's data time).
        """
        cand = self.shadow.get((model_name, version), {})
        live = self.live.get(model_name, {})
        keys = sorted(
            k
            for k, p in cand.items()
            if k in live
            and (window_start is None or p.data_time >= window_start)
            and (window_end is None or p.data_time < window_end)
        )
        encounters = sorted({k[0] for k in keys})
        index = {e: i for i, e in enumerate(encounters)}
        n = len(keys)
        c_points = [cand[k] for k in keys]
        l_points = [live[k] for k in keys]
        enc = np.fromiter((index[k[0]] for k in keys), dtype=np.int64, count=n)
        hour = np.fromiter((k[1] for k in keys), dtype=np.int64, count=n)
        data_time = np.array([p.data_time.replace(tzinfo=None) for p in c_points], dtype="datetime64[us]")
        label = np.fromiter((self.label(k[0], p.data_time) for k, p in zip(keys, c_points, strict=True)), float, n)
        live_versions = sorted({p.version for p in l_points})
        return Joined(
            model_name=model_name,
            candidate_version=version,
            live_versions=live_versions,
            encounters=encounters,
            enc=enc,
            hour=hour,
            data_time=data_time,
            label=label,
            p_live=np.fromiter((p.probability for p in l_points), float, n),
            p_cand=np.fromiter((p.probability for p in c_points), float, n),
            alert_live=np.fromiter((p.alert for p in l_points), bool, n),
            alert_cand=np.fromiter((p.alert for p in c_points), bool, n),
            threshold_live=l_points[-1].threshold if l_points else float("nan"),
            threshold_cand=c_points[-1].threshold if c_points else float("nan"),
            attributes=[self.attributes.get(e, Attributes()) for e in encounters],
            septic=np.array([bool(self.outcomes.get(e, Outcome()).septic) for e in encounters], dtype=bool),
        )
