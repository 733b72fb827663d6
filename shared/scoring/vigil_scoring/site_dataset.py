"""A site's own training rows from the canonical streams: PhysioNet-format hourly rows labelled from outcomes.

The rows are materialised from :class:`~vigil_scoring.features.EncounterState`'s hour buckets, the very buckets
the scorer computes its features from (whole hours since ICU admission, the latest reading of an hour holds it),
so what a model trained on them sees is what serving gives it. A stay streamed from PhysioNet rows
(:func:`vigil_scoring.physionet.stay_events`) comes back as the same rows.

Labels follow the PhysioNet/CinC 2019 rule from the outcome's onset time: ``SepsisLabel`` is 1 from 6 hours
before the onset hour on. A stay whose outcome is not known yet is left out, never labelled negative: an
unlabelled septic stay counted as a negative would teach the model that early sepsis looks healthy.

What the stream cannot give back: ``ICULOS`` is ``hour + 1`` (PhysioNet's own ICULOS starts later than 1 in 37% of
set A stays; a live feed only knows the admission), EtCO2 is not kept by the feature state (never measured in set
A) and hours after the last reading of a stay whose discharge was never reported are not known. Each row also
carries the stay's ``icu_admitted_at``, so adaptation can validate on the latest stays.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vigil_contracts.events import EncounterRecorded, ObservationRecorded, ObservationRetracted, OutcomeRecorded
from vigil_contracts.vocabulary import BY_COLUMN
from vigil_scoring.features import FEATURE_SET_VERSION, EncounterState
from vigil_scoring.physionet import ALL_COLUMNS, MEASUREMENT_COLUMNS

ONE_HOUR = timedelta(hours=1)
LABEL_LEAD_HOURS = 6
"""The challenge labels a septic stay from this many hours before the onset hour t_sepsis."""

COLUMN_OF = {m.name: column for column, m in BY_COLUMN.items()}
DATASET_COLUMNS: tuple[str, ...] = (*ALL_COLUMNS, "icu_admitted_at")
"""PhysioNet's columns plus the stay's ICU admission time (for temporal validation; training ignores it)."""


@dataclass(frozen=True)
class Window:
    """Stays whose ICU admission falls in ``[start, end)``; an open side is unbounded."""

    start: datetime | None = None
    end: datetime | None = None

    def holds(self, t: datetime) -> bool:
        """Whether ``t`` is inside the window."""
        return (self.start is None or t >= self.start) and (self.end is None or t < self.end)


def onset_hour(outcome: OutcomeRecorded, icu_admitted_at: datetime) -> int | None:
    """The onset's hour bucket since ICU admission (the serving bucketing), None unless a sepsis onset is known."""
    if outcome.outcome != "sepsis" or outcome.onset_at is None:
        return None
    return (outcome.onset_at - icu_admitted_at) // ONE_HOUR


_ENCOUNTER_FACTS = ("hospital_admitted_at", "discharged_at", "unit", "icu_admitted_at")


