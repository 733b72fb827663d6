"""Command line of drift (mounted under ``vigil`` as ``vigil drift``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

app = typer.Typer(help="Drift: detectors on inputs, predictions and outcomes.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """Drift commands."""


@app.command("check")
def check(
    reference: Path = typer.Option(
        ..., exists=True, help="Reference: PhysioNet-format .parquet/.psv/.csv, or a reference.json."
    ),
    current: Path = typer.Option(..., exists=True, help="Current data: PhysioNet-format .parquet/.psv/.csv."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per alert (else a readable line)."),
    score_column: str = typer.Option("score", help="Column with the model's score, when the files carry one."),
    threshold: float = typer.Option(None, help="The model's alert threshold (else the reference's, else 0.5)."),
    model_name: str = typer.Option("model", help="Model name the prediction and performance alerts carry."),
    thresholds: str = typer.Option("", help='Threshold overrides as JSON ({"*": {...}, "inputs": {...}}) or a file.'),
    census: int = typer.Option(100, help="Stays in the ICU at once on the synthetic timeline."),
    warmup_hours: float = typer.Option(48.0, help="Hours of the timeline not judged (admission burst)."),
    summary: bool = typer.Option(True, help="Print a summary of the monitored quantities on stderr."),
) -> None:
    """Stream CURRENT through the detector core against REFERENCE and print the alerts it raises."""
    from vigil_drift.check import read_rows, run_check
    from vigil_drift.config import parse_overrides, thresholds_for
    from vigil_scoring.reference import Reference

    t0 = time.monotonic()
    is_file = bool(thresholds) and not thresholds.lstrip().startswith("{") and Path(thresholds).exists()
    text = Path(thresholds).read_text() if is_file else thresholds
    overrides = parse_overrides(text)
    ref_obj = Reference.load(reference) if reference.suffix == ".json" else None
    ref_df = read_rows(reference) if ref_obj is None else None
    cur_df = read_rows(current)
    result = run_check(
        ref_df if ref_df is not None else cur_df.iloc[:0],
        cur_df,
        thresholds=thresholds_for(model_name, overrides) if overrides else None,
        score_column=score_column,
        threshold=threshold,
        model_name=model_name,
        census=census,
        warmup_hours=warmup_hours,
        reference=ref_obj,
    )
    for alert in sorted(result.alerts, key=lambda a: a.occurred_at):
        if as_json:
            sys.stdout.write(alert.model_dump_json() + "\n")
        else:
            what = alert.feature or alert.metric
            sys.stdout.write(
                f"{alert.occurred_at:%Y-%m-%d %H:%M} {alert.state:<8} {alert.severity.value:<8} {alert.kind:<16} "
                f"{what:<28} value={alert.value:.4g} threshold={alert.threshold:.4g} ({alert.window})\n"
            )
    if summary and result.core is not None:
        snap = result.core.snapshot()
        opened = sum(1 for a in result.alerts if a.state == "open")
        still = snap["open_alerts"]
        print(
            json.dumps(
                {
                    "rows": result.rows,
                    "timeline_hours": round((result.end - result.start) / 3600, 1),
                    "alerts_opened": opened,
                    "open_at_end": still,
                    "drift_share": snap["drift_share"],
                    "predictions": snap["predictions"],
                    "performance": snap["performance"],
                    "seconds": round(time.monotonic() - t0, 1),
                }
            ),
            file=sys.stderr,
        )
