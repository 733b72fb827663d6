"""The detector core: every monitor behind one object, fed arrays (files) or events (Kafka); no I/O.

``DriftCore.rows / scores / labels`` take numpy arrays and are what ``vigil drift check`` drives;
``on_canonical / on_scores / on_outcomes`` take the live events, turn observations into stay-hour rows and
scores into labelled scores, and call the same array methods. Every method returns the alerts it opened or
resolved, in stream time order.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vigil_contracts.events import (
    AlertRaised,
    EncounterRecorded,
    ObservationRecorded,
    ObservationRetracted,
    OutcomeRecorded,
    RiskScored,
)
from vigil_drift.alerts import AlertBook
from vigil_drift.config import Thresholds
from vigil_drift.inputs import InputDriftMonitor
from vigil_drift.outcomes import Labelled, Labeller, PerformanceMonitor
from vigil_drift.predictions import PredictionMonitor, ScoreBatch
from vigil_drift.state import decode, encode, load_attrs, newest, register, save_attrs
from vigil_scoring.reference import Reference, age_band

__all__ = ["DriftCore", "ScoreBatch", "StayHours"]

HOUR = 3600.0
MAX_GAP_HOURS = 48
"""Silent hours of an encounter filled with all-missing rows at most (a longer gap is a pause, not data)."""


@register
@dataclass
class _Stay:
    admit: float
    hour: int
    cells: dict[str, list[float]] = field(default_factory=dict)
    """feature -> [last value, readings] for the open stay-hour."""


class StayHours:
    """Turns canonical observations into stay-hour rows (PhysioNet's layout) as each hour closes.

    An encounter's hour closes when a reading of a later hour arrives or the stay ends; the silent hours in
    between are all-missing rows (up to ``MAX_GAP_HOURS``). A reading for an hour already closed is late and
    only counted. Hour 0 starts at the ICU admission when ingest sent it, else at the first reading's hour.
    """

    def __init__(self, features: tuple[str, ...], max_stays: int = 20000, dedupe: int = 200000) -> None:
        self.features = features
        self.index = {f: i for i, f in enumerate(features)}
        self.stays: OrderedDict[str, _Stay] = OrderedDict()
        self.admissions: dict[str, float] = {}
        self.max_stays = max_stays
        self.seen_ids: OrderedDict[str, None] = OrderedDict()
        self.dedupe = dedupe
        self.late = 0
        self.duplicates = 0
        self.rows: list[tuple[float, np.ndarray, np.ndarray]] = []

    def _fresh(self, event_id: str) -> bool:
        if event_id in self.seen_ids:
            self.duplicates += 1
            return False
        self.seen_ids[event_id] = None
        if len(self.seen_ids) > self.dedupe:
            self.seen_ids.popitem(last=False)
        return True

    def _close(self, stay: _Stay, until_hour: int) -> None:
        """Emit the open hour and the silent hours before ``until_hour``."""
        last = min(until_hour, stay.hour + 1 + MAX_GAP_HOURS)
        for h in range(stay.hour, last):
            values = np.full(len(self.features), np.nan)
            counts = np.zeros(len(self.features))
            if h == stay.hour:
                for f, (v, c) in stay.cells.items():
                    values[self.index[f]], counts[self.index[f]] = v, c
            self.rows.append((stay.admit + (h + 1) * HOUR, values, counts))
        stay.cells = {}
        stay.hour = until_hour

    def observe(self, o: ObservationRecorded) -> None:
        """Add a reading (features outside the monitored set are ignored)."""
        if o.encounter is None or o.feature not in self.index or not self._fresh(o.event_id):
            return
        t = o.observed_at.timestamp()
        stay = self.stays.get(o.encounter)
        if stay is None:
            admit = self.admissions.get(o.encounter, math.floor(t / HOUR) * HOUR)
            stay = self.stays[o.encounter] = _Stay(admit=admit, hour=max(0, int((t - admit) // HOUR)))
            while len(self.stays) > self.max_stays:
                self.stays.popitem(last=False)
        hour = max(0, int((t - stay.admit) // HOUR))
        if hour < stay.hour:
            self.late += 1
            return
        if hour > stay.hour:
            self._close(stay, hour)
        cell = stay.cells.setdefault(o.feature, [o.value, 0.0])
        cell[0], cell[1] = o.value, cell[1] + 1

    def retract(self, r: ObservationRetracted) -> None:
        """Withdraw a reading from the open hour (a closed hour's row is already counted)."""
        stay = self.stays.get(r.encounter or "")
        if stay is not None and r.feature in stay.cells:
            cell = stay.cells[r.feature]
            cell[1] -= 1
            if cell[1] <= 0:
                del stay.cells[r.feature]

    def encounter(self, e: EncounterRecorded) -> None:
        """Learn the ICU admission time; close the stay when it ends."""
        if e.icu_admitted_at is not None:
            self.admissions[e.encounter] = e.icu_admitted_at.timestamp()
            if len(self.admissions) > self.max_stays * 2:
                self.admissions.pop(next(iter(self.admissions)))
        if e.discharged_at is not None or e.status in ("finished", "cancelled", "entered-in-error"):
            stay = self.stays.pop(e.encounter, None)
            if stay is not None and stay.cells:
                self._close(stay, stay.hour + 1)
            self.admissions.pop(e.encounter, None)

    def drain(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The closed rows so far, in time order: (values, times, counts)."""
        rows, self.rows = sorted(self.rows, key=lambda r: r[0]), []
        n = len(self.features)
        if not rows:
            return np.empty((0, n)), np.empty(0), np.empty((0, n))
        return (
            np.vstack([r[1] for r in rows]),
            np.array([r[0] for r in rows]),
            np.vstack([r[2] for r in rows]),
        )


class DriftCore:
    """Inputs against the production model's reference; predictions, performance and fairness per model."""

    def __init__(
        self,
        reference: Reference,
        *,
        model_name: str | None = None,
        inputs_thresholds: Thresholds | None = None,
        model_thresholds: dict[str, Thresholds] | None = None,
        references: dict[str, Reference] | None = None,
    ) -> None:
        self._setup(reference, model_name, inputs_thresholds, model_thresholds, references)

    def reset(self) -> None:
        """Forget everything learned from the stream (before a restore from the changelog)."""
        self._setup(self.reference, self.model_name, self.inputs_th, self.model_th, self.references)

    def _setup(
        self,
        reference: Reference,
        model_name: str | None,
        inputs_thresholds: Thresholds | None,
        model_thresholds: dict[str, Thresholds] | None,
        references: dict[str, Reference] | None,
    ) -> None:
        self.reference = reference
        self.model_name = model_name
        self.inputs_th = inputs_thresholds or Thresholds()
        self.model_th = dict(model_thresholds or {})
        self.references = dict(references or {})
        if model_name:
            self.references.setdefault(model_name, reference)
        self.book = AlertBook(self.inputs_th.open_after, self.inputs_th.resolve_after, self.inputs_th.critical_factor)
        self.inputs = InputDriftMonitor(reference, self.inputs_th, self.book)
        self.stay_hours = StayHours(self.inputs.features)
        self.predictions: dict[str, PredictionMonitor] = {}
        self.performance: dict[str, PerformanceMonitor] = {}
        self.labeller = Labeller(self.inputs_th.horizon_hours)
        self.seen_scores: OrderedDict[str, None] = OrderedDict()

    def thresholds(self, model: str) -> Thresholds:
        """The model's thresholds (the inputs' when none were configured for it)."""
        return self.model_th.get(model, self.inputs_th)

    def _baseline(self, model: str) -> Any:
        ref = self.references.get(model)
        if ref is None and len(self.references) == 0 and self.model_name is None:
            ref = self.reference  # files: the one reference is the model's
        return ref.scores if ref is not None else None

    # --- arrays ---------------------------------------------------------------------------------------------

    def rows(self, values: np.ndarray, times: np.ndarray, counts: np.ndarray | None = None) -> list[AlertRaised]:
        """Stay-hour rows (n x ``inputs.features``) in time order."""
        return self.inputs.update(values, times, counts)

    def scores(self, batch: ScoreBatch) -> list[AlertRaised]:
        """One model's scores in time order."""
        return self._prediction_monitor(batch.model).update(batch)

    def _prediction_monitor(self, model: str) -> PredictionMonitor:
        mon = self.predictions.get(model)
        if mon is None:
            mon = self.predictions[model] = PredictionMonitor(
                model, self.thresholds(model), self.book, self._baseline(model)
            )
        return mon

    def _performance_monitor(self, model: str) -> PerformanceMonitor:
        mon = self.performance.get(model)
        if mon is None:
            mon = self.performance[model] = PerformanceMonitor(
                model, self.thresholds(model), self.book, self._baseline(model)
            )
        return mon

    def labels(
        self,
        model: str,
        probability: np.ndarray,
        label: np.ndarray,
        alert: np.ndarray,
        times: np.ndarray,
        groups: dict[str, np.ndarray],
        version: str | None = None,
        stays: np.ndarray | None = None,
    ) -> list[AlertRaised]:
        """Labelled scores of one model, in the order their labels became known."""
        return self._performance_monitor(model).update(probability, label, alert, times, groups, version, stays)

    # --- events ---------------------------------------------------------------------------------------------

    def on_canonical(
        self, events: list[ObservationRecorded | ObservationRetracted | EncounterRecorded]
    ) -> list[AlertRaised]:
        """Observations, retractions and encounter updates; judges the stay-hours they close."""
        for e in events:
            if isinstance(e, ObservationRecorded):
                if e.encounter and e.feature == "age":
                    self.labeller.set_group(e.encounter, "age_band", age_band(e.value))
                elif e.encounter and e.feature == "sex":
                    self.labeller.set_group(e.encounter, "sex", "male" if e.value > 0.5 else "female")
                self.stay_hours.observe(e)
            elif isinstance(e, ObservationRetracted):
                self.stay_hours.retract(e)
            else:
                if e.unit:
                    self.labeller.set_group(e.encounter, "unit", e.unit)
                self.stay_hours.encounter(e)
        values, times, counts = self.stay_hours.drain()
        return self.rows(values, times, counts) if len(times) else []

    def on_scores(self, scores: list[RiskScored]) -> list[AlertRaised]:
        """Live scores: prediction drift and latency now, held for labelling until outcomes arrive."""
        fresh = []
        for s in scores:
            if s.event_id in self.seen_scores:
                continue
            self.seen_scores[s.event_id] = None
            if len(self.seen_scores) > 500000:
                self.seen_scores.popitem(last=False)
            fresh.append(s)
        out: list[AlertRaised] = []
        by_model: dict[str, list[RiskScored]] = {}
        for s in sorted(fresh, key=lambda s: s.data_time):
            by_model.setdefault(s.model_name, []).append(s)
        for model, items in by_model.items():
            out += self.scores(
                ScoreBatch(
                    model=model,
                    version=items[-1].model_version,
                    probability=np.array([s.probability for s in items]),
                    alert=np.array([s.alert for s in items]),
                    times=np.array([s.data_time.timestamp() for s in items]),
                    latency_ms=np.array([s.latency_ms for s in items]),
                )
            )
        out += self._labelled(self.labeller.add_scores(fresh, self.inputs_th.fairness_attributes))
        return out

    def on_outcomes(self, outcomes: list[OutcomeRecorded]) -> list[AlertRaised]:
        """Outcomes: label the scores that waited for them and judge performance and fairness."""
        return self._labelled(self.labeller.add_outcomes(outcomes, self.inputs_th.fairness_attributes))

    def _labelled(self, by_model: dict[str, Labelled]) -> list[AlertRaised]:
        out: list[AlertRaised] = []
        for model, lab in by_model.items():
            out += self.labels(
                model,
                np.array(lab.probability),
                np.array(lab.label, dtype=bool),
                np.array(lab.alert, dtype=bool),
                np.array(lab.times),
                {k: np.array(v, dtype=object) for k, v in lab.groups.items()},
                stays=np.array(lab.stays, dtype=object),
            )
        return out

    def snapshot(self) -> dict[str, Any]:
        """Every monitored quantity, for /metrics and the check command's summary."""
        return {
            "inputs": self.inputs.snapshot(),
            "drift_share": self.inputs.last_share,
            "predictions": {m: dict(p.last) for m, p in self.predictions.items()},
            "performance": {m: dict(p.last) for m, p in self.performance.items()},
            "open_alerts": self.book.open_keys(),
            "reference": {
                "format": self.reference.source.get("format", "vigil"),
                "features": len(self.reference.features),
            },
        }

    # --- durable state (vigil_drift.state: explicit JSON, never pickle) ---------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything the detectors learned from the stream, as JSON-able data (between batches)."""
        sh, lab = self.stay_hours, self.labeller
        return {
            "stay_hours": {
                **save_attrs(sh, STAY_HOURS_STATE),
                "seen_ids": encode(newest(sh.seen_ids)),
            },
            "labeller": save_attrs(lab, LABELLER_STATE),
            "book": save_attrs(self.book, ["conditions"]),
            "inputs": {
                **save_attrs(self.inputs, INPUTS_STATE),
                "values": {f: save_attrs(v, VALUE_STATE) for f, v in self.inputs.values.items()},
                "missing": {f: save_attrs(m, MISSING_STATE) for f, m in self.inputs.missing.items()},
            },
            "predictions": {m: save_attrs(p, PREDICTION_STATE) for m, p in self.predictions.items()},
            "performance": {m: save_attrs(p, PERFORMANCE_STATE) for m, p in self.performance.items()},
            "seen_scores": encode(newest(self.seen_scores)),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state` (on a core built from the same settings: reference and thresholds)."""
        load_attrs(self.stay_hours, state["stay_hours"], [*STAY_HOURS_STATE, "seen_ids"])
        load_attrs(self.labeller, state["labeller"], LABELLER_STATE)
        load_attrs(self.book, state["book"], ["conditions"])
        inputs = state["inputs"]
        load_attrs(self.inputs, inputs, INPUTS_STATE)
        for f, saved in inputs["values"].items():
            if f in self.inputs.values:
                load_attrs(self.inputs.values[f], saved, VALUE_STATE)
        for f, saved in inputs["missing"].items():
            if f in self.inputs.missing:
                load_attrs(self.inputs.missing[f], saved, MISSING_STATE)
        for model, saved in state["predictions"].items():
            load_attrs(self._prediction_monitor(model), saved, PREDICTION_STATE)
        for model, saved in state["performance"].items():
            load_attrs(self._performance_monitor(model), saved, PERFORMANCE_STATE)
        self.seen_scores = decode(state["seen_scores"])


# What each part learns from the stream (the rest comes from the settings and the reference at construction).
STAY_HOURS_STATE = ("stays", "admissions", "late", "duplicates")
LABELLER_STATE = ("pending", "outcomes", "groups", "censored_dropped")
INPUTS_STATE = ("rows_seen", "last_share", "readings", "reading_rows")
VALUE_STATE = (
    "tail_bins",
    "tail_values",
    "seen",
    "adwin",
    "adwin_changes",
    "last_change_at",
    "last_psi",
    "last_wasserstein",
    "last_mean",
    "last_score",
)
MISSING_STATE = (
    "tail",
    "seen",
    "block",
    "adwin",
    "adwin_changes",
    "last_change_at",
    "last_rate",
    "last_change",
    "ever_measured",
)
PREDICTION_STATE = (
    "baseline_mean",
    "baseline_alert_rate",
    "baseline_source",
    "p",
    "a",
    "lat",
    "seen",
    "lat_seen",
    "adwin",
    "adwin_changes",
    "last",
)
PERFORMANCE_STATE = (
    "baseline_auroc",
    "baseline_error",
    "baseline_source",
    "baseline_disparity",
    "stays",
    "y",
    "p",
    "a",
    "g",
    "seen",
    "ddm",
    "fhddm",
    "last_detection",
    "detections",
    "last",
)
