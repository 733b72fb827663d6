"""One feature pipeline for training and serving: an incremental per-encounter state and its offline twin.

Serving (the scorer) feeds canonical events into :class:`EncounterState` one at a time and asks for the feature
vector at any moment; training runs :func:`offline_features` over PhysioNet-format hourly rows. Both compute the
same raw statistics (:class:`_Raw`) and turn them into features with the same function (:func:`_assemble`), and
the parity test streams 500+ set A stays through the state hour by hour and asserts bit-equality with the
offline rows.

Time is bucketed in whole hours since ICU admission (``hour = floor((observed_at - icu_admitted_at) / 1 h)``), the
grid of the PhysioNet rows. Within an hour bucket the latest reading (by observed time) is the hour's value, as a
PhysioNet row holds one value per hour. Features at hour ``h`` use the readings of buckets ``<= h`` only.

Features (``FEATURE_SET_VERSION`` names this list; change it whenever a definition changes):

- per vital sign (heart rate, SpO2, temperature, SBP, MAP, DBP, respiratory rate): the last value, hours since it
  was measured, its change from the previous measured value, mean/min/max over the last 6 and 24 hours and the
  number of measured hours in the last 24 hours;
- per laboratory value (26 labs): the last value, hours since measured, change from the previous value and the
  number of hours it was measured so far (how often a lab is ordered is a clinician's signal of concern);
- age, sex, hours since ICU admission;
- derived from the last values: shock index, pulse pressure, BUN/creatinine ratio, a partial SOFA (platelets,
  bilirubin, creatinine, MAP), the SIRS criteria count and a partial qSOFA (no mental status in the data).

Deliberately absent: end-tidal CO2 (never measured in set A), the ICU unit flags and the hospital-to-ICU
admission delay (HospAdmTime). Those describe one hospital's organisation and coding rather than the patient, and
are known not to transfer between sites. Missing values stay NaN (the gradient-boosted model routes them natively;
"never measured" is itself informative).
"""

from __future__ import annotations

import bisect
import math
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from vigil_contracts.events import EncounterRecorded, ObservationRecorded, ObservationRetracted
from vigil_contracts.vocabulary import BY_COLUMN, LABS, VITALS

FEATURE_SET_VERSION = "physionet-hourly-v1"
"""Version of the feature definitions; a model package declares the version it was trained with."""

WINDOWS: tuple[int, ...] = (6, 24)
"""Window lengths in hours (the current hour included) of the vital signs' summaries."""

WINDOWED: tuple[str, ...] = tuple(m.name for m in VITALS if m.name != "etco2")
"""Vital signs with window summaries (EtCO2 is never measured in set A, so it carries no signal to learn)."""

CUMULATIVE: tuple[str, ...] = tuple(m.name for m in LABS)
"""Laboratory values: last value, staleness, change and cumulative measurement count."""

USED: tuple[str, ...] = WINDOWED + CUMULATIVE

DERIVED: tuple[str, ...] = (
    "shock_index",
    "pulse_pressure",
    "bun_creatinine_ratio",
    "sofa_partial",
    "sirs_count",
    "qsofa_partial",
)


def _columns() -> tuple[str, ...]:
    cols: list[str] = []
    for name in WINDOWED:
        cols += [f"{name}_last", f"{name}_hours_since", f"{name}_delta"]
        for w in WINDOWS:
            cols += [f"{name}_mean_{w}h", f"{name}_min_{w}h", f"{name}_max_{w}h"]
        cols.append(f"{name}_count_{WINDOWS[-1]}h")
    for name in CUMULATIVE:
        cols += [f"{name}_last", f"{name}_hours_since", f"{name}_delta", f"{name}_count"]
    cols += ["age", "sex", "icu_hours"]
    cols += list(DERIVED)
    return tuple(cols)


FEATURE_COLUMNS: tuple[str, ...] = _columns()
"""The model's input columns, in order."""

_INDEX = {c: i for i, c in enumerate(FEATURE_COLUMNS)}
_DEMOGRAPHIC = ("age", "sex")


