"""The evidence-driven promotion policy: the criteria a shadow candidate must meet.

The report says exactly which criteria pass and which fail; it is the evidence snapshot stored with every
decision.

Keys read from ``ComparisonSummarized.metrics`` (the shadow service emits them; see docs/registry.md):

- ``metrics["auroc_diff"] = {"estimate": float, "ci_low": float, "ci_high": float}``: candidate minus live AUROC
  on the same labelled encounter-hours, with its (e.g. paired bootstrap 95%) confidence interval;
- ``metrics["candidate"]["ece"]``: the candidate's expected calibration error;
- ``metrics["candidate"]["disparity_ratio"]``: the candidate's worst-to-best subgroup performance ratio
  (``metrics["disparity_ratio"]`` accepted as an alias);
- ``metrics["alert_rate_ratio"]``: candidate alert rate divided by live alert rate (when absent, computed from
  ``metrics["candidate"]["alert_rate"] / metrics["live"]["alert_rate"]``).

A missing or non-numeric key fails its criterion: the policy fails closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

HOURS_PER_WEEK = 168.0


class PromotionPolicy(BaseModel):
    """A model's policy; the registry stores per-model overrides of these defaults."""

    model_config = ConfigDict(extra="forbid")

    min_shadow_hours: float = Field(default=2 * HOURS_PER_WEEK, ge=0)
    """The article: shadow mode runs 2-4 weeks before promotion."""
    min_labelled_outcomes: int = Field(default=100, ge=0)
    """Labelled outcomes both the shadow comparison and the registry's own count must reach (a project default)."""
    auroc_margin: float = 0.0
    """The lower CI bound of (candidate - live) AUROC must be above this margin (0: demonstrably not worse...
    strictly, demonstrably better; a negative margin expresses non-inferiority)."""
    max_calibration_error: float = Field(default=0.1, ge=0)
    """The article's concept-drift threshold: calibration error greater than 0.1 alerts."""
    max_disparity_ratio: float = Field(default=1.25, ge=1)
    """The article's fairness threshold: disparity ratio greater than 1.25 alerts."""
    max_alert_rate_ratio: float = Field(default=1.2, ge=0)
    """The candidate may alert at most this factor more often than live (the article: >20% shift alerts)."""
    auto_promote: bool = False
    """Promote an eligible candidate as soon as it is also approved, without waiting for a promote call."""
    auto_rollback: bool = False
    """Roll a production model back on a critical alert of a rollback kind; when false the version is flagged."""
    rollback_alert_kinds: list[str] = Field(default_factory=lambda: ["performance", "calibration"])
    """Alert kinds that count as a critical performance alert for rollback."""
    first_production_without_comparison: bool = True
    """A model's very first production version has no live model to be compared with: approval suffices."""
    adapt_min_new_stays: int = Field(default=500, ge=1)
    """Site adaptation is due once this many new stays have a known outcome since the last adapted candidate
    (or since the production version when there is none): enough new evidence to learn from."""
    adapt_on_alert_kinds: list[str] = Field(
        default_factory=lambda: ["performance", "calibration", "data_drift", "prediction_drift"]
    )
    """An open alert of one of these kinds on the production version makes site adaptation due at once."""


