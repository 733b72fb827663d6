"""Data drift on the model's inputs, per feature, against the training reference.

Two quantities per feature, each streamed in stay-hour rows (one row per encounter-hour, NaN where the feature
was not measured), each with a River ADWIN and an effect-size gate:

- **values**: the drift score of the feature's recent values (about ``psi_window_rows`` stay-hours' worth):
  the larger of their PSI against the reference's quantile bins (0.1-0.2 is the usual "moderate", above 0.25
  "large") and their 1-Wasserstein distance to the reference sample in units of the reference's standard
  deviation (Evidently's drift score for large numeric samples). PSI alone misses a clean 10% shift of a wide
  distribution (heart rate +10% is ~0.5 SD, PSI ~0.2); the Wasserstein term catches it, PSI catches changes of
  shape and mass moved into the tails (a unit change). The article's threshold (0.3) applies to the score.
  ADWIN watches the values' probability integral transform under the reference (``u = F_ref(x)``, uniform on
  [0, 1] when nothing changed) and locates the change point.
- **measurement pattern**: the share of stay-hours with a value (``1 - missing rate``; lab ordering) over a
  window sized so the reference would expect ``missing_expected`` measurements in it, compared by relative
  change ``|cur - ref| / max(cur, ref)`` with an absolute floor. ADWIN watches the measured rate per block of
  ``adwin_block_rows`` stay-hours.

Why effect sizes and not ADWIN alone: over a big stream any test finds tiny differences "significant", and
between two hospitals there is no change point inside the stream at all (the new site differs from the first
row). ADWIN's detections are reported as evidence (when the change began), the alert opens on the effect size.
A feature entirely missing both in the reference and in the current window is never reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from vigil_contracts.events import AlertRaised
from vigil_contracts.vocabulary import FEATURE_NAMES
from vigil_drift.alerts import AlertBook
from vigil_drift.config import Thresholds
from vigil_drift.state import ReplayableADWIN
from vigil_scoring.reference import FeatureReference, Reference

SUBJECT = "inputs"
_EPS = 1e-4


def at_time(t: float) -> datetime:
    """A stream time (epoch seconds) as an aware datetime."""
    return datetime.fromtimestamp(float(t), UTC)


def psi(current_counts: np.ndarray, ref_props: np.ndarray) -> np.ndarray:
    """Population stability index of count rows against reference proportions (vectorised over rows)."""
    n = current_counts.sum(axis=-1, keepdims=True)
    cur = (current_counts + 0.5) / (n + 0.5 * current_counts.shape[-1])  # Jeffreys smoothing: no log(0)
    ref = np.maximum(ref_props, _EPS)
    return np.asarray(((cur - ref) * np.log(cur / ref)).sum(axis=-1))


GRID = (np.arange(200) + 0.5) / 200
"""Quantile levels on which the Wasserstein distance is computed (midpoints of 200 equal slices)."""


def quantiles_sorted(x_sorted: np.ndarray, q: np.ndarray = GRID) -> np.ndarray:
    """Quantiles of an already sorted sample (nearest rank: no second sort)."""
    idx = np.minimum((q * len(x_sorted)).astype(np.int64), len(x_sorted) - 1)
    return x_sorted[idx]


def wasserstein_sorted(a_sorted: np.ndarray, b_quantiles: np.ndarray) -> float:
    """1-Wasserstein distance between a sorted sample and another sample's quantiles on ``GRID``."""
    return float(np.abs(quantiles_sorted(a_sorted) - b_quantiles).mean())


