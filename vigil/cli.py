"""``vigil``: one command line for people (broker, stack, services, models, replay, drift, registry, demo)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from vigil import kafka_local, stack

app = typer.Typer(help="Vigil: run clinical risk models in production.", no_args_is_help=True)
kafka_app = typer.Typer(help="A native Apache Kafka broker (jars from Maven Central, no Docker).", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
console = Console(stderr=True)


def _cluster(brokers: int, port: int, name: str, dev: bool = False) -> kafka_local.LocalCluster:
    return kafka_local.LocalCluster(name=name, brokers=brokers, base_port=port, secured=not dev)


DevOpt = typer.Option(
    False, "--dev", help="Development mode: plaintext Kafka without ACLs (never the default; say so explicitly)."
)


@kafka_app.command("start")
def kafka_start(
    brokers: int = typer.Option(1, help="Number of brokers (combined broker+controller nodes)."),
    port: int = typer.Option(9092, help="Client port of node 1; node i uses port + 2(i-1)."),
    name: str = typer.Option("default", help="Cluster name (its state lives in .vigil/kafka/clusters/NAME)."),
    topic_prefix: str = typer.Option("vigil.", help="Topics (and their ACLs) created for this prefix."),
    dev: bool = DevOpt,
) -> None:
    """Fetch the broker (first time), make its secrets (first time), start it, create the topics and ACLs."""
    from vigil_contracts.topics import Topics

    t0 = time.monotonic()
    cluster = _cluster(brokers, port, name, dev)
    bootstrap = cluster.start()
    cluster.provision(Topics(topic_prefix))
    security = "plaintext, no ACLs (development mode)" if dev else f"SASL_SSL, CA {cluster.secrets.ca_file}"
    console.print(
        f"Kafka {kafka_local.KAFKA_VERSION} ready at {bootstrap} ({security}) in {time.monotonic() - t0:.1f}s"
    )
    typer.echo(bootstrap)


@kafka_app.command("fetch")
def kafka_fetch() -> None:
    """Fetch the broker jars from Maven Central (cached in .vigil/kafka; a no-op once done)."""
    libs = kafka_local.fetch_jars()
    console.print(f"Kafka {kafka_local.KAFKA_VERSION} jars in {libs}")


def _matching_cluster(port: int | None, name: str | None) -> kafka_local.LocalCluster:
    """The one local cluster a command is about, found by the port it listens on and/or its name.

    Exits 1 (saying which clusters exist) when none or several match, so that a stop never reports success for a
    broker it did not find.
    """
    if port is None and name is None:
        name = "default"
    matches = kafka_local.find_clusters(port=port, name=name)
    asked = " and ".join(x for x in (f"port {port}" if port else "", f"name {name!r}" if name else "") if x)
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f"{c.name} (port {c.base_port})" for c in kafka_local.known_clusters()) or "none"
    if not matches:
        extra = ""
        if port is not None and kafka_local.port_answers(port):
            extra = f"; port {port} answers, but not as a broker started by vigil"
        console.print(f"[red]no local Kafka cluster with {asked}{extra}; known clusters: {known}[/red]")
    else:
        console.print(f"[red]several local Kafka clusters match {asked}: {known}; give --name[/red]")
    raise typer.Exit(1)


PortMatchOpt = typer.Option(None, "--port", help="Client port of the broker (any node's), e.g. 29092.")
NameMatchOpt = typer.Option(None, "--name", help="Cluster name (e.g. default, stack-29092, test).")


@kafka_app.command("stop")
def kafka_stop(
    port: int | None = PortMatchOpt,
    name: str | None = NameMatchOpt,
    destroy: bool = typer.Option(False, help="Also delete the cluster's data."),
) -> None:
    """Stop the broker(s) of the cluster found by port or name; exit 1 when none matches or nothing ran."""
    cluster = _matching_cluster(port, name)
    running = [n for n in cluster.nodes if n.pid() is not None]
    cluster.destroy() if destroy else cluster.stop()
    still = [n.node_id for n in cluster.nodes if n.pid() is not None]
    if still:
        console.print(f"[red]Kafka cluster {cluster.name}: node(s) {still} still running[/red]")
        raise typer.Exit(1)
    if not running:
        # Nothing was running: say so, and do not claim a stop (a script relying on the exit code learns it).
        console.print(
            f"[red]Kafka cluster {cluster.name} (port {cluster.base_port}) was not running"
            f"{'; its data was deleted' if destroy else ''}[/red]"
        )
        raise typer.Exit(1)
    console.print(
        f"Kafka cluster {cluster.name} stopped: {len(running)} node(s) on port(s) "
        f"{', '.join(str(n.port) for n in running)}{'; data deleted' if destroy else ''}"
    )


@kafka_app.command("status")
def kafka_status(port: int | None = PortMatchOpt, name: str | None = NameMatchOpt) -> None:
    """Tell whether each broker of the cluster found by port or name runs and answers.

    Exit 1 if not all do, or if no cluster matches.
    """
    cluster = _matching_cluster(port, name)
    rows = [{"cluster": cluster.name, **row} for row in cluster.status()]
    typer.echo(json.dumps(rows))
    raise typer.Exit(0 if all(r["answers"] and r["pid"] for r in rows) else 1)


StackOpt = typer.Option(9092, "--kafka-port", help="Client port of the stack's broker.")
PortBaseOpt = typer.Option(8001, "--port-base", help="Port of ingest; scorer, shadow, drift, registry follow.")


def _stack(kafka_port: int, port_base: int, dev: bool = False) -> stack.Stack:
    return stack.Stack(kafka_port=kafka_port, port_base=port_base, development=dev)


@app.command("run")
def run(service: str = typer.Argument(..., help="ingest, scorer, shadow, drift or registry")) -> None:
    """Run one service in the foreground (its settings from the environment)."""
    if service not in stack.SERVICE_NAMES:
        raise typer.BadParameter(f"unknown service {service!r}; one of {', '.join(stack.SERVICE_NAMES)}")
    import importlib

    importlib.import_module(f"vigil_{service}.__main__").main()


@app.command("up")
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Return once everything is ready."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for every /ready."),
    kafka_port: int = StackOpt,
    port_base: int = PortBaseOpt,
    dev: bool = DevOpt,
) -> None:
    """Start the broker and all five services as processes (logs in .vigil/logs); Ctrl-C stops them all."""
    t0 = time.monotonic()
    s = _stack(kafka_port, port_base, dev)
    state = s.up(extra_env={"VIGIL_DEVELOPMENT": "true"} if dev else None, timeout=timeout)
    _print_status(s)
    if not all(state.values()):
        console.print(f"[red]not ready after {timeout:.0f}s: {[k for k, v in state.items() if not v]}[/red]")
        raise typer.Exit(1)
    console.print(f"stack ready in {time.monotonic() - t0:.1f}s; logs in {s.log_dir}")
    if detach:
        return
    console.print("Ctrl-C stops everything")
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(1)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        s.down()
        console.print("stack stopped")


@app.command("down")
def down(
    keep_broker: bool = typer.Option(False, help="Leave the broker running."),
    kafka_port: int = StackOpt,
    port_base: int = PortBaseOpt,
) -> None:
    """Stop every service, then the broker."""
    _stack(kafka_port, port_base).down(keep_broker=keep_broker)
    console.print("stack stopped")


def _print_status(s: stack.Stack) -> list[dict[str, object]]:
    rows = s.status()
    table = Table("component", "pid", "port", "ready")
    for r in rows:
        table.add_row(str(r["name"]), str(r["pid"] or "-"), str(r["port"]), "yes" if r["ready"] else "no")
    console.print(table)
    return rows


@app.command("status")
def status(
    as_json: bool = typer.Option(False, "--json"), kafka_port: int = StackOpt, port_base: int = PortBaseOpt
) -> None:
    """The broker and each service: running, ready. Exit 1 unless everything is ready."""
    s = _stack(kafka_port, port_base)
    rows = s.status() if as_json else _print_status(s)
    if as_json:
        typer.echo(json.dumps(rows, default=str))
    raise typer.Exit(0 if all(r["ready"] for r in rows) else 1)


@app.command("simulate")
def simulate_cmd(
    data: Path | None = typer.Option(None, help="PhysioNet-format parquet (default: the bundled sample)."),
    stays: int | None = typer.Option(None, help="Number of stays (seeded random draw)."),
    via: str = typer.Option("http", help="http (ingest's FHIR REST endpoint) or kafka (the raw FHIR topic)."),
    ingest_url: str = typer.Option("http://127.0.0.1:8001", help="Ingest's FHIR base URL."),
    bootstrap: str = typer.Option("127.0.0.1:9092", help="Kafka bootstrap servers (outcomes; raw topic)."),
    topic_prefix: str = typer.Option("vigil.", help="Topic prefix of the stack."),
    speed: float = typer.Option(0.0, help="Simulated hours per second (0: as fast as ingest accepts)."),
    arrival_hours: float = typer.Option(48.0, help="Admissions spread over this many simulated hours."),
    outcome_delay: float = typer.Option(6.0, help="Hours between an outcome and its publication."),
    drift: list[str] = typer.Option(
        [], help="temp-degf@H, drop=FEATURE@H, scale=FEATURE:FACTOR@H, population=Age>65@H"
    ),
    id_prefix: str = typer.Option("sim", help="Prefix of the simulated patient and encounter ids."),
    out: Path | None = typer.Option(None, help="Write the FHIR feed as NDJSON instead of sending it."),
    token_file: Path | None = typer.Option(
        None,
        envvar="VIGIL_SIMULATOR_TOKEN_FILE",
        help="Bearer token for ingest's FHIR writes (default: the local stack's simulator token).",
    ),
    deadline: float = typer.Option(0.0, help="Stop with an error if sending takes longer (seconds; 0: no limit)."),
) -> None:
    """Send PhysioNet-format stays to ingest as an EHR would (FHIR R4), and their outcomes later."""
    import asyncio

    from vigil import simulate as sim
    from vigil_contracts.access import Principal
    from vigil_contracts.topics import Topics

    drifts = [sim.Drift.parse(d) for d in drift]
    plan = sim.load_stays(data, stays=stays, arrival_hours=arrival_hours, id_prefix=id_prefix)
    if out is not None:
        report = sim.write_bundles(plan, out, drifts=drifts)
    else:
        if via not in ("http", "kafka"):
            raise typer.BadParameter("--via is http or kafka")
        try:
            with console.status("sending...") as status:

                def progress(r: sim.SimulationReport, at: object) -> None:
                    status.update(
                        f"{r.bundles_acknowledged} of {r.bundles_planned} bundles acknowledged, "
                        f"{r.entries_acknowledged} entries with an outcome, {r.retries} retries (simulated time {at})"
                    )

                report = asyncio.run(
                    sim.simulate(
                        plan,
                        kafka=kafka_local.client_connection(bootstrap, Principal.EHR.value),
                        topics=Topics(topic_prefix),
                        via=via,  # type: ignore[arg-type]
                        ingest_url=ingest_url,
                        token=_simulator_token(token_file) if via == "http" else None,
                        speed=speed,
                        outcome_delay_hours=outcome_delay,
                        drifts=drifts,
                        deadline_s=deadline or None,
                        on_progress=progress,
                    )
                )
        except sim.SimulationStopped as stopped:
            console.print(f"[red]simulation stopped: {stopped.reason}[/red]")
            typer.echo(json.dumps(stopped.report.as_dict()))
            raise typer.Exit(1) from None
    typer.echo(json.dumps(report.as_dict()))


def _simulator_token(token_file: Path | None) -> str | None:
    """The simulator's bearer token: the file given, else the local stack's (made on first use)."""
    from vigil.http_tokens import HttpSecrets
    from vigil.kafka_local import vigil_home

    if token_file is not None:
        return token_file.read_text().strip()
    return HttpSecrets(vigil_home() / "secrets").ensure().token("simulator")


@app.command("demo")
def demo(
    data: Path | None = typer.Option(None, help="PhysioNet-format parquet (default: the bundled sample of set A)."),
    stays: int | None = typer.Option(
        300, help="Number of stays streamed (seeded draw; 300 = the whole bundled sample); all with --stays 0."
    ),
    septic_share: float = typer.Option(
        0.15,
        help="Share of septic stays when drawing fewer stays than the data holds (0: a plain random draw).",
    ),
    production: str = typer.Option("2", help="Version registered as the unit's production model."),
    candidate: str = typer.Option("3", help="Version registered as the candidate in shadow."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the summary as JSON here."),
    report: Path | None = typer.Option(None, help="HTML report (default: .vigil/demo/<run>/report.html)."),
    drift: str = typer.Option("temp-degf", help="Drift injected in the second part ('' for none)."),
    keep_running: bool = typer.Option(False, help="Leave the stack running at the end."),
    kafka_port: int = StackOpt,
    port_base: int = PortBaseOpt,
) -> None:
    """A clinical model's life end to end: stream, score, shadow, drift, promotion on evidence, rollback drill."""
    from vigil.demo import DemoOptions, run_demo

    options = DemoOptions(
        data=data,
        stays=stays or None,
        septic_share=septic_share or None,
        production_version=production,
        candidate_version=candidate,
        json_out=json_out,
        report_out=report,
        drift=drift,
        keep_running=keep_running,
        kafka_port=kafka_port,
        port_base=port_base,
    )
    summary = run_demo(options, console)
    ok = summary["accounting"]["zero_loss"] and all(m["agree"] is not False for m in summary["models"].values())
    raise typer.Exit(0 if ok else 1)


