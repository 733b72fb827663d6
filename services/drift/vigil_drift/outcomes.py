"""Concept drift with delayed labels: labelling scores once outcomes arrive, then performance and fairness.

Labelling (PhysioNet's SepsisLabel convention): a score at data time ``t`` for an encounter is positive when
sepsis onset is known and ``t >= onset - horizon`` (6 h); negative once the stay ends without sepsis
(discharged or died); a stay still open is censored (its scores wait, bounded in number).

Over the last ``performance_window`` labelled scores of a model, every ``performance_every`` labels:
exact AUROC (midranks), expected calibration error (10 equal-width bins, the article's 0.1), an error-rate
alert gated by River's DDM and FHDDM on the thresholded errors (a detector fired within the window *and* the
error rate is ``error_rate_increase`` above the baseline), and fairness: per attribute (sex, age band, unit),
sensitivity and AUROC per subgroup, their max/min disparity ratio (the article's 1.25), judged only over
subgroups with ``min_positives`` positives and as many negatives.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from river.drift.binary import DDM, FHDDM

from vigil_contracts.events import AlertRaised, OutcomeRecorded, RiskScored
from vigil_drift.alerts import AlertBook
from vigil_drift.config import Thresholds
from vigil_drift.inputs import at_time
from vigil_drift.state import register
from vigil_scoring.reference import (
    UNKNOWN,
    ScoreBaseline,
    auroc,
    disparities,
    expected_calibration_error,
    subgroup_metrics,
)


@dataclass
class Labelled:
    """Labelled scores of one model, ready for :meth:`PerformanceMonitor.update`."""

    model: str
    probability: list[float] = field(default_factory=list)
    label: list[bool] = field(default_factory=list)
    alert: list[bool] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    stays: list[str] = field(default_factory=list)

    def add(self, p: float, y: bool, a: bool, t: float, groups: dict[str, str], stay: str) -> None:
        """Append one labelled score."""
        self.stays.append(stay)
        self.probability.append(p)
        self.label.append(y)
        self.alert.append(a)
        self.times.append(t)
        for k, v in groups.items():
            self.groups.setdefault(k, []).append(v)


@register
@dataclass
class _Pending:
    time: float
    probability: float
    alert: bool
    model: str


class Labeller:
    """Holds live scores until their encounter's outcome is known, then labels them."""

    def __init__(self, horizon_hours: float = 6.0, max_pending_per_stay: int = 2000, max_stays: int = 50000):
        self.horizon = horizon_hours * 3600.0
        self.max_pending_per_stay = max_pending_per_stay
        self.max_stays = max_stays
        self.pending: OrderedDict[str, OrderedDict[str, _Pending]] = OrderedDict()
        self.outcomes: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        self.groups: dict[str, dict[str, str]] = {}
        self.censored_dropped = 0

    def set_group(self, encounter: str, attribute: str, value: str) -> None:
        """Record a fairness attribute of an encounter (sex, age band, unit)."""
        self.groups.setdefault(encounter, {})[attribute] = value

    def _label(self, encounter: str, t: float) -> bool | None:
        known = self.outcomes.get(encounter)
        if known is None:
            return None
        outcome, onset = known
        if outcome == "sepsis" and onset is not None:
            return t >= onset - self.horizon
        return False

    def _groups_of(self, encounter: str, attributes: tuple[str, ...]) -> dict[str, str]:
        g = self.groups.get(encounter, {})
        return {a: g.get(a, UNKNOWN) for a in attributes}

    def add_scores(self, scores: list[RiskScored], attributes: tuple[str, ...]) -> dict[str, Labelled]:
        """Hold scores (deduplicated by event id) or label them at once when the outcome is already known."""
        out: dict[str, Labelled] = {}
        for s in scores:
            t = s.data_time.timestamp()
            y = self._label(s.encounter, t)
            if y is not None:
                out.setdefault(s.model_name, Labelled(s.model_name)).add(
                    s.probability, y, s.alert, t, self._groups_of(s.encounter, attributes), s.encounter
                )
                continue
            stay = self.pending.setdefault(s.encounter, OrderedDict())
            self.pending.move_to_end(s.encounter)
            stay[s.event_id] = _Pending(t, s.probability, s.alert, s.model_name)
            if len(stay) > self.max_pending_per_stay:
                stay.popitem(last=False)
                self.censored_dropped += 1
            while len(self.pending) > self.max_stays:
                _, dropped = self.pending.popitem(last=False)
                self.censored_dropped += len(dropped)
        return out

    def add_outcomes(self, outcomes: list[OutcomeRecorded], attributes: tuple[str, ...]) -> dict[str, Labelled]:
        """Record outcomes and label the scores waiting for them; sepsis wins over a later discharge."""
        out: dict[str, Labelled] = {}
        for o in outcomes:
            prev = self.outcomes.get(o.encounter)
            if prev is not None and prev[0] == "sepsis":
                continue
            onset = o.onset_at.timestamp() if o.onset_at else None
            if o.outcome == "sepsis" and onset is None:
                onset = o.recorded_at.timestamp()  # no onset given: the time it became known bounds it
            self.outcomes[o.encounter] = (o.outcome, onset)
            self.outcomes.move_to_end(o.encounter)
            while len(self.outcomes) > self.max_stays:
                self.outcomes.popitem(last=False)
            waiting = self.pending.pop(o.encounter, None)
            if not waiting:
                continue
            groups = self._groups_of(o.encounter, attributes)
            for item in sorted(waiting.values(), key=lambda x: x.time):
                y = self._label(o.encounter, item.time)
                if y is None:
                    raise RuntimeError("an outcome with a known label gave no label")
                out.setdefault(item.model, Labelled(item.model)).add(
                    item.probability, y, item.alert, item.time, groups, o.encounter
                )
        return out


