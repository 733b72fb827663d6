"""The drift service's gauges: every monitored quantity on /metrics (labels: feature, model, quantity only)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from vigil_contracts.events import AlertRaised
from vigil_runtime.metrics import ServiceMetrics


class DriftMetrics:
    """Gauges refreshed from :meth:`DriftCore.snapshot` after each batch, and alert counters."""

    def __init__(self, base: ServiceMetrics) -> None:
        r = base.registry
        self.feature = Gauge(
            "vigil_drift_feature",
            "Per-feature drift quantities: drift_score, psi, wasserstein_sd, window_mean, measured_rate, "
            "measured_rate_change, readings_per_stay_hour, adwin_value_changes, adwin_missing_changes.",
            ["feature", "quantity"],
            registry=r,
        )
        self.share = Gauge("vigil_drift_share", "Share of monitored features with an open drift alert.", registry=r)
        self.model = Gauge(
            "vigil_drift_model",
            "Per-model quantities: mean_score, alert_rate, *_shift, latency_p99_ms, auroc, ece, error_rate, "
            "*_disparity:<attribute>.",
            ["model", "quantity"],
            registry=r,
        )
        self.open_alerts = Gauge("vigil_drift_open_alerts", "Open alerts by kind.", ["kind"], registry=r)
        self.alerts = Counter("vigil_drift_alerts", "Alert events published.", ["kind", "state"], registry=r)
        self.rows = Counter("vigil_drift_rows_judged", "Stay-hour rows judged by the input detectors.", registry=r)

    def refresh(self, snapshot: dict[str, Any]) -> None:
        """Set every gauge from a core snapshot."""
        for feature, values in snapshot["inputs"].items():
            for q, v in values.items():
                self.feature.labels(feature, q).set(v)
        if snapshot["drift_share"] is not None:
            self.share.set(snapshot["drift_share"])
        for section in ("predictions", "performance"):
            for model, values in snapshot[section].items():
                for q, v in values.items():
                    self.model.labels(model, q).set(v)
        kinds: dict[str, int] = {}
        for key in snapshot["open_alerts"]:
            kinds[key.split(":", 1)[0]] = kinds.get(key.split(":", 1)[0], 0) + 1
        for kind in (
            "data_drift",
            "missingness",
            "prediction_drift",
            "performance",
            "calibration",
            "fairness",
            "latency",
        ):
            self.open_alerts.labels(kind).set(kinds.get(kind, 0))

    def published(self, alerts: list[AlertRaised]) -> None:
        """Count published alert events."""
        for a in alerts:
            self.alerts.labels(a.kind, a.state).inc()
