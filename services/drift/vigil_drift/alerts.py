"""Alert hygiene: one open alert per condition, hysteresis, deduplication.

Every monitored quantity is fed to :meth:`AlertBook.observe` at each evaluation. A condition opens after
``open_after`` consecutive evaluations beyond its threshold and resolves after ``resolve_after`` consecutive
evaluations inside its (laxer) clear level, so a value hovering at the threshold neither flaps nor repeats.
Event ids are deterministic in (alert_key, episode, state): a replay of the same stream gives the same alerts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from vigil_contracts.events import AlertRaised, Severity, deterministic_id

Kind = Literal["data_drift", "missingness", "prediction_drift", "performance", "calibration", "fairness", "latency"]


@dataclass
class ConditionState:
    """Where one condition stands."""

    open: bool = False
    beyond: int = 0
    inside: int = 0
    episode: int = 0
    opened_at: datetime | None = None
    last_value: float | None = None
    peak: float | None = None
    worst: float | None = None
    """The worst value ever evaluated (for false-alarm margins in reports)."""
    evaluations: int = 0


@dataclass
class AlertBook:
    """The open/resolved state of every condition, and the alert events its transitions produce."""

    open_after: int = 2
    resolve_after: int = 3
    critical_factor: float = 2.0
    conditions: dict[str, ConditionState] = field(default_factory=dict)
    emitted: list[AlertRaised] = field(default_factory=list)

    @staticmethod
    def key_of(kind: str, subject: str, name: str) -> str:
        """The stable alert key: kind, model (or 'inputs'), feature or metric."""
        return f"{kind}:{subject}:{name}"

    def observe(
        self,
        *,
        kind: Kind,
        subject: str,
        value: float,
        threshold: float,
        clear: float,
        at: datetime,
        window: str,
        feature: str | None = None,
        metric: str | None = None,
        higher_is_worse: bool = True,
        model_version: str | None = None,
        evidence: dict[str, Any] | None = None,
        open_after: int | None = None,
    ) -> AlertRaised | None:
        """Feed one evaluation; returns the alert event when the condition opens or resolves, else None."""
        name = feature if feature is not None else metric or "value"
        if feature is not None and metric is not None and kind in ("fairness",):
            name = f"{metric}:{feature}"
        key = self.key_of(kind, subject, name)
        st = self.conditions.setdefault(key, ConditionState())
        st.last_value = value
        st.evaluations += 1
        if st.worst is None or (value > st.worst if higher_is_worse else value < st.worst):
            st.worst = value
        beyond = value >= threshold if higher_is_worse else value <= threshold
        inside = value < clear if higher_is_worse else value > clear
        st.beyond = st.beyond + 1 if beyond else 0
        st.inside = st.inside + 1 if inside else 0
        state: Literal["open", "resolved"] | None = None
        if not st.open and st.beyond >= (open_after or self.open_after):
            st.open, st.episode, st.opened_at, st.peak, state = True, st.episode + 1, at, value, "open"
        elif st.open:
            st.peak = max(st.peak or value, value) if higher_is_worse else min(st.peak or value, value)
            if st.inside >= self.resolve_after:
                st.open, state = False, "resolved"
        if state is None:
            return None
        ev = dict(evidence or {})
        if state == "resolved":
            ev.setdefault("opened_at", st.opened_at.isoformat() if st.opened_at else None)
            ev.setdefault("peak", st.peak)
        alert = AlertRaised(
            event_id=deterministic_id("alert", key, st.episode, state),
            occurred_at=at,
            key=subject,
            alert_key=key,
            state=state,
            kind=kind,
            severity=self._severity(value, threshold, higher_is_worse) if state == "open" else Severity.INFO,
            model_name=None if subject == "inputs" else subject,
            model_version=model_version,
            feature=feature,
            metric=metric,
            value=float(value),
            threshold=float(threshold),
            window=window,
            evidence=ev,
        )
        self.emitted.append(alert)
        return alert

    def _severity(self, value: float, threshold: float, higher_is_worse: bool) -> Severity:
        if higher_is_worse:
            critical = value >= threshold * self.critical_factor
        else:
            # for a floor (AUROC), critical when the shortfall is as large again as the margin to perfect... keep
            # it simple: twice as far below the threshold as the threshold is below 1.0
            critical = value <= threshold - (1.0 - threshold) * (self.critical_factor - 1.0)
        return Severity.CRITICAL if critical else Severity.WARNING

    def open_keys(self, prefix: str = "") -> list[str]:
        """Keys of the open conditions (optionally those starting with ``prefix``)."""
        return [k for k, s in self.conditions.items() if s.open and k.startswith(prefix)]
