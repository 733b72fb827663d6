"""Prediction drift (mean score and alert rate against the model's baseline) and event-to-score latency.

The baseline is the model's behaviour on its reference rows (``Reference.scores``). A model shipped without
one is baselined on its own first ``prediction_window`` live scores (and says so in the alerts' evidence).

Latency: the p99 of the scores' own ``latency_ms`` field (arrival of the newest observation in Kafka to the
score's creation) over the last ``latency_window`` scores. Computing it from the events, rather than scraping
the scorer's /metrics histogram, gives an exact percentile rather than a bucket bound (the scorer's buckets
jump from 250 to 500 to 1000 ms, right at the article's threshold), needs no HTTP coupling, and keeps
working over replays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vigil_contracts.events import AlertRaised
from vigil_drift.alerts import AlertBook
from vigil_drift.config import Thresholds
from vigil_drift.inputs import at_time
from vigil_drift.state import ReplayableADWIN
from vigil_scoring.reference import ScoreBaseline


@dataclass
class ScoreBatch:
    """Scores of one model, in time order."""

    model: str
    version: str | None
    probability: np.ndarray
    alert: np.ndarray
    times: np.ndarray
    latency_ms: np.ndarray | None = None


def _ends(seen: int, n: int, every: int, window: int) -> np.ndarray:
    ends = np.arange((seen // every + 1) * every, seen + n + 1, every)
    return ends[ends >= window]


def relative_shift(value: float, baseline: float) -> float:
    """|value - baseline| / baseline (0 when both are 0)."""
    if baseline <= 0:
        return 0.0 if value <= 0 else float("inf")
    return abs(value - baseline) / baseline


class PredictionMonitor:
    """One model's score distribution and latency."""

    def __init__(self, model: str, thresholds: Thresholds, book: AlertBook, baseline: ScoreBaseline | None) -> None:
        self.model = model
        self.th = thresholds
        self.book = book
        self.baseline_mean = baseline.mean_score if baseline else None
        self.baseline_alert_rate = baseline.alert_rate if baseline else None
        self.baseline_source = "reference" if baseline else "first live window"
        self.p = np.empty(0)
        self.a = np.empty(0)
        self.lat = np.empty(0)
        self.seen = 0
        self.lat_seen = 0
        self.adwin = ReplayableADWIN(delta=thresholds.adwin_delta)
        self.adwin_changes = 0
        self.last: dict[str, float] = {}

    def update(self, batch: ScoreBatch) -> list[AlertRaised]:
        """Add one model's scores (in time order); returns the alerts they open or resolve."""
        th = self.th
        out: list[AlertRaised] = []
        n = len(batch.probability)
        if n == 0:
            return out
        for x in batch.probability.tolist():
            self.adwin.update(x)
            if self.adwin.drift_detected:
                self.adwin_changes += 1
        w = th.prediction_window
        p = np.concatenate([self.p, batch.probability.astype(float)])
        a = np.concatenate([self.a, batch.alert.astype(float)])
        start = self.seen - len(self.p)
        if (self.baseline_mean is None or self.baseline_alert_rate is None) and self.seen + n >= w:
            first = w - start
            if first - w >= 0:  # the first full window is in this batch's reach
                if self.baseline_mean is None:
                    self.baseline_mean = float(p[first - w : first].mean())
                if self.baseline_alert_rate is None:
                    self.baseline_alert_rate = float(a[first - w : first].mean())
        for e in (_ends(self.seen, n, th.prediction_every, w) - start).tolist():
            at = at_time(batch.times[e - 1 - (len(p) - n)])
            mean, rate = float(p[e - w : e].mean()), float(a[e - w : e].mean())
            self.last.update(mean_score=mean, alert_rate=rate)
            ev = {"baseline": self.baseline_source, "adwin_changes": self.adwin_changes}
            # The mean score and the alert rate are judged the same way, each against its own baseline.
            checks = (
                ("mean_score", "baseline_mean", mean, self.baseline_mean, th.mean_score_shift, 5),
                ("alert_rate", "baseline_alert_rate", rate, self.baseline_alert_rate, th.alert_rate_shift, None),
            )
            for name, baseline_key, current, baseline, threshold, digits in checks:
                if baseline is None:
                    continue
                shift = relative_shift(current, baseline)
                self.last[f"{name}_shift"] = shift
                alert = self.book.observe(
                    kind="prediction_drift",
                    subject=self.model,
                    metric=f"{name}_shift",
                    value=shift,
                    threshold=threshold,
                    clear=threshold * 0.75,
                    at=at,
                    window=f"last {w} scores",
                    model_version=batch.version,
                    evidence={
                        **ev,
                        name: round(current, 5),
                        baseline_key: round(baseline, digits) if digits is not None else baseline,
                    },
                )
                if alert:
                    out.append(alert)
        self.p, self.a = p[-w:], a[-w:]
        self.seen += n
        if batch.latency_ms is not None:
            out += self._latency(batch)
        return out

    def _latency(self, batch: ScoreBatch) -> list[AlertRaised]:
        th, out = self.th, []
        if batch.latency_ms is None:
            raise ValueError("a latency check needs the batch's latencies")
        n, w = len(batch.latency_ms), th.latency_window
        lat = np.concatenate([self.lat, batch.latency_ms.astype(float)])
        start = self.lat_seen - len(self.lat)
        ends = np.arange(
            (self.lat_seen // th.latency_every + 1) * th.latency_every, self.lat_seen + n + 1, th.latency_every
        )
        for e_global, e in zip(ends.tolist(), (ends - start).tolist(), strict=True):
            if e_global < th.latency_min:
                continue
            window = lat[max(0, e - w) : e]
            p99 = float(np.percentile(window, 99))
            self.last["latency_p99_ms"] = p99
            alert = self.book.observe(
                kind="latency",
                subject=self.model,
                metric="latency_p99_ms",
                value=p99,
                threshold=th.latency_p99_ms,
                clear=th.latency_p99_ms * 0.8,
                at=at_time(batch.times[e - 1 - (len(lat) - n)]),
                window=f"last {len(window)} scores",
                model_version=batch.version,
                evidence={"p50_ms": round(float(np.percentile(window, 50)), 2), "max_ms": float(window.max())},
            )
            if alert:
                out.append(alert)
        self.lat = lat[-w:]
        self.lat_seen += n
        return out
