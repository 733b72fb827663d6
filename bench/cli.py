"""The benchmarks' command line (mounted under ``vigil`` as ``vigil bench``): ``vigil bench scorer``, ``e2e``...

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
    security: str = typer.Option(
        "settings",
        help="'settings': the running broker with the VIGIL_KAFKA_* settings; 'both': start a secured and a "
        "plaintext broker (ports --plaintext-port, --secured-port) and compare their throughput in one run.",
    ),
    plaintext_port: int = typer.Option(39092, help="With --security both: the plaintext broker's port."),
    secured_port: int = typer.Option(39192, help="With --security both: the secured broker's port."),
    rounds: int = typer.Option(2, help="With --security both or --instances: runs of each (best counts)."),
    instances: str = typer.Option(
        "",
        help="Comma-separated instance counts (e.g. 1,2,3): throughput with that many scorers in one group, on a "
        "secured broker started on --scale-port, each count's best against one instance's (the scale-out figure).",
    ),
    scale_port: int = typer.Option(39692, help="With --instances: the port of the broker started for it."),
) -> None:
    """Scorer throughput and latency through the broker, against the article-style baseline: one JSON line."""
    from bench.bench_scorer import compare_security, run, scale_out

    if instances:
        counts = tuple(int(x) for x in instances.split(",") if x.strip())
        scaled = asyncio.run(scale_out(port=scale_port, counts=counts, stays=stays, rounds=rounds))
        typer.echo(json.dumps(scaled))
        return
    if security == "both":
        compared = asyncio.run(
            compare_security(
                plaintext_port=plaintext_port,
                secured_port=secured_port,
                stays=stays,
                rounds=rounds,
                batch_max_records=batch_max_records,
            )
        )
        typer.echo(json.dumps(compared))
        return
    if security != "settings":
        raise typer.BadParameter("--security is 'settings' or 'both'")

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


@app.command("restart")
def bench_restart(
    events: int = typer.Option(100_000, help="Observation records retained in the topic (the issue asks for 1M)."),
    port: int = typer.Option(39392, help="Port of the secured single-node broker the bench starts for itself."),
    partitions: int = typer.Option(6, help="Partitions of the observations topic."),
) -> None:
    """Shadow's and drift's start-up with a long topic: re-read retention (before) vs changelog restore (after)."""
    from bench.bench_restart import main

    typer.echo(json.dumps(asyncio.run(main(events=events, port=port, partitions=partitions))))


@app.command("compare")
def bench_compare(
    before: str = typer.Option("488c8d3", help="The commit to compare with (checked out into a temporary worktree)."),
    port: int = typer.Option(39292, help="Client port of the local plaintext broker started for the comparison."),
    rounds: int = typer.Option(3, help="Rounds; each runs both sides once, in alternating order."),
    bench: list[str] = typer.Option(["scorer", "ingest"], help="Which benchmarks (repeatable)."),
    stays: int = typer.Option(120, help="Set A stays of the scorer's throughput run."),
    latency_seconds: float = typer.Option(
        8.0,
        help="Duration of the scorer's latency run. Both sides must run as long: 488c8d3's bench draws at most "
        "43,000 events (8.7 s at 5,000 events/s) from its stays.",
    ),
    ingest_n: int = typer.Option(10_000, help="Observations of the ingest runs."),
) -> None:
    """Scorer and ingest benchmarks of REV and of this checkout, interleaved in one run: one JSON line."""
    from bench.compare import compare

    unknown = set(bench) - {"scorer", "ingest"}
    if unknown:
        raise typer.BadParameter(f"unknown benchmarks: {sorted(unknown)}")
    result = compare(
        before,
        port=port,
        rounds=rounds,
        benches=bench,
        stays=stays,
        latency_seconds=latency_seconds,
        ingest_n=ingest_n,
    )
    typer.echo(json.dumps(result))


@app.command("e2e")
def bench_e2e(
    loads: str = typer.Option("500,1000,2000,4000,8000", help="Comma-separated offered loads (observations/s)."),
    seconds: float = typer.Option(10.0, help="Duration of each load (one encounter-hour per bed per second)."),
    senders: int = typer.Option(64, help="Concurrent HTTP connections to ingest (EHR interface engines)."),
    stack: str = typer.Option(
        "start", help="'start': a stack of its own on --kafka-port/--port-base, stopped at the end; 'running': use one."
    ),
    kafka_port: int = typer.Option(
        29692, help="The stack's broker port; below Linux's ephemeral range (32768 on), where a client could hold it."
    ),
    port_base: int = typer.Option(28001, help="The stack's ingest port (the other services follow)."),
    with_services: str = typer.Option("", "--with", help="Further services to start: shadow, drift, registry."),
    partitions: int = typer.Option(6, help="Partitions of the stack's topics (with --stack start)."),
    drain_s: float = typer.Option(30.0, help="Longest wait for the scores after the last post."),
    profile_dir: str = typer.Option("", help="Profile ingest and the scorer with py-spy during one load, here."),
    profile_load: float = typer.Option(0.0, help="The load to profile (default: the highest)."),
    baseline_requests: int = typer.Option(3000, help="Requests of the article-style baseline."),
    idle_s: float = typer.Option(15.0, help="Seconds of the stack's CPU measured idle before the loads (0: skip)."),
) -> None:
    """The whole path: FHIR bundles over HTTP to live scores at fixed offered loads; one JSON line per load."""
    from pathlib import Path

    from bench.bench_e2e import main

    if stack not in ("start", "running"):
        raise typer.BadParameter("--stack is 'start' or 'running'")
    extra = [s.strip() for s in with_services.split(",") if s.strip()]
    unknown = set(extra) - {"shadow", "drift", "registry"}
    if unknown:
        raise typer.BadParameter(f"unknown services: {sorted(unknown)}")
    asyncio.run(
        main(
            loads=[float(x) for x in loads.split(",") if x.strip()],
            seconds=seconds,
            senders=senders,
            start=stack == "start",
            kafka_port=kafka_port,
            port_base=port_base,
            services=extra,
            partitions=partitions,
            drain_s=drain_s,
            profile_dir=Path(profile_dir) if profile_dir else None,
            profile_load=profile_load or None,
            baseline_requests=baseline_requests,
            idle_s=idle_s,
            emit=typer.echo,
        )
    )