class PerformanceMonitor:
    """One model's windowed discrimination, calibration, error rate and fairness on labelled scores."""

    def __init__(self, model: str, thresholds: Thresholds, book: AlertBook, baseline: ScoreBaseline | None):
        self.model = model
        self.th = thresholds
        self.book = book
        self.baseline_auroc = baseline.auroc if baseline else None
        self.baseline_error = baseline.error_rate if baseline else None
        self.baseline_source = "reference" if baseline and baseline.auroc is not None else "first labelled window"
        self.baseline_disparity = dict(baseline.disparity) if baseline else {}
        self.stays = np.empty(0, dtype=object)
        self.y = np.empty(0, dtype=bool)
        self.p = np.empty(0)
        self.a = np.empty(0, dtype=bool)
        self.g: dict[str, np.ndarray] = {k: np.empty(0, dtype=object) for k in thresholds.fairness_attributes}
        self.seen = 0
        self.ddm = DDM()
        self.fhddm = FHDDM()
        self.last_detection: int | None = None
        self.detections = 0
        self.last: dict[str, float] = {}

    def floor(self) -> float | None:
        """The AUROC below which the model is alerted on."""
        if self.baseline_auroc is None:
            return None
        return min(self.th.auroc_min, self.baseline_auroc - self.th.auroc_drop)

    def update(
        self,
        probability: np.ndarray,
        label: np.ndarray,
        alert: np.ndarray,
        times: np.ndarray,
        groups: dict[str, np.ndarray],
        version: str | None = None,
        stays: np.ndarray | None = None,
    ) -> list[AlertRaised]:
        """Add labelled scores (in the order their labels became known); returns opened/resolved alerts.

        ``stays`` (the encounter of each score) lets the guards count positive stays, not only positive hours:
        a septic stay's hours rise and fall together, so 300 positive hours may be only a dozen patients.
        """
        th = self.th
        out: list[AlertRaised] = []
        n = len(probability)
        if n == 0:
            return out
        errors = (np.asarray(alert, dtype=bool) != np.asarray(label, dtype=bool)).tolist()
        for i, err in enumerate(errors):
            self.ddm.update(err)
            self.fhddm.update(err)
            if self.ddm.drift_detected or self.fhddm.drift_detected:
                self.detections += 1
                self.last_detection = self.seen + i
        w = th.performance_window
        keep = max(w, th.fairness_window)
        y = np.concatenate([self.y, np.asarray(label, dtype=bool)])
        p = np.concatenate([self.p, np.asarray(probability, dtype=float)])
        a = np.concatenate([self.a, np.asarray(alert, dtype=bool)])
        g = {
            k: np.concatenate([self.g[k], np.asarray(groups.get(k, np.full(n, "unknown")), dtype=object)])
            for k in self.g
        }
        st = np.concatenate(
            [self.stays, np.asarray(stays if stays is not None else np.arange(self.seen, self.seen + n), dtype=object)]
        )
        start = self.seen - len(self.y)
        ends = np.arange(
            (self.seen // th.performance_every + 1) * th.performance_every, self.seen + n + 1, th.performance_every
        )
        for e_global, e in zip(ends.tolist(), (ends - start).tolist(), strict=True):
            lo = max(0, e - w)
            flo = max(0, e - th.fairness_window)
            wy, wp, wa = y[lo:e], p[lo:e], a[lo:e]
            n_pos = int(wy.sum())
            if n_pos < th.min_positives or len(wy) - n_pos < th.min_positives:
                continue
            if len(pd.unique(st[lo:e][wy])) < th.min_positive_stays:
                continue
            at = at_time(times[e - 1 - (len(y) - n)])
            window = f"last {len(wy)} labelled scores"
            out += self._judge(wy, wp, wa, e_global, at, window, version)
            out += self._fairness(
                y[flo:e], p[flo:e], a[flo:e], {k: v[flo:e] for k, v in g.items()}, st[flo:e], at, version
            )
        self.y, self.p, self.a, self.stays = y[-keep:], p[-keep:], a[-keep:], st[-keep:]
        self.g = {k: v[-keep:] for k, v in g.items()}
        self.seen += n
        return out

    def _judge(self, y, p, a, e_global, at, window, version) -> list[AlertRaised]:  # type: ignore[no-untyped-def]
        th, out = self.th, []
        auc = auroc(y, p)
        ece = expected_calibration_error(y, p) or 0.0
        err = float((a != y).mean())
        if self.baseline_auroc is None and auc is not None:
            self.baseline_auroc = auc
        if self.baseline_error is None:
            self.baseline_error = err
        base_ev: dict[str, Any] = {"positives": int(y.sum()), "n": len(y), "baseline": self.baseline_source}
        self.last.update(ece=ece, error_rate=err)
        floor = self.floor()
        if auc is not None and floor is not None:
            self.last["auroc"] = auc
            out.append(
                self.book.observe(
                    kind="performance",
                    subject=self.model,
                    metric="auroc",
                    value=auc,
                    threshold=floor,
                    clear=floor + 0.02,
                    higher_is_worse=False,
                    at=at,
                    window=window,
                    model_version=version,
                    evidence={**base_ev, "baseline_auroc": self.baseline_auroc},
                )
            )
        out.append(
            self.book.observe(
                kind="calibration",
                subject=self.model,
                metric="ece",
                value=ece,
                threshold=th.ece,
                clear=th.ece * 0.8,
                at=at,
                window=window,
                model_version=version,
                evidence={
                    **base_ev,
                    "mean_score": round(float(p.mean()), 5),
                    "positive_rate": round(float(y.mean()), 5),
                },
            )
        )
        fired = self.last_detection is not None and self.last_detection >= e_global - len(y)
        base_err = self.baseline_error or 0.0
        increase = (err - base_err) / base_err if base_err > 0 else 0.0
        self.last["error_rate_increase"] = increase
        out.append(
            self.book.observe(
                kind="performance",
                subject=self.model,
                metric="error_rate_increase",
                value=increase if fired else min(increase, 0.0),
                threshold=th.error_rate_increase,
                clear=th.error_rate_increase * 0.5,
                at=at,
                window=window,
                model_version=version,
                evidence={
                    **base_ev,
                    "error_rate": round(err, 5),
                    "baseline_error_rate": base_err,
                    "ddm_fhddm_detections": self.detections,
                },
            )
        )
        return [x for x in out if x is not None]

    def _fairness(self, y, p, a, groups, stays, at, version) -> list[AlertRaised]:  # type: ignore[no-untyped-def]
        th, out = self.th, []
        window = f"last {len(y)} labelled scores"
        per_attribute = {
            attr: subgroup_metrics(y, p, a, values, stays, th.min_positives, th.fairness_min_positive_stays)
            for attr, values in groups.items()
        }
        for key, ratio in disparities(per_attribute).items():
            metric, attr = key.split(":", 1)
            reference = self.baseline_disparity.get(key)
            # the disparity the model already had at validation is a known property (its model card); alert when
            # the article's ratio is crossed *and* the disparity grew by ``disparity_growth`` over the reference's
            threshold = max(th.disparity, reference * th.disparity_growth) if reference else th.disparity
            self.last[f"{metric}_disparity:{attr}"] = ratio
            z = None
            judged = ratio
            if metric == "sensitivity":
                # effect size *and* evidence: the best and worst subgroup must differ by fairness_z clustered
                # standard errors, or the ratio of two small noisy sensitivities could open an alert by itself
                rows = [r for r in per_attribute[attr].values() if "sensitivity" in r]
                hi = max(rows, key=lambda r: r["sensitivity"])
                lo = min(rows, key=lambda r: r["sensitivity"])
                se = float(np.hypot(hi.get("sensitivity_se", 0.0), lo.get("sensitivity_se", 0.0)))
                z = (hi["sensitivity"] - lo["sensitivity"]) / se if se > 0 else float("inf")
                if z < th.fairness_z:
                    judged = min(ratio, threshold * 0.999)
            out.append(
                self.book.observe(
                    kind="fairness",
                    subject=self.model,
                    metric=f"{metric}_disparity:{attr}",
                    value=judged,
                    threshold=threshold,
                    clear=1.0 + (threshold - 1.0) * 0.6,
                    at=at,
                    window=window,
                    model_version=version,
                    evidence={
                        "attribute": attr,
                        "reference_disparity": reference,
                        "disparity": round(ratio, 4),
                        "z": None if z is None else round(z, 2),
                        "subgroups": {
                            g: {k: round(v, 4) for k, v in row.items()} for g, row in per_attribute[attr].items()
                        },
                    },
                )
            )
        return [x for x in out if x is not None]