@dataclass(frozen=True)
class Criterion:
    """One line of the report."""

    name: str
    passed: bool | None
    """None: not applicable (e.g. no live model yet)."""
    observed: Any
    required: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "passed": self.passed,
            "observed": self.observed,
            "required": self.required,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class PolicyReport:
    """Whether a candidate is eligible, and why: every criterion with what was observed and required."""

    model_name: str
    version: str
    eligible: bool
    criteria: tuple[Criterion, ...]
    comparison_event_id: str | None
    live_version: str | None
    policy: dict[str, Any]

    @property
    def failed(self) -> list[str]:
        """Names of the criteria that failed."""
        return [c.name for c in self.criteria if c.passed is False]

    def as_dict(self) -> dict[str, Any]:
        """The evidence snapshot stored in the audit log and sent in lifecycle events."""
        return {
            "model_name": self.model_name,
            "version": self.version,
            "eligible": self.eligible,
            "failed": self.failed,
            "criteria": [c.as_dict() for c in self.criteria],
            "comparison_event_id": self.comparison_event_id,
            "live_version": self.live_version,
            "policy": self.policy,
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _dig(metrics: dict[str, Any], *path: str) -> Any:
    node: Any = metrics
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def alert_rate_ratio(metrics: dict[str, Any]) -> float | None:
    """``metrics["alert_rate_ratio"]``, else candidate over live alert rate."""
    direct = _number(metrics.get("alert_rate_ratio"))
    if direct is not None:
        return direct
    candidate = _number(_dig(metrics, "candidate", "alert_rate"))
    live = _number(_dig(metrics, "live", "alert_rate"))
    if candidate is None or live is None:
        return None
    if live == 0:
        return 1.0 if candidate == 0 else math.inf
    return candidate / live


def _at_most(name: str, value: float | None, limit: float, key: str) -> Criterion:
    if value is None:
        return Criterion(name, False, None, f"<= {limit}", f"missing or non-numeric {key}")
    return Criterion(name, value <= limit, value, f"<= {limit}")


def evaluate(
    policy: PromotionPolicy,
    *,
    model_name: str,
    version: str,
    comparison: dict[str, Any] | None,
    live_version: str | None,
    registry_outcomes: int,
    open_critical_alerts: list[str],
) -> PolicyReport:
    """Judge a shadow candidate against the policy.

    ``comparison`` is the newest ComparisonSummarized for this candidate (as a dict), ``live_version`` the
    model's current production version (None when it has none), ``registry_outcomes`` the outcomes the
    registry counted while the candidate was in shadow, ``open_critical_alerts`` the keys of critical alerts
    open on the candidate.
    """
    criteria: list[Criterion] = []
    alerts_ok = not open_critical_alerts
    criteria.append(
        Criterion(
            "no_open_critical_alerts",
            alerts_ok,
            sorted(open_critical_alerts),
            "none open",
            "" if alerts_ok else "critical alerts are open on the candidate",
        )
    )
    if live_version is None and policy.first_production_without_comparison:
        criteria.append(
            Criterion(
                "comparison",
                None,
                None,
                "not applicable",
                "the model has no production version to compare with; clinical approval decides",
            )
        )
        return _report(policy, model_name, version, criteria, comparison, live_version)

    if comparison is None:
        criteria.append(Criterion("comparison", False, None, "a shadow comparison", "no comparison received yet"))
        return _report(policy, model_name, version, criteria, comparison, live_version)
    compared_with = comparison.get("live_version")
    criteria.append(
        Criterion(
            "comparison_against_live",
            compared_with == live_version,
            compared_with,
            f"== {live_version}",
            "" if compared_with == live_version else "the comparison was made against another live version",
        )
    )
    metrics: dict[str, Any] = comparison.get("metrics") or {}

    shadow_hours = _number(comparison.get("shadow_hours"))
    criteria.append(
        Criterion(
            "shadow_duration",
            shadow_hours is not None and shadow_hours >= policy.min_shadow_hours,
            shadow_hours,
            f">= {policy.min_shadow_hours} h",
        )
    )
    shadow_labelled = _number(comparison.get("labelled_encounters"))
    labelled = min(shadow_labelled if shadow_labelled is not None else 0.0, float(registry_outcomes))
    criteria.append(
        Criterion(
            "labelled_outcomes",
            labelled >= policy.min_labelled_outcomes,
            {"shadow_labelled_encounters": shadow_labelled, "registry_outcomes": registry_outcomes},
            f"both >= {policy.min_labelled_outcomes}",
        )
    )
    ci_low = _number(_dig(metrics, "auroc_diff", "ci_low"))
    criteria.append(
        Criterion(
            "auroc_diff_ci_low",
            ci_low is not None and ci_low > policy.auroc_margin,
            {
                "estimate": _number(_dig(metrics, "auroc_diff", "estimate")),
                "ci_low": ci_low,
                "ci_high": _number(_dig(metrics, "auroc_diff", "ci_high")),
            },
            f"ci_low > {policy.auroc_margin}",
            "" if ci_low is not None else "missing or non-numeric metrics['auroc_diff']['ci_low']",
        )
    )
    criteria.append(
        _at_most(
            "calibration_error",
            _number(_dig(metrics, "candidate", "ece")),
            policy.max_calibration_error,
            "metrics['candidate']['ece']",
        )
    )
    disparity = _number(_dig(metrics, "candidate", "disparity_ratio"))
    if disparity is None:
        disparity = _number(metrics.get("disparity_ratio"))
    criteria.append(
        _at_most("disparity_ratio", disparity, policy.max_disparity_ratio, "metrics['candidate']['disparity_ratio']")
    )
    criteria.append(
        _at_most(
            "alert_rate_ratio",
            alert_rate_ratio(metrics),
            policy.max_alert_rate_ratio,
            "metrics['alert_rate_ratio']",
        )
    )
    return _report(policy, model_name, version, criteria, comparison, live_version)


def _report(
    policy: PromotionPolicy,
    model_name: str,
    version: str,
    criteria: list[Criterion],
    comparison: dict[str, Any] | None,
    live_version: str | None,
) -> PolicyReport:
    return PolicyReport(
        model_name=model_name,
        version=version,
        eligible=all(c.passed is not False for c in criteria),
        criteria=tuple(criteria),
        comparison_event_id=(comparison or {}).get("event_id"),
        live_version=live_version,
        policy=policy.model_dump(mode="json"),
    )
