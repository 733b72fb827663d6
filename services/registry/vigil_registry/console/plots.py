"""Plots a clinician reads, drawn on the server as SVG (matplotlib): no chart script reaches the browser.

Each function takes the evidence exactly as the registry stored it (the comparison's ``metrics``) and returns
an SVG string, or None when the evidence lacks what the plot needs (the page then says so).
"""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a server
import matplotlib.pyplot as plt

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "vigil-console", "font.size": 10})

COLOURS = {"live": "#1f4e79", "candidate": "#b35900"}
"""Blue and orange: told apart by people with the common colour-vision deficiencies; lines also differ in style."""
STYLES = {"live": "-", "candidate": "--"}


def _svg(fig: Any, title: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    svg = text[text.index("<svg") :]
    # An accessible name for the image; the figure's caption repeats the numbers as text.
    return svg.replace("<svg ", f'<svg role="img" aria-label="{title}" ', 1)


def roc(curves: dict[str, Any] | None, aurocs: dict[str, float | None]) -> str | None:
    """ROC curves of live and candidate on the same labelled stays."""
    roc_points = (curves or {}).get("roc") or {}
    if not any(roc_points.get(who, {}).get("fpr") for who in COLOURS):
        return None
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for who in COLOURS:
        points = roc_points.get(who) or {}
        if points.get("fpr"):
            auc = aurocs.get(who)
            label = f"{who} (AUROC {auc:.3f})" if isinstance(auc, int | float) else who
            ax.plot(points["fpr"], points["tpr"], STYLES[who], color=COLOURS[who], label=label, linewidth=2)
    ax.plot([0, 1], [0, 1], ":", color="#777777", linewidth=1, label="chance")
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", frameon=False)
    return _svg(fig, "ROC curves of the live and candidate models on the same stays")


def reliability(curves: dict[str, Any] | None) -> str | None:
    """Reliability diagram: observed rate against mean predicted risk, per equal-count bin."""
    calibration = (curves or {}).get("calibration") or {}
    if not any(calibration.get(who) for who in COLOURS):
        return None
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    top = 0.0
    for who in COLOURS:
        bins = calibration.get(who) or []
        xs = [b["mean_p"] for b in bins]
        ys = [b["rate"] for b in bins]
        if xs:
            top = max(top, *xs, *ys)
            ax.plot(xs, ys, STYLES[who], marker="o", color=COLOURS[who], label=who, linewidth=2)
    top = min(1.0, top * 1.1) if top > 0 else 1.0
    ax.plot([0, top], [0, top], ":", color="#777777", linewidth=1, label="perfect calibration")
    ax.set(xlabel="mean predicted risk", ylabel="observed rate", xlim=(0, top), ylim=(0, top))
    ax.legend(loc="upper left", frameon=False)
    return _svg(fig, "Reliability diagram of the live and candidate models")


def sparkline(values: list[Any], threshold: float | None, title: str) -> str | None:
    """A small line of a monitored statistic over its alerts, with the threshold dashed."""
    points = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(1.8, 0.45))
    ax.plot(range(len(points)), points, color=COLOURS["live"], linewidth=1.5, marker="o", markersize=2)
    if threshold is not None and math.isfinite(threshold):
        ax.axhline(threshold, color=COLOURS["candidate"], linestyle="--", linewidth=1)
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    return _svg(fig, title)