def _groups() -> dict[str, tuple[str, ...]]:
    vitals_last = [f"{n}_{s}" for n in WINDOWED for s in ("last", "delta")]
    vitals_window = [f"{n}_{s}_{w}h" for n in WINDOWED for w in WINDOWS for s in ("mean", "min", "max")]
    labs_last = [f"{n}_{s}" for n in CUMULATIVE for s in ("last", "delta")]
    measurement = [f"{n}_hours_since" for n in USED]
    measurement += [f"{n}_count_{WINDOWS[-1]}h" for n in WINDOWED] + [f"{n}_count" for n in CUMULATIVE]
    groups = {
        "vital_last": vitals_last,
        "vital_window": vitals_window,
        "lab_last": labs_last,
        "measurement": measurement,
        "derived": list(DERIVED),
        "context": ["age", "sex", "icu_hours"],
    }
    return {k: tuple(c for c in FEATURE_COLUMNS if c in set(v)) for k, v in groups.items()}


FEATURE_GROUPS: dict[str, tuple[str, ...]] = _groups()
"""A partition of FEATURE_COLUMNS into the groups of the transfer study (docs/model.md): last values and changes
of vital signs and of labs, the vital signs' window summaries, the measurement pattern (hours since measured,
measured hours in 24 h, hours a lab was measured so far: they describe a site's charting and ordering habits as
much as the patient), the derived bedside-score parts and the context (age, sex, hours since admission)."""