@dataclass
class ValueStream:
    """One feature's values: windowed PSI and an ADWIN on the reference PIT."""

    ref: FeatureReference
    th: Thresholds
    tail_bins: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int16))
    tail_values: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    seen: int = 0
    adwin_changes: int = 0
    last_change_at: float | None = None
    last_psi: float | None = None
    last_wasserstein: float | None = None
    last_mean: float | None = None
    last_score: float | None = None

    def __post_init__(self) -> None:
        self.ref_props = np.asarray(self.ref.proportions, dtype=float)
        self.sample = np.asarray(self.ref.sample, dtype=float)
        self.sample_quantiles = quantiles_sorted(np.sort(self.sample))
        self.adwin = ReplayableADWIN(delta=self.th.adwin_delta)
        rate = 1.0 - self.ref.missing_rate
        self.window = int(
            min(max(round(rate * self.th.psi_window_rows), self.th.psi_window_min), self.th.psi_window_max)
        )

    def update(self, values: np.ndarray, times: np.ndarray) -> list[tuple[float, float, dict[str, Any]]]:
        """Add values (in time order); returns (time, drift score, evidence) at each evaluation point."""
        if len(values) == 0:
            return []
        w, every, nb = self.window, self.th.psi_every, len(self.ref_props)
        bins = self.ref.bin_index(values).astype(np.int16)
        # ADWIN on u = F_ref(x): the per-value loop is River's (sub-microsecond per update).
        u = np.searchsorted(self.sample, values, side="right") / max(len(self.sample), 1)
        for i, x in enumerate(u.tolist()):
            self.adwin.update(x)
            if self.adwin.drift_detected:
                self.adwin_changes += 1
                self.last_change_at = float(times[i])
        arr = np.concatenate([self.tail_bins, bins])
        varr = np.concatenate([self.tail_values, values])
        start = self.seen - len(self.tail_bins)  # global index of arr[0]
        ends = np.arange((self.seen // every + 1) * every, self.seen + len(bins) + 1, every)
        ends = ends[ends >= w]
        out: list[tuple[float, float, dict[str, Any]]] = []
        if len(ends):
            local = ends - start
            cum = np.zeros((len(arr) + 1, nb), dtype=np.int32)
            np.cumsum(np.eye(nb, dtype=np.int32)[arr], axis=0, out=cum[1:])
            counts = cum[local] - cum[local - w]
            scores = psi(counts, self.ref_props)
            for j, e in enumerate(local.tolist()):
                window = varr[e - w : e]
                t = float(times[e - 1 - (len(arr) - len(bins))])
                self.last_psi = float(scores[j])
                self.last_mean = float(window.mean())
                sd = self.ref.std or 1.0
                self.last_wasserstein = wasserstein_sorted(np.sort(window), self.sample_quantiles) / (
                    sd if sd > 0 else 1.0
                )
                self.last_score = max(self.last_psi, self.last_wasserstein)
                out.append(
                    (
                        t,
                        self.last_score,
                        {
                            "psi": round(self.last_psi, 4),
                            "window_mean": round(self.last_mean, 4),
                            "reference_mean": self.ref.mean,
                            "wasserstein_sd": round(self.last_wasserstein, 4),
                            "window_shares": [round(float(c) / w, 4) for c in counts[j]],
                            "reference_shares": [round(p, 4) for p in self.ref.proportions],
                            "adwin_changes": self.adwin_changes,
                            "adwin_last_change_at": at_time(self.last_change_at).isoformat()
                            if self.last_change_at
                            else None,
                        },
                    )
                )
        self.tail_bins, self.tail_values = arr[-w:], varr[-w:]
        self.seen += len(bins)
        return out

    def final(self) -> tuple[float, dict[str, Any]] | None:
        """A last judgement over every value seen, for a feature whose window never filled (a short file)."""
        if self.seen >= self.window or self.seen < self.th.psi_final_min:
            return None
        values = self.tail_values
        counts = np.bincount(self.tail_bins, minlength=len(self.ref_props))[None, :]
        self.last_psi = float(psi(counts, self.ref_props)[0])
        sd = self.ref.std or 1.0
        self.last_wasserstein = wasserstein_sorted(np.sort(values), self.sample_quantiles) / (sd if sd > 0 else 1.0)
        self.last_mean = float(values.mean())
        self.last_score = max(self.last_psi, self.last_wasserstein)
        return self.last_score, {
            "psi": round(self.last_psi, 4),
            "wasserstein_sd": round(self.last_wasserstein, 4),
            "window_mean": round(self.last_mean, 4),
            "reference_mean": self.ref.mean,
            "values": int(self.seen),
            "note": "whole stream: fewer values than one window",
        }


@dataclass
class MissingStream:
    """One feature's measured rate per stay-hour against the reference's."""

    ref_rate: float
    th: Thresholds
    tail: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int8))
    seen: int = 0
    block: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int8))
    adwin_changes: int = 0
    last_change_at: float | None = None
    last_rate: float | None = None
    last_change: float | None = None
    ever_measured: bool = False

    def __post_init__(self) -> None:
        if self.ref_rate <= 0:
            self.window = self.th.missing_window_min  # never measured before: any steady measuring is news
        else:
            want = self.th.missing_expected / self.ref_rate
            self.window = int(min(max(math.ceil(want), self.th.missing_window_min), self.th.missing_window_max))
        self.adwin = ReplayableADWIN(delta=self.th.adwin_delta)

    def relative_change(self, rate: float) -> float:
        """|cur - ref| / max(cur, ref), zeroed under the absolute floor (0 when both are 0)."""
        diff = abs(rate - self.ref_rate)
        top = max(rate, self.ref_rate)
        if top <= 0 or diff < self.th.missing_abs_floor:
            return 0.0
        return diff / top

    def update(self, measured: np.ndarray, times: np.ndarray) -> list[tuple[float, float, dict[str, Any]]]:
        """Add the measured indicators of stay-hour rows; returns (time, relative change, evidence) points."""
        if len(measured) == 0:
            return []
        m = measured.astype(np.int8)
        self.ever_measured = self.ever_measured or bool(m.any())
        blk = np.concatenate([self.block, m])
        nb = len(blk) // self.th.adwin_block_rows
        if nb:
            rates = blk[: nb * self.th.adwin_block_rows].reshape(nb, -1).mean(axis=1)
            for i, r in enumerate(rates.tolist()):
                self.adwin.update(r)
                if self.adwin.drift_detected:
                    self.adwin_changes += 1
                    pos = (i + 1) * self.th.adwin_block_rows - 1 - len(self.block)
                    self.last_change_at = float(times[min(max(pos, 0), len(times) - 1)])
        self.block = blk[nb * self.th.adwin_block_rows :]
        w, every = self.window, self.th.missing_every
        arr = np.concatenate([self.tail, m])
        start = self.seen - len(self.tail)
        ends = np.arange((self.seen // every + 1) * every, self.seen + len(m) + 1, every)
        ends = ends[ends >= w]
        out: list[tuple[float, float, dict[str, Any]]] = []
        if len(ends):
            cum = np.concatenate([[0], np.cumsum(arr, dtype=np.int64)])
            local = ends - start
            rates = (cum[local] - cum[local - w]) / w
            for e, rate in zip(local.tolist(), rates.tolist(), strict=True):
                t = float(times[e - 1 - (len(arr) - len(m))])
                self.last_rate = rate
                self.last_change = self.relative_change(rate)
                out.append(
                    (
                        t,
                        self.last_change,
                        {
                            "measured_rate": round(rate, 5),
                            "reference_measured_rate": round(self.ref_rate, 5),
                            "adwin_changes": self.adwin_changes,
                            "adwin_last_change_at": at_time(self.last_change_at).isoformat()
                            if self.last_change_at
                            else None,
                        },
                    )
                )
        self.tail = arr[-w:]
        self.seen += len(m)
        return out


class InputDriftMonitor:
    """Every feature's value and measurement-pattern drift, and the share of drifted features."""

    def __init__(self, reference: Reference, thresholds: Thresholds, book: AlertBook, features: tuple[str, ...] = ()):
        self.reference = reference
        self.th = thresholds
        self.book = book
        self.features = tuple(f for f in (features or FEATURE_NAMES) if f in reference.features)
        self.values = {
            f: ValueStream(reference.features[f], thresholds) for f in self.features if reference.features[f].measured
        }
        self.missing = {f: MissingStream(1.0 - reference.features[f].missing_rate, thresholds) for f in self.features}
        self.rows_seen = 0
        self.last_share: float | None = None
        self.readings = np.zeros(len(self.features))
        self.reading_rows = 0

    def update(self, rows: np.ndarray, times: np.ndarray, counts: np.ndarray | None = None) -> list[AlertRaised]:
        """Add stay-hour rows (n x features, NaN = not measured, in ``self.features`` order) in time order.

        ``times`` are epoch seconds of each row; ``counts`` (readings per cell) feed the frequency gauge.
        """
        skip = max(0, min(len(rows), self.th.warmup_rows - self.rows_seen))
        self.rows_seen += len(rows)
        rows, times = rows[skip:], times[skip:]
        if counts is not None:
            counts = counts[skip:]
        if len(rows) == 0:
            return []
        measured = np.isfinite(rows)
        self.readings += (counts if counts is not None else measured).sum(axis=0)
        self.reading_rows += len(rows)
        points: list[tuple[float, int, str, float, dict[str, Any]]] = []
        for j, f in enumerate(self.features):
            col = measured[:, j]
            if f in self.values and col.any():
                for t, value, ev in self.values[f].update(rows[col, j], times[col]):
                    points.append((t, j, "value", value, ev))
            for t, value, ev in self.missing[f].update(col, times):
                points.append((t, j, "missing", value, ev))
        # interleave every feature's evaluations in stream time, so alerts come out in the order they happened
        points.sort(key=lambda p: (p[0], p[1], p[2]))
        out: list[AlertRaised] = []
        th = self.th
        for t, j, what, value, ev in points:
            f = self.features[j]
            if what == "value":
                a = self.book.observe(
                    kind="data_drift",
                    subject=SUBJECT,
                    feature=f,
                    metric="drift_score",
                    value=value,
                    threshold=th.psi,
                    clear=th.psi_clear,
                    at=at_time(t),
                    window=f"last {self.values[f].window} values",
                    evidence=ev,
                )
            else:
                a = self.book.observe(
                    kind="missingness",
                    subject=SUBJECT,
                    feature=f,
                    metric="measured_rate_change",
                    value=value,
                    threshold=th.missing_change,
                    clear=th.missing_clear,
                    at=at_time(t),
                    window=f"last {self.missing[f].window} stay-hours",
                    evidence=ev,
                )
            if a is not None:
                out.append(a)
        share_alert = self._share(float(times[-1]))
        if share_alert is not None:
            out.append(share_alert)
        return out

    def finish(self, t: float) -> list[AlertRaised]:
        """End of a finite stream (``vigil drift check``): judge the features whose window never filled.

        Rare labs in a short file are judged once over every value seen, so they are not silently skipped.
        """
        out: list[AlertRaised] = []
        for f, stream in self.values.items():
            judged = stream.final()
            if judged is None:
                continue
            value, ev = judged
            a = self.book.observe(
                kind="data_drift",
                subject=SUBJECT,
                feature=f,
                metric="drift_score",
                value=value,
                threshold=self.th.psi,
                clear=self.th.psi_clear,
                at=at_time(t),
                window=f"all {stream.seen} values",
                evidence=ev,
                open_after=1,
            )
            if a is not None:
                out.append(a)
        share = self._share(t)
        return [*out, share] if share is not None else out

    def monitored(self) -> list[str]:
        """Features judged: measured in the reference or seen in the current stream (never missing in both)."""
        return [f for f in self.features if f in self.values or self.missing[f].ever_measured]

    def drifted(self) -> list[str]:
        """Features with an open value or missingness alert."""
        open_keys = set(self.book.open_keys())
        return [
            f
            for f in self.monitored()
            if AlertBook.key_of("data_drift", SUBJECT, f) in open_keys
            or AlertBook.key_of("missingness", SUBJECT, f) in open_keys
        ]

    def _share(self, t: float) -> AlertRaised | None:
        monitored = self.monitored()
        if not monitored:
            return None
        drifted = self.drifted()
        self.last_share = len(drifted) / len(monitored)
        return self.book.observe(
            kind="data_drift",
            subject=SUBJECT,
            metric="drift_share",
            value=self.last_share,
            threshold=self.th.drift_share,
            clear=self.th.drift_share * 0.8,
            at=at_time(t),
            window="features' current windows",
            evidence={"drifted": drifted, "monitored": len(monitored)},
            open_after=1,
        )

    def snapshot(self) -> dict[str, dict[str, float]]:
        """The monitored quantities, per feature, for /metrics."""
        freq = self.readings / max(self.reading_rows, 1)
        snap: dict[str, dict[str, float]] = {}
        for j, f in enumerate(self.features):
            v, m = self.values.get(f), self.missing[f]
            d: dict[str, float] = {"readings_per_stay_hour": float(freq[j])}
            if v is not None and v.last_psi is not None:
                d.update(
                    drift_score=v.last_score or 0.0,
                    psi=v.last_psi,
                    wasserstein_sd=v.last_wasserstein or 0.0,
                    window_mean=v.last_mean or 0.0,
                )
            if v is not None:
                d["adwin_value_changes"] = float(v.adwin_changes)
            if m.last_rate is not None:
                d.update(measured_rate=m.last_rate, measured_rate_change=m.last_change or 0.0)
            d["adwin_missing_changes"] = float(m.adwin_changes)
            snap[f] = d
        return snap