@dataclass
class DatasetBuilder:
    """Folds canonical events and outcomes (in any order, redeliveries harmless) and builds the labelled rows."""

    states: dict[str, EncounterState] = field(default_factory=dict)
    encounters: dict[str, EncounterRecorded] = field(default_factory=dict)
    outcomes: dict[str, OutcomeRecorded] = field(default_factory=dict)
    skipped_events: int = 0
    """Observations without an encounter (they cannot be placed on a stay's hours)."""

    def apply(self, event: ObservationRecorded | ObservationRetracted | EncounterRecorded) -> None:
        """One canonical event from the observations topic."""
        if event.encounter is None:
            self.skipped_events += 1
            return
        state = self.states.get(event.encounter)
        if state is None:
            state = self.states[event.encounter] = EncounterState(event.encounter, event.patient)
        state.apply(event)
        if isinstance(event, EncounterRecorded):
            held = self.encounters.get(event.encounter)
            # The newest update wins (a later one carries the discharge); what it leaves out the other one gives,
            # whichever arrived first.
            if held is None:
                self.encounters[event.encounter] = event
                return
            new, old = (event, held) if event.occurred_at >= held.occurred_at else (held, event)
            fill = {k: getattr(old, k) for k in _ENCOUNTER_FACTS if getattr(new, k) is None}
            self.encounters[event.encounter] = new.model_copy(update=fill)

    def apply_outcome(self, outcome: OutcomeRecorded) -> None:
        """One outcome; a sepsis onset outranks a discharge or death of the same stay (the earliest onset wins)."""
        held = self.outcomes.get(outcome.encounter)
        earlier_onset = (
            held is not None
            and outcome.onset_at is not None
            and held.onset_at is not None
            and outcome.onset_at < held.onset_at
        )
        if held is None or _rank(outcome) > _rank(held) or (earlier_onset and _rank(outcome) == _rank(held)):
            self.outcomes[outcome.encounter] = outcome

    def build(self, window: Window | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The labelled rows of the stays admitted in ``window`` and the counts a manifest reports."""
        window = window or Window()
        frames: list[pd.DataFrame] = []
        counts = {"stays": 0, "labelled_stays": 0, "septic_stays": 0, "no_admission_time": 0, "readings_before": 0}
        for encounter in sorted(self.states):
            state = self.states[encounter]
            admitted = state.icu_admitted_at
            if admitted is None:
                counts["no_admission_time"] += 1
                continue
            if not window.holds(admitted):
                continue
            counts["stays"] += 1
            outcome = self.outcomes.get(encounter)
            if outcome is None or (outcome.outcome == "sepsis" and outcome.onset_at is None):
                continue
            rows, before = stay_rows(state, self.encounters.get(encounter), outcome)
            counts["readings_before"] += before
            if rows.empty:
                continue
            counts["labelled_stays"] += 1
            counts["septic_stays"] += int(rows["SepsisLabel"].max() == 1)
            frames.append(rows)
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(DATASET_COLUMNS))
        stats = {
            **counts,
            "rows": len(df),
            "positive_rows": int(df["SepsisLabel"].sum()) if len(df) else 0,
            "outcome_coverage": round(counts["labelled_stays"] / counts["stays"], 4) if counts["stays"] else None,
            "skipped_events_without_encounter": self.skipped_events,
            "feature_set_version": FEATURE_SET_VERSION,
        }
        return df, stats


def _rank(o: OutcomeRecorded) -> int:
    return 2 if o.outcome == "sepsis" and o.onset_at is not None else 1


def stay_rows(
    state: EncounterState, encounter: EncounterRecorded | None, outcome: OutcomeRecorded
) -> tuple[pd.DataFrame, int]:
    """One stay's PhysioNet rows (hour 0 to its last known hour) and the number of hour buckets before admission."""
    admitted = state.icu_admitted_at
    if admitted is None:
        raise ValueError("the stay has no ICU admission time: its rows have no hour 0")
    values = state.hour_values()
    last = max((hours[-1] for hours, _ in values.values()), default=-1)
    if encounter is not None and encounter.discharged_at is not None:
        # A reported discharge gives the stay's length, quiet last hours included (PhysioNet keeps them as rows).
        last = max(last, math.ceil((encounter.discharged_at - admitted) / ONE_HOUR) - 1)
    n = last + 1
    if n <= 0:
        return pd.DataFrame(columns=list(DATASET_COLUMNS)), 0
    hour = np.arange(n)
    data: dict[str, Any] = {"patient_id": np.full(n, state.encounter, dtype=object), "hour": hour}
    before = 0
    for col in MEASUREMENT_COLUMNS:
        data[col] = np.full(n, np.nan)
    for feature, (hours, vals) in values.items():
        if feature not in COLUMN_OF:
            continue
        col = COLUMN_OF[feature]
        h = np.asarray(hours)
        v = np.asarray(vals, dtype=np.float64)
        if col in ("Age", "Gender"):
            data[col] = np.full(n, v[-1])  # demographics hold for the whole stay (the latest reading, as serving)
            continue
        inside = (h >= 0) & (h < n)
        before += int((h < 0).sum())
        data[col][h[inside]] = v[inside]
    for col in ("Age", "Gender"):
        data.setdefault(col, np.full(n, np.nan))
    unit = encounter.unit if encounter is not None else state.unit
    data["Unit1"] = np.full(n, {"MICU": 1.0, "SICU": 0.0}.get(unit or "", np.nan))
    data["Unit2"] = np.full(n, {"MICU": 0.0, "SICU": 1.0}.get(unit or "", np.nan))
    hosp = encounter.hospital_admitted_at if encounter is not None else None
    data["HospAdmTime"] = np.full(n, np.nan if hosp is None else (hosp - admitted) / ONE_HOUR)
    data["ICULOS"] = (hour + 1).astype(np.float64)
    onset = onset_hour(outcome, admitted)
    label = np.zeros(n, dtype=np.int64) if onset is None else (hour >= onset - LABEL_LEAD_HOURS).astype(np.int64)
    data["SepsisLabel"] = label
    data["icu_admitted_at"] = np.full(n, pd.Timestamp(admitted))
    return pd.DataFrame(data, columns=list(DATASET_COLUMNS)), before


MANIFEST = "manifest.json"
ROWS = "rows.parquet"


def write_dataset(
    df: pd.DataFrame, stats: dict[str, Any], out_dir: Path, *, window: Window, source: dict[str, Any]
) -> dict[str, Any]:
    """Write ``rows.parquet`` and ``manifest.json`` into ``out_dir``; the manifest names no patient or stay.

    ``content_sha256`` digests the rows themselves (sorted, values as written), not the file's bytes, so the
    same rows give the same hash whatever the Parquet writer's version; the model card records it as lineage.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    df = df.sort_values(["patient_id", "hour"], kind="stable").reset_index(drop=True)
    df.to_parquet(out_dir / ROWS, index=False)
    digest = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()
    manifest = {
        "kind": "vigil.site-dataset",
        "window": {
            "from": None if window.start is None else window.start.isoformat(),
            "to": None if window.end is None else window.end.isoformat(),
            "rule": "stays whose ICU admission falls in [from, to)",
        },
        **stats,
        "label_rule": (
            f"SepsisLabel = 1 from {LABEL_LEAD_HOURS} h before the onset hour on (PhysioNet/CinC 2019); "
            "stays without a known outcome are left out"
        ),
        "rows_file": ROWS,
        "content_sha256": digest,
        "source": source,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def manifest_sha256(path: Path) -> str:
    """sha256 of a dataset's manifest file (what a model card cites as the dataset it learned from)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
