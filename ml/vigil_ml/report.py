"""A self-contained HTML validation report a clinician can read: tables and PNG plots embedded as base64."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

LABELS = {
    "model": "Model",
    "logistic_regression": "Logistic regression",
    "qsofa": "qSOFA (no mentation)",
    "sirs": "SIRS",
    "news2": "NEWS2 (no consciousness)",
    "mews": "MEWS (no AVPU)",
}
ROWS = (
    ("auroc", "AUROC", "{:.3f}"),
    ("auprc", "AUPRC", "{:.3f}"),
    ("utility", "Normalised utility (challenge)", "{:.3f}"),
    ("sensitivity", "Sensitivity (hours)", "{:.3f}"),
    ("specificity", "Specificity (hours)", "{:.3f}"),
    ("ppv", "PPV (hours)", "{:.3f}"),
    ("stay_detection_rate", "Septic stays alerted by onset", "{:.3f}"),
    ("stay_false_alarm_rate", "Non-septic stays with any alert", "{:.3f}"),
    ("alerts_per_100_patient_days", "New alerts per 100 patient-days", "{:.1f}"),
    ("median_lead_time_hours", "Median lead time before onset (h)", "{:.1f}"),
    ("ece", "Expected calibration error", "{:.4f}"),
    ("calibration_intercept", "Calibration intercept", "{:.2f}"),
    ("calibration_slope", "Calibration slope", "{:.2f}"),
)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return '<img alt="plot" src="data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode() + '">'


def _curves(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    prec, rec, _ = precision_recall_curve(y, s)
    return fpr, tpr, rec, prec


def _plots(report: dict[str, Any], plots: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(plots["y"]).astype(bool)
    out: list[tuple[str, str]] = []
    if y.all() or not y.any():
        return out
    names = [k for k in plots if k != "y"]
    fig_roc, ax_roc = plt.subplots(figsize=(5, 4.5))
    fig_pr, ax_pr = plt.subplots(figsize=(5, 4.5))
    for k in names:
        fpr, tpr, rec, prec = _curves(y, np.asarray(plots[k]))
        auc = report["scores"].get(k, {}).get("auroc", {}).get("value", float("nan"))
        ax_roc.plot(fpr, tpr, label=f"{LABELS.get(k, k)} ({auc:.3f})", lw=2 if k == "model" else 1)
        ax_pr.plot(rec, prec, label=LABELS.get(k, k), lw=2 if k == "model" else 1)
    ax_roc.plot([0, 1], [0, 1], ls=":", c="grey")
    ax_roc.set(xlabel="1 - specificity", ylabel="Sensitivity", title="ROC (hourly rows)")
    ax_roc.legend(fontsize=7)
    ax_pr.axhline(y.mean(), ls=":", c="grey")
    ax_pr.set(xlabel="Sensitivity (recall)", ylabel="PPV (precision)", title="Precision-recall (hourly rows)")
    ax_pr.legend(fontsize=7)
    out += [("ROC curves", _png(fig_roc)), ("Precision-recall curves", _png(fig_pr))]
    cal = report.get("calibration_curve")
    if cal:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.plot(cal["mean_predicted"], cal["observed"], "o-", label="Model (risk deciles)")
        hi = max(max(cal["mean_predicted"]), max(cal["observed"])) * 1.05
        ax.plot([0, hi], [0, hi], ls=":", c="grey", label="Perfect calibration")
        ax.set(xlabel="Mean predicted risk", ylabel="Observed rate of SepsisLabel=1", title="Calibration")
        ax.legend(fontsize=7)
        out.append(("Calibration", _png(fig)))
    fig, ax = plt.subplots(figsize=(6, 4))
    risk = np.asarray(plots["model"])
    bins = np.linspace(0, max(float(np.quantile(risk, 0.999)), 1e-6), 50).tolist()
    ax.hist(risk[~y], bins=bins, density=True, alpha=0.6, label="Hours not labelled septic")
    ax.hist(risk[y], bins=bins, density=True, alpha=0.6, label="Hours labelled septic")
    ax.axvline(report["operating_threshold"], c="k", ls="--", label="Operating threshold")
    ax.set(xlabel="Predicted risk", ylabel="Density", title="Risk distribution")
    ax.legend(fontsize=7)
    out.append(("Score distributions", _png(fig)))
    return out


def _fmt(m: Any, fmt: str) -> str:
    if not isinstance(m, dict) or m.get("value") is None or not np.isfinite(m["value"]):
        return "-"
    s = fmt.format(m["value"])
    if m.get("ci"):
        s += f" <small>({fmt.format(m['ci'][0])}-{fmt.format(m['ci'][1])})</small>"
    return s


SUB_METRICS = ("auroc", "utility", "sensitivity", "specificity", "ppv", "alerts_per_100_patient_days")


def _sub_cell(row: dict[str, Any], key: str) -> str:
    v, ratio = row.get(key), row.get(f"{key}_ratio")
    if v is None or not np.isfinite(v):
        return "<td>-</td>"
    return f"<td>{v:.3f}" + ("" if ratio is None else f" <small>(x{ratio:.2f})</small>") + "</td>"


def html_report(report: dict[str, Any], plots: dict[str, Any]) -> str:
    """The report as one HTML document."""
    e = html.escape
    scores = report["scores"]
    head = "".join(f"<th>{e(LABELS.get(k, k))}</th>" for k in scores)
    body = "".join(
        f"<tr><td>{e(label)}</td>" + "".join(f"<td>{_fmt(scores[k].get(key), fmt)}</td>" for k in scores) + "</tr>"
        for key, label, fmt in ROWS
    )
    thr = "".join(f"<td>{scores[k]['threshold']:.4g}</td>" for k in scores)
    sub_rows = "".join(
        "<tr>"
        + "".join(f"<td>{e(str(r[c]))}</td>" for c in ("attribute", "group", "stays", "septic_stays"))
        + "".join(_sub_cell(r, k) for k in SUB_METRICS)
        + "</tr>"
        for r in report.get("subgroups", [])
    )
    figs = "".join(f"<figure>{img}<figcaption>{e(t)}</figcaption></figure>" for t, img in _plots(report, plots))
    d = report["data"]
    m = report["model"]
    title = f"Validation of {e(m['name'])} {e(m['version'])}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}figure{{display:inline-block;margin:0.5em}}small{{color:#666}}</style></head><body>
<h1>Validation report: {e(m["name"])} version {e(m["version"])}</h1>
<p>Model sha256 <code>{e(m["sha256"][:16])}...</code>, feature set {e(report["feature_set_version"])}.
Data: {d["stays"]} ICU stays ({d["septic_stays"]} with sepsis), {d["rows"]} patient-hours
({d["positive_rows"]} labelled septic). 95% confidence intervals from {report["bootstrap"]["replicates"]}
bootstrap resamples of stays.</p>
<p><b>How to read this.</b> Each ICU hour gets a risk. The target is the PhysioNet Challenge label: an hour is
"septic" from 6 hours before clinical sepsis onset (Sepsis-3) onwards, so an alert counts as a true positive when
it comes at most 6 hours before onset or later. The challenge's utility rewards alerts 12 to 6 hours before onset,
penalises late or missed alerts and charges a small cost per false-alarm hour; 1 is a perfect early-warning
policy, 0 is never alerting. Bedside scores use the last charted values and lack mental status (not in the
data).</p>
<h2>Performance at the operating threshold ({report["operating_threshold"]:.4g})</h2>
<table><tr><th>Metric</th>{head}</tr><tr><td>Alert threshold</td>{thr}</tr>{body}</table>
<h2>Plots</h2>{figs}
<h2>Subgroups (model)</h2>
<p>Values with their ratio to the whole cohort in brackets; ratios far from 1 (outside 0.8-1.25) deserve a look,
small groups are noisy.</p>
<table><tr><th>Attribute</th><th>Group</th><th>Stays</th><th>Septic stays</th><th>AUROC</th><th>Utility</th>
<th>Sensitivity</th><th>Specificity</th><th>PPV</th><th>Alerts /100 pt-days</th></tr>{sub_rows}</table>
</body></html>
"""
