"""The comparison as a self-contained HTML report: tables, and matplotlib plots embedded as base64 PNG.

Plots per candidate: ROC of live and candidate, calibration (reliability) curves, score distributions by label,
and alert timelines (alerting encounter-hours per hour of data time).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from vigil_shadow.compare import Comparison

ROWS: tuple[tuple[str, str], ...] = (
    ("auroc", "AUROC"),
    ("utility", "Normalised utility"),
    ("sensitivity", "Sensitivity (hours)"),
    ("ppv", "PPV (hours)"),
    ("specificity", "Specificity (hours)"),
    ("alert_rate", "Alert rate (scored hours)"),
    ("alerts_per_100_patient_days", "Alerts per 100 patient-days"),
    ("ece", "Calibration error (ECE)"),
    ("disparity_ratio", "Disparity ratio (septic stays detected, best/worst group)"),
    ("threshold", "Operating threshold"),
)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _figures(c: Comparison) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = c.plots
    labels = {"live": f"live v{c.live_version}", "candidate": f"candidate v{c.candidate_version}"}
    out = []
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for who in ("live", "candidate"):
        roc = p.get("roc", {}).get(who, {})
        auc = c.metrics.get(who, {}).get("auroc")
        ax.plot(roc.get("fpr", []), roc.get("tpr", []), label=f"{labels[who]} (AUROC {_fmt(auc)})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (labelled encounter-hours)")
    ax.legend(loc="lower right", fontsize=8)
    out.append(_png(fig))
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for who in ("live", "candidate"):
        curve = p.get("calibration", {}).get(who, [])
        ax.plot([b["mean_p"] for b in curve], [b["rate"] for b in curve], marker="o", label=labels[who])
    top = max(
        [
            b[k]
            for who in ("live", "candidate")
            for b in p.get("calibration", {}).get(who, [])
            for k in ("mean_p", "rate")
        ]
        or [1.0]
    )
    top = min(1.0, top * 1.1) or 1.0
    ax.plot([0, top], [0, top], ls=":", c="grey")
    ax.set(xlim=(0, top), ylim=(0, top))
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Calibration (equal-count bins)")
    ax.legend(fontsize=8)
    out.append(_png(fig))
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4), sharey=True)
    distribution = p.get("distribution", {})
    edges = np.asarray(distribution.get("edges", np.linspace(0, 1, 31)), dtype=float)
    for ax, who in zip(axes, ("live", "candidate"), strict=True):
        dist = distribution.get(who, {})
        for kind, colour in (("negative", "tab:blue"), ("positive", "tab:red"), ("censored", "tab:grey")):
            counts = np.asarray(dist.get(kind, []), dtype=float)
            if counts.sum():
                ax.stairs(counts / counts.sum(), edges, label=kind, color=colour)
        threshold = p.get("thresholds", {}).get(who)
        if threshold is not None:
            ax.axvline(threshold, ls="--", c="black", lw=0.8, label="operating threshold")
        ax.set(title=f"Scores: {labels[who]}", xlabel="probability")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("share of hours")
    out.append(_png(fig))
    fig, ax = plt.subplots(figsize=(8.4, 3))
    for who in ("live", "candidate"):
        line = p.get("timeline", {}).get(who)
        if line:
            start = np.datetime64(line["start"])
            counts = np.asarray(line["alerts_per_hour"])
            times = start + np.arange(len(counts)).astype("timedelta64[h]")
            ax.step(times.astype("datetime64[s]").astype(datetime), counts, where="post", label=labels[who])
    ax.set(title="Alert timeline (alerting encounter-hours per hour of data time)", ylabel="alerts")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    out.append(_png(fig))
    return out


def _diff(d: dict[str, Any] | None) -> str:
    d = d or {}
    return f"{_fmt(d.get('estimate'))} [{_fmt(d.get('ci_low'))}, {_fmt(d.get('ci_high'))}]"


def _section(c: Comparison) -> str:
    m = c.metrics
    rows = "".join(
        f"<tr><th>{label}</th><td>{_fmt(m['live'].get(key))}</td><td>{_fmt(m['candidate'].get(key))}</td></tr>"
        for key, label in ROWS
    )
    level = m.get("bootstrap", {}).get("level", 0.95)
    sub_rows = []
    for attribute, groups in m.get("subgroups", {}).items():
        for group, e in groups.items():
            sub_rows.append(
                f"<tr><td>{html.escape(attribute)}</td><td>{html.escape(group)}</td><td>{e['hours']}</td>"
                f"<td>{e['positives']}</td><td>{_fmt(e['live']['sensitivity'])}</td>"
                f"<td>{_fmt(e['candidate']['sensitivity'])}</td><td>{_fmt(e['live']['alert_rate'])}</td>"
                f"<td>{_fmt(e['candidate']['alert_rate'])}</td></tr>"
            )
    figures = "".join(_figures(c)) if c.plots else "<p>(no plots)</p>"
    return f"""
<h2>{html.escape(c.model_name)}: candidate v{html.escape(c.candidate_version)} against live
v{html.escape(c.live_version or "?")}</h2>
<p>Scored encounter-hours (both models): <b>{c.scored_hours}</b>; labelled: <b>{c.labelled_hours}</b>
({c.labelled_encounters} encounters, {c.positive_encounters} with sepsis); data span {c.shadow_hours:.1f} h.</p>
<table><tr><th>Difference (candidate - live)</th><th>estimate [{level:.0%} paired bootstrap CI]</th></tr>
<tr><th>AUROC</th><td>{_diff(m.get("auroc_diff"))}</td></tr>
<tr><th>Normalised utility</th><td>{_diff(m.get("utility_diff"))}</td></tr>
<tr><th>Alert agreement</th><td>{_fmt(m.get("agreement"))}</td></tr>
<tr><th>Alert-rate difference / ratio</th><td>{_fmt(m.get("alert_rate_diff"))} /
{_fmt(m.get("alert_rate_ratio"))}</td></tr></table>
<table><tr><th>Metric</th><th>live</th><th>candidate</th></tr>{rows}</table>
<div class="plots">{figures}</div>
<h3>Subgroups</h3>
<table><tr><th>attribute</th><th>group</th><th>hours</th><th>positive hours</th><th>sensitivity live</th>
<th>sensitivity candidate</th><th>alert rate live</th><th>alert rate candidate</th></tr>{"".join(sub_rows)}</table>
"""


def render_html(comparisons: Sequence[Comparison], *, title: str, context: dict[str, Any]) -> str:
    """A self-contained HTML page (no external assets)."""
    sections = (
        "".join(_section(c) for c in comparisons) or "<p>No candidate had encounter-hours in common with live.</p>"
    )
    ctx = html.escape(json.dumps(context, indent=1, default=str))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{text-align:left}}img{{margin:4px}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>Predictions labelled from outcome onset times (positive from onset minus the horizon; stays ended without
the outcome are negatives; stays without an outcome are censored). Differences are paired: same encounter-hours,
encounters resampled together. Not for clinical use: shadow evidence for review.</p>
<details><summary>Run parameters</summary><pre>{ctx}</pre></details>
{sections}
</body></html>
"""