@app.command("asyncapi")
def asyncapi(
    out: Path = typer.Option(Path("docs/asyncapi"), help="Folder for one AsyncAPI 3.0 document per service."),
) -> None:
    """Write the AsyncAPI documents of the services' Kafka sides, generated from their FastStream brokers."""
    from vigil.docs import write_asyncapi

    for path in write_asyncapi(out):
        console.print(f"wrote {path}")


k8s_app = typer.Typer(help="Kubernetes manifests (deploy/k8s): Strimzi resources from the tables, offline check.")
app.add_typer(k8s_app, name="k8s")


@k8s_app.command("generate")
def k8s_generate() -> None:
    """Write the KafkaTopics and KafkaUsers of deploy/k8s/base/kafka from topics.py and the ACL table."""
    from vigil.k8s import generate

    for path in generate():
        console.print(f"wrote {path}")


@k8s_app.command("check")
def k8s_check() -> None:
    """Render every overlay with kustomize and validate it with kubeconform against the vendored schemas."""
    from vigil.k8s import OVERLAYS, render, validate

    failed = False
    for overlay in OVERLAYS:
        result = validate(render(overlay))
        console.print(f"{overlay}: {result.stdout.strip()}", markup=False)
        failed = failed or result.returncode != 0
    raise typer.Exit(1 if failed else 0)


def _mount() -> None:
    """Sub-commands owned by the packages (their heavy imports stay inside the commands)."""
    from vigil_drift.cli import app as drift_app
    from vigil_ingest.cli import app as ingest_app
    from vigil_ml.cli import app as model_app
    from vigil_registry.cli import app as registry_app
    from vigil_shadow.cli import app as shadow_app

    app.add_typer(ingest_app, name="ingest")
    app.add_typer(model_app, name="model")
    app.add_typer(drift_app, name="drift")
    app.add_typer(registry_app, name="registry")
    app.add_typer(shadow_app, name="shadow")
    from vigil.dataset import app as dataset_app

    app.add_typer(dataset_app, name="dataset")
    from vigil.adapt_loop import app as adapt_loop_app

    app.add_typer(adapt_loop_app, name="adapt-loop")
    from vigil_shadow.cli import replay as shadow_replay

    app.command("replay")(shadow_replay)
    from bench.cli import app as bench_app

    app.add_typer(bench_app, name="bench")


_mount()


def main() -> None:
    """Entry point of the ``vigil`` script."""
    app()


if __name__ == "__main__":
    main()
