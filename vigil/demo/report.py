"""The demo's outputs: the summary's tables on the console, and the HTML report.

The page is rendered from ``templates/report.html`` (a ``string.Template``): every value is escaped here before
it goes in.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from importlib.resources import files
from string import Template
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

AGREE = {True: "yes", False: "NO", None: "n/a (inputs differ)"}
TEMPLATE = files("vigil.demo") / "templates" / "report.html"


def fmt(v: Any) -> str:
    """A figure with three decimals, or '-' when there is none."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def print_summary(console: Console, s: dict[str, Any]) -> None:
    """The summary's two tables: accounting and decisions, then each model's figures."""
    c, a = s["counts"], s["accounting"]
    t = Table(title="Vigil demo: summary" + (" (STOPPED)" if s.get("failed") else ""))
    t.add_column("")
    t.add_column("", justify="right")
    for k in (
        "fhir_observations_sent",
        "canonical_observations",
        "stay_hours_with_data",
        "live_scores_unique",
        "alerts",
    ):
        t.add_row(k.replace("_", " "), str(c[k]))
    t.add_row("ingest entry outcomes", json.dumps(a["ingest_entry_outcomes"]))
    t.add_row("FHIR entries without an outcome", str(a["fhir_entries_without_outcome"]))
    t.add_row("stay-hours without a live score", str(a["stay_hours_without_live_score"]))
    t.add_row("zero loss", "yes" if a["zero_loss"] else "NO")
    if s.get("failed"):
        t.add_row("stopped", s["failed"])
    t.add_row("promotion", "promoted" if s["promotion"].get("promoted") else "not promoted")
    t.add_row("rollback drill", "rolled back" if s["rollback_drill"].get("rolled_back") else "no rollback")
    if s.get("adaptation"):
        ad = s["adaptation"]
        t.add_row(
            "learning at the site",
            f"{ad['version']} ({ad['chosen']}, from {ad['dataset']['labelled_stays']} streamed stays) in {ad['stage']}",
        )
        t.add_row("what that shows", ad["what_it_shows"])
    console.print(t)
    if not s["models"]:
        return
    m = Table(title="models on the stays they scored (streamed vs offline `vigil model predict`)")
    for col in ("model", "stays", "AUROC", "utility", "alerts", "offline AUROC", "offline utility", "agree"):
        m.add_column(col)
    for label, f in s["models"].items():
        m.add_row(
            label,
            str(f["stays"]),
            fmt(f["streamed"].get("auroc")),
            fmt(f["streamed"].get("utility")),
            str(f["alerts_streamed"]),
            fmt(f["offline_same_rows"].get("auroc")),
            fmt(f["offline_same_rows"].get("utility")),
            AGREE[f["agree"]],
        )
    console.print(m)


def _chart(models: dict[str, Any]) -> str:
    """The models' streamed AUROC and utility as an inline PNG (empty when no model was evaluated)."""
    if not models:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = list(models)
    au = [models[k]["streamed"].get("auroc") or 0 for k in labels]
    ut = [models[k]["streamed"].get("utility") or 0 for k in labels]
    x = np.arange(len(labels))
    ax.bar(x - 0.2, au, 0.4, label="AUROC")
    ax.bar(x + 0.2, ut, 0.4, label="utility")
    ax.set_xticks(x, [lbl.replace(" (", "\n(") for lbl in labels], fontsize=7)
    ax.legend()
    ax.set_title("Models on the stays they scored (from the streamed scores)")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return f'<img alt="models" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _cells(*values: Any) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in values) + "</tr>"


def _rows(d: dict[str, Any]) -> str:
    return "".join(_cells(k, json.dumps(v, default=str)) for k, v in d.items())


def render_html(s: dict[str, Any]) -> str:
    """A self-contained page: the story, the accounting, the models, alerts and decisions."""
    promotion = s["promotion"]
    values = {
        "run": html.escape(s["run"]),
        "stays": str(s["stays"]),
        "data": html.escape(s["data"]),
        "seconds": html.escape(str(s.get("seconds", "-"))),
        "failed": f'<p class="failed">Stopped: {html.escape(s["failed"])}</p>' if s.get("failed") else "",
        "story": "".join(
            f"<li><code>{html.escape(x['at'])}</code> <b>{html.escape(x['phase'])}</b>: {html.escape(x['text'])}</li>"
            for x in s["story"]
        ),
        "zero_loss": "yes" if s["accounting"]["zero_loss"] else "NO",
        "accounting": _rows(s["counts"]) + _rows(s["accounting"]),
        "models": "".join(
            _cells(
                k,
                f["stays"],
                fmt(f["streamed"].get("auroc")),
                fmt(f["streamed"].get("utility")),
                f["alerts_streamed"],
                fmt(f["offline_same_rows"].get("auroc")),
                fmt(f["offline_same_rows"].get("utility")),
                fmt(f["offline_all_rows"].get("auroc")),
                AGREE[f["agree"]],
            )
            for k, f in s["models"].items()
        ),
        "chart": _chart(s["models"]),
        "promoted": html.escape(str(promotion.get("promoted"))),
        "criteria": "".join(
            _cells(c.get("name"), c.get("passed"), c.get("observed"), c.get("required"))
            for c in (promotion.get("eligibility") or {}).get("criteria", [])
        ),
        "alerts": "".join(
            _cells(
                a["state"],
                a["kind"],
                a["feature"] or a["metric"],
                f"{a['value']:.3g}",
                f"{a['threshold']:.3g}",
                a["severity"],
            )
            for a in s["alerts"]
        ),
        "rollback_drill": _rows(s["rollback_drill"]),
        "lifecycle": "".join(_cells(json.dumps(e)) for e in s["lifecycle"]),
        "policy": html.escape(json.dumps(s["policy_used"])),
    }
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(values)
