"""Command line of shadow (mounted under ``vigil``): ``vigil shadow replay ...``.

``replay`` is also meant to be mounted at the top level as ``vigil replay`` (see docs/shadow.md).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast

import typer

app = typer.Typer(help="Shadow scoring and replay.", no_args_is_help=True)


@app.callback()
def shadow() -> None:
    """Shadow scoring and replay (a group even with one command, so ``replay`` stays a sub-command)."""


def _time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command("replay")
def replay(
    start: str = typer.Option(..., "--from", help="Range start, ISO 8601 (UTC when no offset); inclusive."),
    end: str = typer.Option(..., "--to", help="Range end, ISO 8601; exclusive."),
    model: list[str] = typer.Option(
        ..., "--model", help="NAME:VERSION from the registry, or NAME:VERSION=PATH (a package folder); repeatable."
    ),
    report: Path | None = typer.Option(None, "--report", help="Write the HTML report here."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the comparison as JSON here."),
    bootstrap_servers: str | None = typer.Option(None, help="Kafka bootstrap servers (default: settings)."),
    topic_prefix: str | None = typer.Option(None, help="Topic prefix (default: settings)."),
    registry_url: str | None = typer.Option(None, help="Registry URL (default: settings)."),
    warmup_hours: float = typer.Option(336.0, help="Hours of data before --from applied without scoring."),
    time_basis: str = typer.Option(
        "observation", help="'observation' (observed_at, default) or 'arrival' (Kafka record timestamps)."
    ),
    bootstrap_iterations: int | None = typer.Option(None, help="Paired bootstrap resamples (default: settings)."),
) -> None:
    """Re-score past observations with chosen versions and compare them with the recorded live scores.

    Reads topics without a consumer group and publishes nothing. Times are observation times by default.
    """
    from vigil_shadow.compare import CompareConfig
    from vigil_shadow.replay import ReplayRequest, run_replay, write_outputs
    from vigil_shadow.settings import Settings

    if time_basis not in ("observation", "arrival"):
        raise typer.BadParameter("--time-basis is 'observation' or 'arrival'")
    if report is None and json_out is None:
        raise typer.BadParameter("give --report and/or --json")
    overrides: dict[str, object] = {}
    if bootstrap_servers:
        overrides["kafka_bootstrap_servers"] = bootstrap_servers
    if topic_prefix is not None:
        overrides["topic_prefix"] = topic_prefix
    if bootstrap_iterations is not None:
        overrides["bootstrap_iterations"] = bootstrap_iterations
    settings = Settings(**overrides)  # type: ignore[arg-type]
    request = ReplayRequest(
        start=_time(start),
        end=_time(end),
        models=list(model),
        kafka=settings.kafka,
        topic_prefix=settings.topic_prefix,
        warmup_hours=warmup_hours,
        time_basis=cast(Literal["observation", "arrival"], time_basis),
        registry_url=registry_url or settings.registry_url,
        registry_token=settings.registry_token,
        cache_dir=settings.model_cache_dir,
        config=CompareConfig.from_settings(settings),
    )
    result = asyncio.run(run_replay(request))
    write_outputs(result, request, html_path=report, json_path=json_out)
    summary = [
        {
            "model": f"{c.model_name}:{c.candidate_version}",
            "live_version": c.live_version,
            "scored_hours": c.scored_hours,
            "labelled_hours": c.labelled_hours,
            "auroc_diff": c.metrics.get("auroc_diff"),
        }
        for c in result.comparisons
    ]
    typer.echo(json.dumps({"counts": result.counts, "comparisons": summary}, default=str))