def group_columns(groups: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The FEATURE_COLUMNS of the named groups, in column order; an unknown group name is an error."""
    unknown = set(groups) - set(FEATURE_GROUPS)
    if unknown:
        raise ValueError(f"unknown feature groups {sorted(unknown)}; known: {sorted(FEATURE_GROUPS)}")
    chosen = {c for g in groups for c in FEATURE_GROUPS[g]}
    return tuple(c for c in FEATURE_COLUMNS if c in chosen)


@dataclass
class _Raw:
    """Raw per-row statistics both paths compute; :func:`_assemble` turns them into FEATURE_COLUMNS."""

    n: int
    hour: np.ndarray
    """Hour the features are taken at (float64, NaN when unknown)."""
    last: dict[str, np.ndarray]
    last_hour: dict[str, np.ndarray]
    prev: dict[str, np.ndarray]
    count: dict[str, np.ndarray]
    win_sum: dict[tuple[str, int], np.ndarray]
    win_count: dict[tuple[str, int], np.ndarray]
    win_min: dict[tuple[str, int], np.ndarray]
    win_max: dict[tuple[str, int], np.ndarray]
    age: np.ndarray
    sex: np.ndarray


def _points(values: np.ndarray, cuts: tuple[float, ...], *, below: bool) -> np.ndarray:
    """SOFA-style points: one per cut passed (``below``: value < cut counts); NaN scores 0."""
    pts = np.zeros(values.shape, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        for c in cuts:
            pts += (values < c) if below else (values >= c)
    return pts


def _assemble(raw: _Raw) -> np.ndarray:
    """The feature matrix (float32, rows x FEATURE_COLUMNS) from raw statistics: the one place features are defined."""
    out = np.full((raw.n, len(FEATURE_COLUMNS)), np.nan, dtype=np.float64)
    h = raw.hour
    with np.errstate(invalid="ignore", divide="ignore"):
        for name in USED:
            out[:, _INDEX[f"{name}_last"]] = raw.last[name]
            out[:, _INDEX[f"{name}_hours_since"]] = h - raw.last_hour[name]
            out[:, _INDEX[f"{name}_delta"]] = raw.last[name] - raw.prev[name]
        for name in WINDOWED:
            for w in WINDOWS:
                cnt = raw.win_count[(name, w)]
                has = cnt > 0
                mean = raw.win_sum[(name, w)] / np.where(has, cnt, 1)
                out[:, _INDEX[f"{name}_mean_{w}h"]] = np.where(has, mean, np.nan)
                out[:, _INDEX[f"{name}_min_{w}h"]] = np.where(has, raw.win_min[(name, w)], np.nan)
                out[:, _INDEX[f"{name}_max_{w}h"]] = np.where(has, raw.win_max[(name, w)], np.nan)
            out[:, _INDEX[f"{name}_count_{WINDOWS[-1]}h"]] = raw.win_count[(name, WINDOWS[-1])]
        for name in CUMULATIVE:
            out[:, _INDEX[f"{name}_count"]] = raw.count[name]
        out[:, _INDEX["age"]] = raw.age
        out[:, _INDEX["sex"]] = raw.sex
        out[:, _INDEX["icu_hours"]] = h
        last = raw.last
        hr, sbp, dbp, mean_ap = last["heart_rate"], last["sbp"], last["dbp"], last["map"]
        resp, temp, wbc = last["resp_rate"], last["temperature"], last["wbc"]
        out[:, _INDEX["shock_index"]] = np.where(sbp > 0, hr / sbp, np.nan)
        out[:, _INDEX["pulse_pressure"]] = sbp - dbp
        out[:, _INDEX["bun_creatinine_ratio"]] = np.where(
            last["creatinine"] > 0, last["bun"] / last["creatinine"], np.nan
        )
        out[:, _INDEX["sofa_partial"]] = (
            _points(last["platelets"], (150, 100, 50, 20), below=True)
            + _points(last["bilirubin_total"], (1.2, 2.0, 6.0, 12.0), below=False)
            + _points(last["creatinine"], (1.2, 2.0, 3.5, 5.0), below=False)
            + _points(mean_ap, (70,), below=True)
        )
        out[:, _INDEX["sirs_count"]] = (
            (hr > 90).astype(np.float64) + (resp > 20) + ((temp > 38) | (temp < 36)) + ((wbc > 12) | (wbc < 4))
        )
        out[:, _INDEX["qsofa_partial"]] = (resp >= 22).astype(np.float64) + (sbp <= 100)
    return out.astype(np.float32)


# --- offline (vectorised) ------------------------------------------------------------------------


def _window(x: np.ndarray, pos: np.ndarray, start: np.ndarray, w: int) -> np.ndarray:
    """Rows of the last ``w`` grid positions of each position (NaN before the stay's start), C-contiguous."""
    pad = np.concatenate([np.full(w - 1, np.nan), x])
    view = sliding_window_view(pad, w)  # row i covers positions i-w+1 .. i
    first = pos - (w - 1)
    mask = (first[:, None] + np.arange(w)[None, :]) >= start[:, None]
    return np.ascontiguousarray(np.where(mask, view, np.nan))


def _sequential_sum(m: np.ndarray) -> np.ndarray:
    """Row sums of the non-NaN entries, added left to right (oldest hour first).

    The order is spelled out, not left to numpy's pairwise summation, so the incremental state (which adds the
    same values in the same order with Python floats, both IEEE double) gives bit-identical sums.
    """
    total = np.zeros(m.shape[0])
    for k in range(m.shape[1]):
        col = m[:, k]
        total = np.where(np.isnan(col), total, total + col)
    return total


def offline_features(df: pd.DataFrame) -> pd.DataFrame:
    """FEATURE_COLUMNS (float32) for PhysioNet-format hourly rows, in the input's row order and index.

    Row ``r`` equals what :class:`EncounterState` gives after applying that stay's events (see
    :func:`vigil_scoring.physionet.stay_events`) up to row r's hour, taken at that hour. Stays are told apart by
    ``patient_id``; hours within a stay must be unique but need not be contiguous.
    """
    n = len(df)
    if n == 0:
        return pd.DataFrame(np.zeros((0, len(FEATURE_COLUMNS)), dtype=np.float32), columns=list(FEATURE_COLUMNS))
    codes, _ = pd.factorize(df["patient_id"], sort=False)
    hours = df["hour"].to_numpy(dtype=np.int64)
    order = np.lexsort((hours, codes))
    c_sorted, h_sorted = codes[order], hours[order]
    if np.any((np.diff(c_sorted) == 0) & (np.diff(h_sorted) == 0)):
        raise ValueError("duplicate (patient_id, hour) rows")
    # A full hourly grid per stay from its first to its last hour, so windows are in hours, not rows.
    new_stay = np.r_[True, np.diff(c_sorted) != 0]
    stay_idx = np.cumsum(new_stay) - 1
    first_h = h_sorted[new_stay]
    last_h = h_sorted[np.r_[np.flatnonzero(new_stay)[1:] - 1, n - 1]]
    lengths = last_h - first_h + 1
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    total = int(lengths.sum())
    row_pos = offsets[stay_idx] + (h_sorted - first_h[stay_idx])
    grid_stay = np.repeat(np.arange(len(lengths)), lengths)
    start = offsets[grid_stay]
    pos = np.arange(total)
    grid_hour = (first_h[grid_stay] + (pos - start)).astype(np.float64)

    def grid(column: str) -> np.ndarray:
        g = np.full(total, np.nan)
        if column in df:
            g[row_pos] = df[column].to_numpy(dtype=np.float64)[order]
        return g

    last: dict[str, np.ndarray] = {}
    last_hour: dict[str, np.ndarray] = {}
    prev: dict[str, np.ndarray] = {}
    count: dict[str, np.ndarray] = {}
    win_sum: dict[tuple[str, int], np.ndarray] = {}
    win_count: dict[tuple[str, int], np.ndarray] = {}
    win_min: dict[tuple[str, int], np.ndarray] = {}
    win_max: dict[tuple[str, int], np.ndarray] = {}
    by_name = {m.name: m.column for m in BY_COLUMN.values()}
    for name in USED:
        x = grid(by_name[name])
        valid = ~np.isnan(x)
        acc = np.maximum.accumulate(np.where(valid, pos, -1))
        has = acc >= start
        acc_safe = np.where(has, acc, 0)
        last[name] = np.where(has, x[acc_safe], np.nan)
        last_hour[name] = np.where(has, grid_hour[acc_safe], np.nan)
        before = np.r_[-1, acc[:-1]]  # the last valid position strictly before each position
        p_prev = before[acc_safe]
        has_prev = has & (p_prev >= start)
        prev[name] = np.where(has_prev, x[np.where(has_prev, p_prev, 0)], np.nan)
        csum = np.cumsum(valid)
        count[name] = (csum - np.where(start > 0, csum[np.maximum(start - 1, 0)], 0)).astype(np.float64)
        if name in WINDOWED:
            for w in WINDOWS:
                m = _window(x, pos, start, w)
                win_sum[(name, w)] = _sequential_sum(m)
                win_count[(name, w)] = (~np.isnan(m)).sum(axis=1).astype(np.float64)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    win_min[(name, w)] = np.nanmin(m, axis=1)
                    win_max[(name, w)] = np.nanmax(m, axis=1)

    def per_stay_first(column: str) -> np.ndarray:
        if column not in df:
            return np.full(total, np.nan)
        first = pd.Series(df[column].to_numpy(dtype=np.float64)[order]).groupby(stay_idx).first().to_numpy()
        return first[grid_stay]

    raw = _Raw(
        n=total,
        hour=grid_hour,
        last=last,
        last_hour=last_hour,
        prev=prev,
        count=count,
        win_sum=win_sum,
        win_count=win_count,
        win_min=win_min,
        win_max=win_max,
        age=per_stay_first("Age"),
        sex=per_stay_first("Gender"),
    )
    feats = _assemble(raw)[row_pos]
    result = np.empty_like(feats)
    result[order] = feats
    return pd.DataFrame(result, columns=list(FEATURE_COLUMNS), index=df.index)


# --- incremental (serving) -----------------------------------------------------------------------

_US_PER_HOUR = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def _micros(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // _ONE_US  # exact integer arithmetic on the timedelta


def _from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _raw_layout() -> tuple[str, ...]:
    """Names of the raw statistics in the order :meth:`EncounterState._raw` lists them (same loops)."""
    keys = ["hour", *_DEMOGRAPHIC]
    for name in USED:
        keys += [f"last:{name}", f"last_hour:{name}", f"prev:{name}", f"count:{name}"]
        if name in WINDOWED:
            for w in WINDOWS:
                keys += [f"sum:{name}:{w}", f"cnt:{name}:{w}", f"min:{name}:{w}", f"max:{name}:{w}"]
    return tuple(keys)


HORIZON_HOURS = 2 * WINDOWS[-1]
"""Hours behind an encounter's newest hour whose readings a compacted state keeps (twice the longest window)."""
KEEP_PER_HOUR = 2
"""Readings kept per feature and hour by compaction: the one holding the hour and one to fall back on."""

_RAW_KEYS = _raw_layout()
_RAW_INDEX = {k: i for i, k in enumerate(_RAW_KEYS)}
_USED_WINDOWED = tuple((name, name in WINDOWED) for name in USED)
_EMPTY: tuple[list[int], list[float]] = ([], [])


class EncounterState:
    """Incremental per-encounter feature state, fed with canonical events in any order.

    Readings are kept per feature, keyed by their source resource and observed time, so a redelivered event is a
    no-op, an amended resource (same resource and time, new version) replaces its value, and a retraction removes
    the resource's readings. Hours are counted from the encounter's ICU admission; until an ``EncounterRecorded``
    gives it, from the earliest reading (then re-bucketed when it arrives).

    The hour buckets (one value per hour and feature, the latest reading of the hour) are updated in place as
    readings arrive, in time order or late; only a retraction or a new hour origin rebuilds them from the
    readings. So an event costs the same at hour 200 of a stay as at hour 2.
    """

    def __init__(self, encounter: str | None = None, patient: str | None = None) -> None:
        """An empty state for one encounter."""
        self.encounter = encounter
        self.patient = patient
        self.icu_admitted_at: datetime | None = None
        self.unit: str | None = None
        # feature -> "type/id|micros" -> (micros, value, seq); seq orders same-time readings by arrival.
        self._readings: dict[str, dict[str, tuple[int, float, int]]] = {}
        self._seq = 0
        self._count = 0
        # Per feature: hour -> (micros, seq, value) of the reading that holds the hour, and the sorted hours with
        # their values. Kept current on apply; features in _dirty are rebuilt from the readings when next read.
        self._best: dict[str, dict[int, tuple[int, int, float]]] = {}
        self._buckets: dict[str, tuple[list[int], list[float]]] = {}
        self._dirty: set[str] = set()
        self._bucket_base: int | None = None
        self._max_hour: int | None = None
        self._max_time: int | None = None
        self._min_time: int | None = None
        self._admitted: tuple[datetime | None, int] = (None, 0)
        # What compaction (see :meth:`compact`) dropped: per feature, measured hours no longer held, and the
        # newest time dropped (a reading at or before it cannot be placed any more and is ignored).
        self._dropped: dict[str, int] = {}
        self._floor: dict[str, int] = {}

    # -- applying events --

    def apply(self, event: ObservationRecorded | ObservationRetracted | EncounterRecorded) -> None:  # noqa: C901 - the per-reading hot path; a split needs bench_model figures first
        """Fold one canonical event into the state (idempotent for redelivered events)."""
        if isinstance(event, ObservationRecorded):
            if self.patient is None:
                self.patient = event.patient
            if self.encounter is None:
                self.encounter = event.encounter
            feature = event.feature
            if feature not in USED and feature not in _DEMOGRAPHIC:
                return
            t = _micros(event.observed_at)
            floor = self._floor.get(feature)
            if floor is not None and t <= floor:
                return  # older than what compaction kept: its hour's bucket is summarised, not held
            source = event.source
            rkey = f"{source.resource_type}/{source.resource_id}|{t}"
            per = self._readings.get(feature)
            if per is None:
                per = self._readings[feature] = {}
            value = float(event.value)
            old = per.get(rkey)
            if old is not None and old[1] == value:
                return  # a redelivery: nothing changes
            if old is None:
                self._count += 1
            self._seq += 1
            seq = self._seq
            per[rkey] = (t, value, seq)
            # None means "not known" (after a retraction, or no reading yet): recomputed when next read.
            if self._max_time is not None and t > self._max_time:
                self._max_time = t
            if self._min_time is not None and t < self._min_time:
                self._min_time = t
            base = self._base()
            if base is None or base != self._bucket_base or feature in self._dirty:
                self._dirty.add(feature)  # rebuilt when next read
                return
            hr = (t - base) // _US_PER_HOUR
            best = self._best.get(feature)
            if best is None:
                best = self._best[feature] = {}
                self._buckets[feature] = ([], [])
            hours, values = self._buckets[feature]
            held = best.get(hr)
            if held is None:
                best[hr] = (t, seq, value)
                if not hours or hr > hours[-1]:
                    hours.append(hr)
                    values.append(value)
                else:
                    i = bisect.bisect_left(hours, hr)
                    hours.insert(i, hr)
                    values.insert(i, value)
                if self._max_hour is None or hr > self._max_hour:
                    self._max_hour = hr
            elif (t, seq) > held[:2]:
                best[hr] = (t, seq, value)
                values[bisect.bisect_left(hours, hr)] = value
        elif isinstance(event, EncounterRecorded):
            self.encounter = event.encounter
            self.patient = event.patient or self.patient
            if event.icu_admitted_at is not None:
                self.icu_admitted_at = event.icu_admitted_at
            self.unit = event.unit or self.unit
        elif isinstance(event, ObservationRetracted):
            prefix = f"{event.retracted_resource.resource_type}/{event.retracted_resource.resource_id}|"
            for feature, per in self._readings.items():
                if event.feature is not None and feature != event.feature:
                    continue
                gone = [k for k in per if k.startswith(prefix)]
                for k in gone:
                    del per[k]
                if gone:
                    self._count -= len(gone)
                    self._dirty.add(feature)
                    self._max_time = None  # recomputed on demand
                    self._min_time = None

    # -- reading the state --

    def _times(self) -> list[int]:
        return [r[0] for per in self._readings.values() for r in per.values()]

    def _base(self) -> int | None:
        admitted = self.icu_admitted_at
        if admitted is not None:
            if admitted is not self._admitted[0]:  # converted once per admission time, not once per event
                self._admitted = (admitted, _micros(admitted))
            return self._admitted[1]
        if self._min_time is None and self._count:
            self._min_time = min(self._times())
        return self._min_time

    def _bucketed(self) -> dict[str, tuple[list[int], list[float]]]:
        base = self._base()
        if base != self._bucket_base:
            self._dirty = set(self._readings)
            self._bucket_base = base
        if self._dirty:
            for feature in self._dirty:
                best: dict[int, tuple[int, int, float]] = {}
                for t, v, seq in self._readings.get(feature, {}).values():
                    hr = (t - (base or 0)) // _US_PER_HOUR
                    held = best.get(hr)
                    if held is None or (t, seq) > held[:2]:
                        best[hr] = (t, seq, v)
                hs = sorted(best)
                self._best[feature] = best
                self._buckets[feature] = (hs, [best[x][2] for x in hs])
            self._dirty = set()
            tops = [hours[-1] for hours, _ in self._buckets.values() if hours]
            self._max_hour = max(tops) if tops else None
        return self._buckets

    @property
    def observations(self) -> int:
        """Number of readings applied (redeliveries counted once, retracted ones removed; compaction keeps it)."""
        return self._count

    def compact(self, horizon_hours: int = HORIZON_HOURS, keep_per_hour: int = KEEP_PER_HOUR) -> int:
        """Keep only what the features need; returns how many readings were dropped.

        Per feature: in the hours from ``horizon_hours`` before the newest hour on, the ``keep_per_hour`` latest
        readings of each hour (the one holding it and a fallback for a retraction); before that, the two newest
        measured hours (last and previous value) and the number of other measured hours. Features at any hour from
        the newest minus ``horizon_hours - 24`` on are unchanged (the 24-hour windows, last, previous and count),
        so a snapshot stays small (one 16 MiB bundle of 25,000 readings gave a 1 MB snapshot without this) and a
        state restored from it scores as the state it was taken from. The scorer compacts before each snapshot.
        """
        buckets = self._bucketed()
        newest = self._max_hour
        base = self._bucket_base
        if newest is None or base is None:
            return 0
        cutoff = newest - horizon_hours
        dropped = 0
        for feature, per in self._readings.items():
            hours = buckets.get(feature, _EMPTY)[0]
            if not per or not hours:
                continue
            if len(per) == len(hours) and (len(hours) < 3 or hours[2] >= cutoff):
                # One reading per measured hour and at most two hours before the horizon: the scan below would
                # drop nothing. The common case (hourly charting, a stay younger than the horizon), and the scorer
                # compacts every changed encounter at every checkpoint: the scan doubled a snapshot's cost
                # (set A, 160 stays: 150 us a snapshot uncompacted, 315 us with the scan, between batches).
                continue
            old_hours = [h for h in hours if h < cutoff]
            keep_old = set(old_hours[-2:])
            gone_hours = old_hours[:-2]
            by_hour: dict[int, list[tuple[int, int, str]]] = {}
            for key, (t, _v, seq) in per.items():
                by_hour.setdefault((t - base) // _US_PER_HOUR, []).append((t, seq, key))
            removed: list[str] = []
            floor = self._floor.get(feature)
            for hr, items in by_hour.items():
                if hr < cutoff and hr not in keep_old:
                    removed.extend(k for _t, _q, k in items)
                    end_of_hour = base + (hr + 1) * _US_PER_HOUR - 1
                    floor = end_of_hour if floor is None else max(floor, end_of_hour)
                    continue
                limit = 1 if hr < cutoff else keep_per_hour
                if len(items) > limit:
                    items.sort()
                    removed.extend(k for _t, _q, k in items[:-limit])
            if not removed:
                continue
            for key in removed:
                del per[key]
            dropped += len(removed)
            if gone_hours:
                self._dropped[feature] = self._dropped.get(feature, 0) + len(gone_hours)
            if floor is not None:
                self._floor[feature] = floor
            self._dirty.add(feature)
        if dropped:
            self._bucketed()
        return dropped

    @property
    def data_time(self) -> datetime | None:
        """Observed time of the newest reading."""
        if self._max_time is None and self._count:
            self._max_time = max(self._times())
        return None if self._max_time is None else _from_micros(self._max_time)

    @property
    def hour(self) -> int | None:
        """Whole hours since ICU admission of the newest reading (None before any reading)."""
        self._bucketed()
        return self._max_hour

    def hour_values(self) -> dict[str, tuple[list[int], list[float]]]:
        """Per feature, the hours with a value and each hour's value (the latest reading of the hour).

        The very buckets the features are computed from, so rows materialised from them (``vigil dataset build``)
        have the serving hours. Features the state ignores (EtCO2, see ``WINDOWED``) are not in it.
        """
        return {f: (list(h), list(v)) for f, (h, v) in self._bucketed().items() if h}

    def _raw(self, h: int | None) -> list[float]:
        """The raw statistics at hour ``h`` as Python floats, in ``_RAW_KEYS`` order (see :func:`features_many`)."""
        b = self._bucketed()
        nan = math.nan
        out: list[float] = [nan if h is None else float(h)]
        for name in _DEMOGRAPHIC:
            values = b.get(name, _EMPTY)[1]
            # Demographics do not change with time: the latest reading holds whatever the hour asked.
            out.append(values[-1] if values else nan)
        bisect_right, bisect_left = bisect.bisect_right, bisect.bisect_left
        dropped = self._dropped
        for name, windowed in _USED_WINDOWED:
            hours, values = b.get(name, _EMPTY)
            if h is None or not hours:
                k = 0
            elif h >= hours[-1]:
                k = len(hours)  # the common case: scored at (or after) the feature's newest hour
            else:
                k = bisect_right(hours, h)
            gone = dropped.get(name, 0)  # measured hours summarised away by compaction (0 without it)
            if k >= 2:
                out += (values[k - 1], float(hours[k - 1]), values[k - 2], float(k + gone))
            elif k == 1:
                out += (values[0], float(hours[0]), nan, float(1 + gone))
            else:
                out += (nan, nan, nan, 0.0)
            if windowed:
                for w in WINDOWS:
                    j = bisect_left(hours, h - w + 1, 0, k) if k and h is not None else 0
                    if j < k:
                        segment = values[j:k]
                        total = 0.0
                        for v in segment:  # oldest hour first, the order _sequential_sum adds in
                            total += v
                        # min/max keep the first of equal values and replace on a strict comparison, as before.
                        out += (total, float(k - j), min(segment), max(segment))
                    else:
                        out += (0.0, 0.0, nan, nan)
        return out

    def features(self, at_hour: int | None = None) -> np.ndarray:
        """The feature vector (float32, FEATURE_COLUMNS order, NaN for missing) as at ``at_hour`` (default: ``hour``).

        Pass ``at_hour`` to score a later hour with no new reading (time since measurement grows).
        """
        row: np.ndarray = features_many([self], None if at_hour is None else [at_hour])[0]
        return row

    # -- snapshots --

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot; :meth:`from_dict` restores a state that gives identical features."""
        return {
            "v": 1,
            "feature_set_version": FEATURE_SET_VERSION,
            "encounter": self.encounter,
            "patient": self.patient,
            "icu_admitted_at": None if self.icu_admitted_at is None else self.icu_admitted_at.isoformat(),
            "unit": self.unit,
            "seq": self._seq,
            # In no particular order: each reading carries its arrival sequence number, and the buckets are rebuilt
            # from (time, sequence), not from the order of the list.
            "readings": {f: [[k, t, v, q] for k, (t, v, q) in per.items()] for f, per in self._readings.items()},
            "count": self._count,
            "dropped": self._dropped,
            "floor": self._floor,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncounterState:
        """Restore a state from :meth:`to_dict`'s snapshot."""
        s = cls(d.get("encounter"), d.get("patient"))
        at = d.get("icu_admitted_at")
        s.icu_admitted_at = datetime.fromisoformat(at) if at else None
        s.unit = d.get("unit")
        s._seq = int(d.get("seq", 0))
        for f, rows in d.get("readings", {}).items():
            s._readings[f] = {str(k): (int(t), float(v), int(q)) for k, t, v, q in rows}
        held = sum(len(per) for per in s._readings.values())
        s._count = int(d.get("count", held))
        s._dropped = {str(f): int(n) for f, n in d.get("dropped", {}).items()}
        s._floor = {str(f): int(t) for f, t in d.get("floor", {}).items()}
        s._dirty = set(s._readings)
        return s


def features_many(states: list[EncounterState], at_hours: list[int | None] | None = None) -> np.ndarray:
    """Feature vectors of several states in one vectorised pass (float32, shape (len(states), k)).

    Each state is taken at its ``hour`` unless ``at_hours`` gives another; a scorer batching many encounters
    pays the array work once per batch instead of once per encounter.
    """
    hours = (
        [s.hour for s in states]
        if at_hours is None
        else [s.hour if a is None else a for s, a in zip(states, at_hours, strict=True)]
    )
    n = len(states)
    matrix = np.array([s._raw(h) for s, h in zip(states, hours, strict=True)], dtype=np.float64).reshape(
        n, len(_RAW_KEYS)
    )

    def col(key: str) -> np.ndarray:
        return matrix[:, _RAW_INDEX[key]]

    raw = _Raw(
        n=n,
        hour=col("hour"),
        last={m: col(f"last:{m}") for m in USED},
        last_hour={m: col(f"last_hour:{m}") for m in USED},
        prev={m: col(f"prev:{m}") for m in USED},
        count={m: col(f"count:{m}") for m in USED},
        win_sum={(m, w): col(f"sum:{m}:{w}") for m in WINDOWED for w in WINDOWS},
        win_count={(m, w): col(f"cnt:{m}:{w}") for m in WINDOWED for w in WINDOWS},
        win_min={(m, w): col(f"min:{m}:{w}") for m in WINDOWED for w in WINDOWS},
        win_max={(m, w): col(f"max:{m}:{w}") for m in WINDOWED for w in WINDOWS},
        age=col("age"),
        sex=col("sex"),
    )
    return _assemble(raw)
