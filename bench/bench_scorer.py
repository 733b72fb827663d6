"""Benchmark of the live scorer against a running broker; prints one JSON line.

1. Throughput: set A stays streamed as canonical observations are published first, then one scorer process
   (``python -m vigil_scorer``) consumes them all; events/s = events / (last score's creation - first score's
   creation), read from the scores themselves, so the process start and group join are not counted.
2. Latency at a fixed offered load: other stays are published at ``rate`` events/s (paced every 10 ms) to the
   same running scorer; p50/p99 of the scores' ``latency_ms`` (record timestamp in Kafka -> score creation).
   The same again at ``extra_rates`` (default 2,000 events/s: the pipeline's latency when it is not saturated).
   Each latency run starts ``settle_s`` after the previous phase, once the scorer has checkpointed it: the figure
   is the steady state's, not the catch-up after a burst. A run is made of blocks of at most ``BLOCK_SECONDS``
   (the same stays, interleaved the same way, as the 8-second run this bench always had); a longer run publishes
   further blocks of fresh stays back to back, so its load has the same shape throughout. Each block's p50/p99
   are reported beside the run's (``p99_ms_per_block``): a p99 over one block is the latency of its two or three
   slowest batches, and the blocks show how much it moves.
3. Baseline, measured in the same run: the same model served the article's way (FastAPI, one prediction per HTTP
   request; single-row onnxruntime, the packages carry no scikit-learn estimator), closed loop with
   ``baseline_concurrency`` clients: predictions/s and request latency.

4. The cost of TLS + SASL (``--security both``): the throughput run on a secured broker (SASL_SSL, SCRAM-SHA-512,
   ACLs; the scorer as its own principal) and on a plaintext one, both started here, alternating, in one run;
   events/s of each and their ratio (the aim: the secured broker costs at most 15% of events/s).

Run: ``vigil bench scorer --bootstrap 127.0.0.1:9092`` or ``python -m bench.bench_scorer``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.support import events_of, load_stays, package_path, scratch_dir
from vigil_contracts.topics import Topics
from vigil_runtime.kafka import encode, ensure_topics
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.settings import VigilSettings
from vigil_scorer.settings import Settings
from vigil_scoring.features import EncounterState, offline_features


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _final_observations(events: list[Any]) -> dict[str, int]:
    states: dict[str, EncounterState] = {}
    for e in events:
        states.setdefault(e.encounter, EncounterState(e.encounter, e.patient)).apply(e)
    return {enc: s.observations for enc, s in states.items()}


class _Reader:
    """Reads the live topic: per encounter its newest observation count, plus creation times and latencies."""

    def __init__(self, kafka: KafkaConnection, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, **kafka.client_kwargs(), auto_offset_reset="earliest")
        self.seen: dict[str, int] = {}
        self.created: dict[str, list[float]] = {}
        self.latency: dict[str, list[float]] = {}
        self.latency_by_block: dict[str, list[float]] = {}
        """Latencies per latency block (tags ``l00``, ``l00b1``, ``l00b2``, ...)."""
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=5000)
            for records in batch.values():
                for r in records:
                    s = orjson.loads(r.value)
                    enc = s["encounter"]
                    self.seen[enc] = max(self.seen.get(enc, -1), s["observations"])
                    block = enc.split("-")[1]
                    tag = block[:3]
                    self.created.setdefault(tag, []).append(r.timestamp / 1000.0)
                    self.latency.setdefault(tag, []).append(s["latency_ms"])
                    self.latency_by_block.setdefault(block, []).append(s["latency_ms"])
                    self.count += 1

    async def wait(self, expected: dict[str, int], within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(self.seen.get(e, -1) >= n for e, n in expected.items()):
                return True
            await asyncio.sleep(0.1)
        return False

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()


async def _publish_all(kafka: KafkaConnection, topic: str, events: list[Any]) -> None:
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=5, acks="all", max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, encode(e), key=e.key_bytes()) for e in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _publish_paced(kafka: KafkaConnection, topic: str, events: list[Any], rate: float) -> float:
    """Publish at ``rate`` events/s in 10 ms ticks; returns the achieved offered rate."""
    payloads = [(encode(e), e.key_bytes()) for e in events]
    producer = AIOKafkaProducer(**kafka.client_kwargs(), linger_ms=1, acks="all")
    await producer.start()
    try:
        futures = []
        t0 = time.monotonic()
        sent = 0
        while sent < len(payloads):
            due = min(len(payloads), int((time.monotonic() - t0) * rate) + 1)
            for value, key in payloads[sent:due]:
                futures.append(await producer.send(topic, value, key=key))
            sent = due
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - t0
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(payloads) / elapsed


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


async def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("process died: " + log.read_text()[-1500:])  # noqa: ASYNC240 - failure path
            try:
                if (await http.get(url, timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not ready: " + log.read_text()[-1500:])  # noqa: ASYNC240 - failure path


def _spawn_scorer(
    kafka: KafkaConnection, settings: Settings, port: int, workdir: Path, scorer_env: dict[str, str] | None
) -> subprocess.Popen[bytes]:
    """One ``python -m vigil_scorer`` on ``settings``' topics and group, logging to workdir/scorer-<port>.log."""
    return _spawn(
        [sys.executable, "-m", "vigil_scorer"],
        {
            "VIGIL_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            **(scorer_env or {}),
            "VIGIL_TOPIC_PREFIX": settings.topic_prefix,
            "VIGIL_PARTITIONS": str(settings.partitions),
            "VIGIL_LOG_LEVEL": "WARNING",
            "SCORER_HTTP_PORT": str(port),
            "SCORER_GROUP_ID": settings.group_id,
            "SCORER_REGISTRY_URL": settings.registry_url or "",
            "SCORER_DEFAULT_MODEL_PATH": str(settings.default_model_path),
            "SCORER_MODEL_CACHE_DIR": str(workdir / f"models-{port}"),
            "SCORER_BATCH_MAX_RECORDS": str(settings.batch_max_records),
            # Development mode only for the model: no registry runs here to confirm the bundled one, which a secured
            # scorer refuses otherwise. The broker stays as given (secured for --instances and --security both).
            "SCORER_DEVELOPMENT": "true",  # why: no registry to confirm the bundled model; the broker is not relaxed
        },
        workdir / f"scorer-{port}.log",
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


async def _baseline(rows: np.ndarray, *, requests: int, concurrency: int, workdir: Path) -> dict[str, Any]:
    port = _free_port()
    log = workdir / "baseline.log"
    proc = _spawn(
        [sys.executable, "-m", "uvicorn", "vigil_scorer.baseline:app", "--port", str(port), "--log-level", "warning"],
        {"BASELINE_MODEL_PATH": str(package_path("1"))},
        log,
    )
    try:
        await _wait_http(f"http://127.0.0.1:{port}/health", proc, log)
        bodies = [orjson.dumps({"features": [None if v != v else float(v) for v in row]}) for row in rows[:requests]]
        latencies: list[float] = []
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(bodies[i % len(bodies)])
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as http:
            await http.post("/predict", content=bodies[0], headers={"content-type": "application/json"})

            async def worker() -> None:
                while not queue.empty():
                    body = queue.get_nowait()
                    t = time.perf_counter()
                    r = await http.post("/predict", content=body, headers={"content-type": "application/json"})
                    r.raise_for_status()
                    latencies.append((time.perf_counter() - t) * 1000.0)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - t0
    finally:
        _stop(proc)
    return {
        "predictions_per_s": round(requests / elapsed, 1),
        "latency_p50_ms": _pct(latencies, 50),
        "latency_p99_ms": _pct(latencies, 99),
        "concurrency": concurrency,
        "requests": requests,
        "model_call": "onnxruntime single row (no scikit-learn estimator in the package)",
    }


async def run(
    bootstrap: str | KafkaConnection,
    *,
    stays: int = 240,
    latency_stays: int = 160,
    rate: float = 5000.0,
    extra_rates: tuple[float, ...] = (2000.0,),
    latency_seconds: float = 8.0,
    batch_max_records: int = 2000,
    baseline_requests: int = 3000,
    baseline_concurrency: int = 8,
    settle_s: float = 3.0,
    throughput_only: bool = False,
    scorer_env: dict[str, str] | None = None,
    provision: Callable[[Topics], Any] | None = None,
) -> dict[str, Any]:
    """Run the three measurements (see the module docstring) and return their figures.

    ``bootstrap`` is a plain address (the ``VIGIL_KAFKA_*`` settings give the security) or a connection;
    ``scorer_env`` gives the scorer process its broker credentials; ``provision`` creates the topics and ACLs as
    the administrator on a secured broker (the scorer's principal cannot create topics).
    """
    kafka = (
        bootstrap if isinstance(bootstrap, KafkaConnection) else VigilSettings(kafka_bootstrap_servers=bootstrap).kafka
    )
    with scratch_dir("vigil-bench-scorer-") as workdir:
        settings = Settings(
            kafka_bootstrap_servers=kafka.bootstrap_servers,
            topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
            partitions=6,
            # Under the scorer principal's consumer-group ACL (vigil-scorer*).
            group_id="vigil-scorer-bench",
            registry_url="http://127.0.0.1:9",
            default_model_path=package_path("1"),
            batch_max_records=batch_max_records,
        )
        topics = settings.topics
        if provision is not None:
            await asyncio.to_thread(provision, topics)
        else:
            await ensure_topics(settings)

        frame = load_stays(stays, first=1)
        events = events_of(frame, tag="thr-")
        rates = [rate, *extra_rates]
        lat_runs = [
            (r, f"l{i:02d}", _latency_events(i, r, latency_seconds, latency_stays)) for i, r in enumerate(rates)
        ]
        await _publish_all(kafka, topics.observations, events)
        # The prepared events are hundreds of thousands of objects: a full collection over them paused this process
        # (the load generator: its producer stamps a record's time before sending it) for 300 ms and more, which
        # showed up as scorer latency. Freeze them out of the collector's reach.
        gc.collect()
        gc.freeze()

        reader = _Reader(kafka, topics.scores_live)
        await reader.start()
        port = _free_port()
        scorer = _spawn_scorer(kafka, settings, port, workdir, scorer_env)
        try:
            done = await reader.wait(_final_observations(events), within=600)
            created = reader.created.get("thr", [])
            window = (max(created) - min(created)) if len(created) > 1 else float("nan")
            throughput = {
                "events": len(events),
                "scores": len(created),
                "events_per_s": round(len(events) / window, 1) if window == window and window > 0 else None,
                "scores_per_s": round(len(created) / window, 1) if window == window and window > 0 else None,
                "complete": done,
            }
            latencies = []
            for r, tag, lat_events in [] if throughput_only else lat_runs:
                # Latency is a steady-state figure: let the scorer write the checkpoint of the burst before (a few
                # megabytes of states after the throughput run) rather than measure that catch-up.
                await asyncio.sleep(settle_s)
                offered = await _publish_paced(kafka, topics.observations, lat_events, r)
                t_end = time.monotonic()
                done_lat = await reader.wait(_final_observations(lat_events), within=300)
                drain_s = time.monotonic() - t_end
                lat = reader.latency.get(tag, [])
                blocks = [v for b, v in sorted(reader.latency_by_block.items()) if b.startswith(tag)]
                latencies.append(
                    {
                        "target_events_per_s": r,
                        "offered_events_per_s": round(offered, 1),
                        "events": len(lat_events),
                        "scores": len(lat),
                        "p50_ms": _pct(lat, 50),
                        "p99_ms": _pct(lat, 99),
                        "max_ms": round(max(lat), 1) if lat else None,
                        "blocks": len(blocks),
                        # Lists, so ``vigil bench compare`` (which compares numbers) leaves them to the reader.
                        "p50_ms_per_block": [_pct(v, 50) for v in blocks],
                        "p99_ms_per_block": [_pct(v, 99) for v in blocks],
                        "drain_after_last_send_s": round(drain_s, 2),
                        "complete": done_lat,
                    }
                )
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        finally:
            _stop(scorer)
            await reader.stop()
        if throughput_only:
            return {"throughput": throughput}
        batch_sum = _metric(metrics, "vigil_batch_size_sum")
        batch_count = _metric(metrics, "vigil_batch_size_count")
        core_only = _core_only(events, batch_max_records)
        rows = offline_features(frame).to_numpy(dtype=np.float32)
        baseline = await _baseline(rows, requests=baseline_requests, concurrency=baseline_concurrency, workdir=workdir)
        events_ratio = (throughput["events_per_s"] or 0) / baseline["predictions_per_s"]
        scores_ratio = (throughput["scores_per_s"] or 0) / baseline["predictions_per_s"]
        return {
            "bench": "scorer",
            "throughput": throughput,
            "core_only_in_process": core_only,
            "latency_at_fixed_load": latencies[0],
            "latency_at_other_loads": latencies[1:],
            "baseline_article_fastapi": baseline,
            "ratio_events_per_s_vs_baseline_predictions_per_s": round(events_ratio, 2),
            "ratio_scores_per_s_vs_baseline_predictions_per_s": round(scores_ratio, 2),
            "mean_batch_size": round(batch_sum / batch_count, 1) if batch_count else None,
            "mean_batch_seconds": {
                stage: round(
                    _metric(metrics, f'vigil_processing_seconds_sum{{service="scorer",stage="{stage}"}}') / batch_count,
                    4,
                )
                for stage in ("batch", "score", "publish_scores")
            }
            if batch_count
            else None,
            "checkpoints": _checkpoints(metrics),
            "targets": {"events_per_s": 20000, "p99_ms_at_5000_events_per_s": 50},
            "machine_cpus": os.cpu_count(),
        }


BLOCK_SECONDS = 8.0
"""Longest stretch of a latency run drawn from one set of stays (160 stays give about 43,000 events: 8.7 s at
5,000 events/s); a longer run is several blocks, each of fresh stays."""


def _latency_events(run: int, rate: float, seconds: float, max_stays: int) -> list[Any]:
    """The events of latency run ``run``: ``rate * seconds`` events in blocks of fresh stays, back to back.

    A block is what this bench's latency run always was: ``n_stays`` stays interleaved hour by hour, cut to
    ``rate * BLOCK_SECONDS`` events, so a run of 8 seconds or less is unchanged and a longer one repeats that shape
    instead of running its stays out (the longest stays alone, few encounters, in a run's tail).
    """
    n_events = int(rate * seconds)
    per_block = int(rate * BLOCK_SECONDS)
    # Enough stays for a block (about 270 events a stay in set A), each run its own encounters.
    n_stays = max(10, min(max_stays, int(min(n_events, per_block) / 150) + 5))
    events: list[Any] = []
    block = 0
    while len(events) < n_events:
        # Block 0 from the stays this bench always used; later blocks from stays no other run's block 0 uses.
        first = 10_000 + 400 * run if block == 0 else 14_000 + 1_500 * run + n_stays * (block - 1)
        # Block 0 keeps the tag (hence the keys and partitions) the 8-second run always had.
        tag = f"l{run:02d}-" if block == 0 else f"l{run:02d}b{block}-"
        stays = events_of(load_stays(n_stays, first=first), tag=tag)
        if not stays:
            raise ValueError(f"set A has no stays from p{first:06d} on: ask for a shorter latency run")
        events += stays[: min(per_block, n_events - len(events))]
        block += 1
    return events


def _core_only(events: list[Any], batch: int) -> dict[str, Any]:
    """The same events through ScoringCore in this process (JSON parsing and scoring, no broker): the CPU bound.

    Checkpoints are left out: the service captures one a second, whatever the batch size.
    """
    from vigil_contracts.events import Stage, canonical_event_adapter
    from vigil_scoring.model_package import ModelPackage
    from vigil_scoring.scoring import Incoming, ScoringCore

    payloads = [encode(e) for e in events]
    core = ScoringCore(ModelPackage.load(package_path("1")), stage=Stage.PRODUCTION)
    scores = 0
    t0 = time.perf_counter()
    for i in range(0, len(payloads), batch):
        chunk = payloads[i : i + batch]
        items = [Incoming(canonical_event_adapter.validate_json(v), None, 0, i + j) for j, v in enumerate(chunk)]
        scores += len(core.process(items).scores)
    elapsed = time.perf_counter() - t0
    return {"events_per_s": round(len(events) / elapsed, 1), "scores_per_s": round(scores / elapsed, 1)}


def _checkpoints(metrics: str) -> dict[str, Any]:
    """How many checkpoints the scorer wrote and the mean seconds of their steps (capture, changelog, commit)."""
    count = _metric(metrics, 'vigil_processing_seconds_count{service="scorer",stage="snapshot"}')
    if not count:
        return {"count": 0}
    return {
        "count": int(count),
        **{
            f"mean_{stage}_s": round(
                _metric(metrics, f'vigil_processing_seconds_sum{{service="scorer",stage="{stage}"}}') / count, 4
            )
            for stage in ("snapshot", "publish_state", "commit")
        },
    }


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def compare_security(
    *, plaintext_port: int, secured_port: int, stays: int = 240, rounds: int = 2, batch_max_records: int = 2000
) -> dict[str, Any]:
    """Throughput on a secured and on a plaintext broker, alternating ``rounds`` times, in one run.

    Both brokers are local single nodes started here (and stopped at the end if started here) with the same
    settings but security; the secured one runs the scorer as the ``scorer`` principal under the ACL table.
    """
    from vigil.kafka_local import LocalCluster

    clusters = {
        # The plaintext broker is the baseline the secured one is measured against (the cost of TLS + SASL).
        "plaintext": LocalCluster(name="bench-plaintext", base_port=plaintext_port, secured=False),
        "sasl_ssl": LocalCluster(name="bench-sasl-ssl", base_port=secured_port),
    }
    started = []
    for cluster in clusters.values():
        if not cluster.running():
            await asyncio.to_thread(cluster.start, timeout=120)
            started.append(cluster)
    runs: dict[str, list[float]] = {name: [] for name in clusters}
    try:
        for _ in range(rounds):
            for name, cluster in clusters.items():
                result = await run(
                    cluster.connection(),
                    stays=stays,
                    batch_max_records=batch_max_records,
                    throughput_only=True,
                    scorer_env=cluster.service_env("SCORER", "scorer"),
                    provision=cluster.provision,
                )
                if not result["throughput"]["complete"] or not result["throughput"]["events_per_s"]:
                    raise RuntimeError(f"{name}: the scorer did not score every event: {result['throughput']}")
                runs[name].append(result["throughput"]["events_per_s"])
    finally:
        for cluster in started:
            await asyncio.to_thread(cluster.stop)
    best = {name: max(values) for name, values in runs.items()}
    return {
        "bench": "scorer-security",
        "events_per_s_runs": runs,
        "events_per_s_best": best,
        "ratio_sasl_ssl_vs_plaintext": round(best["sasl_ssl"] / best["plaintext"], 3),
        "aim": "ratio >= 0.85 (at most 15% fewer events/s)",
        "stays": stays,
        "machine_cpus": os.cpu_count(),
    }


async def scale_out(
    *,
    port: int,
    counts: tuple[int, ...] = (1, 2, 3),
    stays: int = 240,
    rounds: int = 2,
    partitions: int = 6,
    batch_max_records: int = 2000,
    settle_s: float = 5.0,
) -> dict[str, Any]:
    """Scorer throughput with 1, 2, 3... instances in one consumer group, interleaved ``rounds`` times, in one run.

    A secured single-node broker of its own (started here on ``port`` unless it runs). Each run has its own topics
    (``partitions`` of them) and group; its instances are started and ready (assigned) before the stays are
    published, so the figure is scoring shared by a settled group, not its joins: events/s from the first score's
    creation to the last's. The ratio of each count's best run to one instance's is the scaling on this machine.
    """
    from vigil.kafka_local import LocalCluster

    cluster = LocalCluster(name="bench-scale-out", base_port=port)
    started = not cluster.running()
    if started:
        await asyncio.to_thread(cluster.start, timeout=120)
    kafka = cluster.connection()
    events = events_of(load_stays(stays, first=1), tag="thr-")
    expected = _final_observations(events)
    runs: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for _ in range(rounds):
            for n in counts:
                runs[n].append(
                    await _scaled_run(cluster, kafka, n, events, expected, partitions, batch_max_records, settle_s)
                )
    finally:
        if started:
            await asyncio.to_thread(cluster.stop)
    best = {n: max(values) for n, values in runs.items()}
    first = best[counts[0]]
    return {
        "bench": "scorer-scale-out",
        "events_per_s_runs": {str(n): v for n, v in runs.items()},
        "events_per_s_best": {str(n): v for n, v in best.items()},
        "ratio_vs_one_instance": {str(n): round(v / first, 3) for n, v in best.items()},
        "events": len(events),
        "partitions": partitions,
        "machine_cpus": os.cpu_count(),
    }


async def _scaled_run(
    cluster: Any,
    kafka: KafkaConnection,
    n: int,
    events: list[Any],
    expected: dict[str, int],
    partitions: int,
    batch_max_records: int,
    settle_s: float,
) -> float:
    """One run of ``n`` scorer instances over ``events``; returns events/s."""
    with scratch_dir("vigil-bench-scale-out-") as workdir:
        settings = Settings(
            kafka_bootstrap_servers=kafka.bootstrap_servers,
            topic_prefix=f"scale{uuid.uuid4().hex[:8]}.",
            partitions=partitions,
            group_id=f"vigil-scorer-scale-{uuid.uuid4().hex[:6]}",  # under the scorer principal's group ACL
            registry_url="http://127.0.0.1:9",
            default_model_path=package_path("1"),
            batch_max_records=batch_max_records,
        )
        await asyncio.to_thread(cluster.provision, settings.topics, partitions=partitions)
        reader = _Reader(kafka, settings.topics.scores_live)
        await reader.start()
        ports = [_free_port() for _ in range(n)]
        procs = [_spawn_scorer(kafka, settings, p, workdir, cluster.service_env("SCORER", "scorer")) for p in ports]
        try:
            for proc, p in zip(procs, ports, strict=True):
                await _wait_http(f"http://127.0.0.1:{p}/ready", proc, workdir / f"scorer-{p}.log", within=180)
            await asyncio.sleep(settle_s)  # the last join's rebalance settles before anything is published
            await _publish_all(kafka, settings.topics.observations, events)
            if not await reader.wait(expected, within=600):
                raise RuntimeError(f"{n} instance(s): not every event was scored")
            created = reader.created.get("thr", [])
            return round(len(events) / (max(created) - min(created)), 1)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                _stop(proc)
            await reader.stop()


def main(argv: list[str] | None = None) -> None:
    """Command line: the figures as one JSON line on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default=os.environ.get("VIGIL_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--stays", type=int, default=240)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--extra-rates", default="2000", help="Comma-separated further offered loads (events/s).")
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument("--batch-max-records", type=int, default=2000)
    args = parser.parse_args(argv)
    result = asyncio.run(
        run(
            args.bootstrap,
            stays=args.stays,
            rate=args.rate,
            extra_rates=tuple(float(x) for x in args.extra_rates.split(",") if x.strip()),
            latency_seconds=args.latency_seconds,
            batch_max_records=args.batch_max_records,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
