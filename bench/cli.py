"""The benchmarks' command line (mounted under ``vigil`` as ``vigil bench``): ``vigil bench scorer``.

It lives beside the benchmarks rather than in the scorer: no service imports ``bench`` (which no wheel ships),
and the ``vigil`` command line may.
"""

from __future__ import annotations

import asyncio
import json
import os

import typer

app = typer.Typer(help="Benchmarks.", no_args_is_help=True)


@app.callback()
def bench() -> None:
    """Benchmarks against a running broker (each prints one JSON line)."""


@app.command("scorer")
def bench_scorer(
    bootstrap: str = typer.Option(
        os.environ.get("VIGIL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), help="A running broker's bootstrap servers."
    ),
    stays: int = typer.Option(240, help="Set A stays streamed for the throughput run."),
    rate: float = typer.Option(5000.0, help="Offered load (events/s) of the latency run."),
    extra_rates: str = typer.Option("2000", help="Comma-separated further offered loads (events/s)."),
    latency_seconds: float = typer.Option(8.0, help="Duration of each latency run."),
    batch_max_records: int = typer.Option(2000, help="The scorer's largest batch."),
) -> None:
    """Scorer throughput and latency through the broker, against the article-style baseline: one JSON line."""
    from bench.bench_scorer import run

    result = asyncio.run(
        run(
            bootstrap,
            stays=stays,
            rate=rate,
            extra_rates=tuple(float(x) for x in extra_rates.split(",") if x.strip()),
            latency_seconds=latency_seconds,
            batch_max_records=batch_max_records,
        )
    )
    typer.echo(json.dumps(result))
