"""The whole path under load: FHIR bundles over HTTP into ingest, through the broker, to live scores.

``vigil bench e2e`` starts a local stack (a secured broker as ``vigil up`` runs it: SASL_SSL, SCRAM, ACLs, each
service its own principal; ingest and the scorer, shadow and drift on request) or uses a running one, and posts
bundles as an EHR interface engine sends them: one transaction Bundle per encounter-hour (the bundled PhysioNet
sample's rows, about seven readings each, the first one with the Patient and the Encounter), many encounters,
several concurrent connections. Each load is open loop: bundle ``i`` is due at (observations before it) / (offered
observations per second), whether or not ingest has answered the ones before, so a slow path shows as latency
instead of slowing the sender down (coordinated omission). One encounter's bundles go in order, each after its
predecessor's answer, as an interface engine keeps a patient's messages in order.

Matching a score to a post: every bundle is posted with its own ``X-Correlation-ID`` (a run tag and a counter,
no patient or encounter id); ingest puts it on the events, and the scorer's score carries the correlation id of
the newest observation of its encounter in the batch (``vigil_runtime.tracing``). A bundle counts as scored at the
first score of its encounter that includes all of it: a score carrying a later bundle's id, or its own id with as
many observations as its encounter holds after it (a batch may end inside a bundle). Latency is that score's
record timestamp (the scorer's clock, on this machine) minus the time the bundle was *due* to be posted.

Figures per load (one JSON line each): observations offered and delivered per second, p50/p99/max latency, how
many bundles ingest acknowledged and were scored, CPU seconds of every process of the path (from /proc) and per
bundle, and the article-style baseline (the same model behind FastAPI, one HTTP request per prediction, as
``vigil bench scorer`` measures it) run in the same process, with the ratio. The target from issue 19: 8,000
observations/s sustained with p99 at most 250 ms on the 2-core machine.

``--profile-dir``: py-spy samples ingest and the scorer during one load (``--profile-load``) and the per-process
share of the hottest functions is added to that load's line (the raw collapsed stacks stay in the directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench.bench_scorer import _baseline
from bench.support import scratch_dir
from vigil_contracts.headers import CORRELATION_ID
from vigil_contracts.topics import Topics

TARGET = {"observations_per_s": 8000, "p99_ms": 250}
"""Issue 19's target on the 2-core machine with everything on it."""


# --- the plan: which bundles, when ------------------------------------------------------------------------------


@dataclass(slots=True)
class Post:
    """One bundle to post and what became of it (times are ``time.time()`` seconds)."""

    encounter: str
    hour: int
    observations: int
    """Observation resources in the bundle (the readings it adds)."""
    body: bytes
    due: float = 0.0
    """Offset from the load's start at which it is due; absolute once the load starts."""
    sent: float | None = None
    answered: float | None = None
    status: int | None = None
    scored: float | None = None


def plan(rate: float, seconds: float, *, tag: str, data: Path | None = None) -> list[Post]:
    """The bundles of one load: ``rate / 8`` encounters ("beds"), each sending one encounter-hour per second.

    The sample's stays are reused under fresh encounter ids where more beds than stays are needed; every load
    gets encounters of its own (``tag``), so no state carries over between loads.
    """
    from vigil.simulate import SimulationReport, Stay, hour_bundle, load_stays

    stays = [s for s in load_stays(data, id_prefix=tag) if s.hours >= seconds]
    beds = max(1, round(rate / 8))
    report = SimulationReport()
    per_bed: list[list[Post]] = []
    for bed in range(beds):
        source = stays[bed % len(stays)]
        copy = bed // len(stays)
        stay: Stay = dataclasses.replace(
            source, encounter=f"{source.encounter}-{copy}", patient=f"{source.patient}-{copy}"
        )
        posts = []
        for i, (_, row) in enumerate(stay.rows.head(int(seconds)).iterrows()):
            bundle = hour_bundle(stay, row, first=i == 0, last=False, sim_hour=0.0, drifts=[], report=report)
            if bundle is None:
                continue
            n = sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
            posts.append(Post(stay.encounter, int(row["hour"]), n, orjson.dumps(bundle)))
        per_bed.append(posts)
    # Hour by hour across the beds, as a unit's interface engine sends them; due by observations sent before.
    ordered = [p for hour in range(int(seconds)) for posts in per_bed if hour < len(posts) for p in [posts[hour]]]
    sent = 0
    for p in ordered:
        p.due = sent / rate
        sent += p.observations
    return ordered


# --- the accounting: which score answers which post ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoreSeen:
    """A live score as the reader saw it: whose correlation id it carries, how many readings, when it was made."""

    post: int | None
    """Index of the post whose correlation id the score carries (None: not one of this run's)."""
    encounter: str
    observations: int
    at: float


def match(posts: Sequence[Post], scores: Iterable[ScoreSeen]) -> None:
    """Set each post's ``scored`` time: the first score of its encounter that includes all of the bundle.

    A score carrying post k's id includes all of post k when it holds as many observations as the most any score
    carrying k's id held (a batch can end inside a bundle: then an earlier score carries k's id with fewer); a
    score carrying a later post's id of the same encounter includes post k. Scores of one encounter arrive in
    order (one partition), which is what makes one forward pass enough.
    """
    position: dict[int, int] = {}
    by_encounter: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(posts):
        position[i] = len(by_encounter[p.encounter])
        by_encounter[p.encounter].append(i)
    mine = [s for s in scores if s.post is not None and s.post in position]
    full: dict[int, int] = {}
    for s in mine:
        assert s.post is not None
        full[s.post] = max(full.get(s.post, 0), s.observations)
    next_position: dict[str, int] = defaultdict(int)
    for s in mine:
        assert s.post is not None
        order = by_encounter[posts[s.post].encounter]
        here = position[s.post]
        k = next_position[s.encounter]
        while k < len(order) and (k < here or (k == here and s.observations >= full[s.post])):
            if posts[order[k]].scored is None:
                posts[order[k]].scored = s.at
            k += 1
        next_position[s.encounter] = k


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation, numpy's default), rounded to 0.1; None without values."""
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def summarize(posts: Sequence[Post], target: float) -> dict[str, Any]:
    """The figures of one load from its posts (after :func:`match`)."""
    start = min(p.due for p in posts)
    acknowledged = [p for p in posts if p.status is not None and 200 <= p.status < 300]
    scored = [p for p in acknowledged if p.scored is not None]
    observations = sum(p.observations for p in posts)
    last_send = max((p.sent for p in posts if p.sent is not None), default=start)
    last_score = max((p.scored for p in scored if p.scored is not None), default=start)
    latency = [(p.scored - p.due) * 1000.0 for p in scored if p.scored is not None]
    from_send = [(p.scored - p.sent) * 1000.0 for p in scored if p.scored is not None and p.sent is not None]
    http = [(p.answered - p.sent) * 1000.0 for p in acknowledged if p.answered is not None and p.sent is not None]
    delivered = sum(p.observations for p in scored)
    offered_rate = observations / (last_send - start) if last_send > start else None
    delivered_rate = delivered / (last_score - start) if last_score > start else None
    return {
        "target_obs_per_s": target,
        "offered_obs_per_s": round(offered_rate, 1) if offered_rate else None,
        "delivered_obs_per_s": round(delivered_rate, 1) if delivered_rate else None,
        "bundles": len(posts),
        "observations": observations,
        "observations_per_bundle": round(observations / len(posts), 2),
        "encounters": len({p.encounter for p in posts}),
        "http_status": dict(Counter(str(p.status) for p in posts)),
        "bundles_acknowledged": len(acknowledged),
        "bundles_scored": len(scored),
        "latency_ms": {"p50": percentile(latency, 50), "p99": percentile(latency, 99), "max": _max(latency)},
        "latency_from_send_ms": {"p50": percentile(from_send, 50), "p99": percentile(from_send, 99)},
        "ingest_answer_ms": {"p50": percentile(http, 50), "p99": percentile(http, 99)},
        "drain_after_last_send_s": round(last_score - last_send, 2),
        # Sustained: (almost) every bundle scored, at (almost) the offered rate, and the backlog gone within a
        # second of the last post; a load the path cannot carry falls behind and fails at least one of these.
        "sustained": bool(
            len(scored) >= 0.999 * len(posts)
            and delivered_rate is not None
            and delivered_rate >= 0.95 * target
            and last_score - last_send <= 1.0
        ),
    }


def _max(values: Sequence[float]) -> float | None:
    return round(max(values), 1) if values else None


# --- the processes ----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            out[name] = cpu_seconds(pid)
    return out


@dataclass
class PathUnderTest:
    """The stack under test: where to post, what to read, whose CPU to count, what to stop at the end."""

    ingest_url: str
    token: str
    topics: Topics
    kafka: Any
    pids: dict[str, int]
    stop: list[Any] = field(default_factory=list)


def open_stack(
    *, start: bool, kafka_port: int, port_base: int, services: Sequence[str], partitions: int
) -> tuple[Any, PathUnderTest]:
    """Start (or find) the stack; returns it and the path under test."""
    from vigil.credentials import ensure_secrets
    from vigil.stack import Stack

    stack = Stack(kafka_port=kafka_port, port_base=port_base)
    if not start:
        prefix = os.environ.get("VIGIL_TOPIC_PREFIX", "vigil.")
        pids = {name: pid for name in ("ingest", "scorer", *services) if (pid := stack.pid(name)) is not None}
    else:
        prefix = f"benche2e{uuid.uuid4().hex[:6]}."
        ensure_secrets(stack.home)
        # A broker start took over 90 s (the default wait) on the shared machine at a load average of 20.
        stack.cluster.start(timeout=300)
        stack.cluster.provision(Topics(prefix), partitions=partitions)
        extra = {
            "VIGIL_TOPIC_PREFIX": prefix,
            "VIGIL_PARTITIONS": str(partitions),
            "VIGIL_LOG_LEVEL": "WARNING",
            # Development mode for the scorer alone: it serves the bundled model without a registry (outside it a
            # scorer the registry does not confirm serves nothing). Its Kafka connection stays SASL_SSL as its
            # own principal; the broker and the other services are as `vigil up` runs them.
            "SCORER_DEVELOPMENT": "true",  # why: no registry in this bench, so nothing can confirm a model
        }
        names = ["ingest", "scorer", *services]
        for name in names:
            stack.start_service(stack.spec(name), extra)
        ready = stack.wait_ready(timeout=120, names=names)
        if not all(ready.values()):
            stack.down()
            raise RuntimeError(f"not ready: {ready}; logs in {stack.log_dir}")
        pids = {name: pid for name in names if (pid := stack.pid(name)) is not None}
    for node in stack.cluster.nodes:
        if (pid := node.pid()) is not None:
            pids[f"broker-{node.node_id}"] = pid
    pids["bench"] = os.getpid()
    path = PathUnderTest(
        ingest_url=stack.url("ingest"),
        token=stack.token("simulator"),  # secured: the stack's own EHR-sender credential, write scope only
        topics=Topics(prefix),
        kafka=stack.cluster.connection(),
        pids=pids,
    )
    return stack, path


# --- one load ---------------------------------------------------------------------------------------------------


class ScoreReader:
    """Reads the live topic from the start: each score's correlation id, encounter, observations and time."""

    def __init__(self, kafka: Any, topic: str, run: str) -> None:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(topic, **kafka.client_kwargs(), auto_offset_reset="earliest")
        self.prefix = f"{run}-".encode()
        self.scores: list[ScoreSeen] = []
        self.foreign = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=50, max_records=5000)
            for records in batch.values():
                for r in records:
                    cid = dict(r.headers or ()).get(CORRELATION_ID, b"")
                    post = int(cid[len(self.prefix) :]) if cid.startswith(self.prefix) else None
                    if post is None:
                        self.foreign += 1
                        continue
                    s = orjson.loads(r.value)
                    self.scores.append(ScoreSeen(post, s["encounter"], s["observations"], r.timestamp / 1000.0))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()


async def offer(path: PathUnderTest, posts: list[Post], *, run: str, first: int, senders: int) -> None:
    """Post every bundle at its due time (open loop), one encounter's in order, ``senders`` connections."""
    url = f"{path.ingest_url}/fhir"
    headers = {"content-type": "application/fhir+json", "authorization": f"Bearer {path.token}"}
    gate = asyncio.Semaphore(senders)
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    previous: dict[str, asyncio.Task[None]] = {}

    async def post(i: int, p: Post, before: asyncio.Task[None] | None, client: httpx.AsyncClient) -> None:
        if before is not None:
            await asyncio.gather(before, return_exceptions=True)
        async with gate:
            p.sent = time.time()
            try:
                r = await client.post(url, content=p.body, headers={**headers, "x-correlation-id": f"{run}-{i}"})
                p.status = r.status_code
            except httpx.HTTPError:
                p.status = -1  # counted under http_status; the encounter's next bundle still goes
                return
            p.answered = time.time()

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        t0 = time.time() + 0.2
        tasks = []
        for i, p in enumerate(posts):
            p.due += t0
            delay = p.due - time.time()
            if delay > 0.001:
                await asyncio.sleep(delay)
            elif i % 64 == 0:
                await asyncio.sleep(0)  # behind schedule: still let the answers in
            task = asyncio.create_task(post(first + i, p, previous.get(p.encounter), client))
            previous[p.encounter] = task
            tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)


async def profile(pids: dict[str, int], seconds: float, out: Path) -> dict[str, Any]:
    """py-spy record of each process for ``seconds`` (raw collapsed stacks); the hottest frames per process."""
    exe = shutil.which("py-spy")
    if exe is None:
        return {"error": "py-spy not found (pip install py-spy)"}
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - before the load starts
    procs = {}
    for name, pid in pids.items():
        target = out / f"{name}.txt"
        procs[name] = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "100",
            "--format", "raw", "--nonblocking", "--output", str(target),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    for p in procs.values():
        await p.wait()
    return {name: hot_frames((out / f"{name}.txt").read_text()) for name in pids if (out / f"{name}.txt").exists()}


IDLE_LEAVES = frozenset({"select", "poll", "epoll", "wait", "acquire", "sleep"})
"""Functions a thread waits in (the event loop's selector, a worker thread's condition): samples ending in one are
idle. py-spy's own idle detection counts a thread as busy while it waits for a CPU, which on a loaded machine is
most of the time."""


def hot_frames(collapsed: str, top: int = 12) -> dict[str, Any]:
    """Share of samples per function, inclusive (on the stack) and self (on top), from py-spy's raw output.

    Idle samples (the event loop waiting in ``select``/``epoll``) are counted apart, so the shares are of the time
    the process was busy.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = [f.split(" (")[0] + " " + _module(f) for f in stack.split(";") if f]
        if frames and frames[-1].split(" ")[0].rpartition(".")[2] in IDLE_LEAVES:
            idle += n
            continue
        total += n
        for f in set(frames):
            inclusive[f] += n
        if frames:
            own[frames[-1]] += n
    if not total:
        return {"busy_samples": 0, "idle_samples": idle}
    return {
        "busy_samples": total,
        "idle_samples": idle,
        "self_top": {f: round(n / total, 3) for f, n in own.most_common(top)},
        "inclusive_top": {f: round(n / total, 3) for f, n in inclusive.most_common(top * 3)},
    }


def _module(frame: str) -> str:
    """``(path/to/module.py:12)`` -> ``module.py``."""
    inside = frame.partition(" (")[2].rstrip(")")
    return inside.rsplit("/", 1)[-1].split(":")[0]


async def idle_cpu(path: PathUnderTest, seconds: float) -> dict[str, float]:
    """CPU seconds per second of each process while nothing is posted: what polling and timers cost by the clock.

    At a low load this is much of the CPU per bundle (a scorer idle costs the same whether one bundle a second
    arrives or none), so each load's line also gives its CPU per bundle net of it.
    """
    before, t0 = _cpu(path.pids), time.monotonic()
    await asyncio.sleep(seconds)
    after, elapsed = _cpu(path.pids), time.monotonic() - t0
    return {k: round((after[k] - before[k]) / elapsed, 4) for k in after if k in before}


async def run_load(
    path: PathUnderTest,
    rate: float,
    seconds: float,
    *,
    index: int,
    senders: int,
    drain_s: float,
    profile_dir: Path | None,
    idle: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One load: plan, offer, read the scores, match; the figures and the CPU per process."""
    run = f"e2e{uuid.uuid4().hex[:6]}"
    posts = await asyncio.to_thread(plan, rate, seconds, tag=f"b{index:02d}{run[-4:]}")
    reader = ScoreReader(path.kafka, path.topics.scores_live, run)
    await reader.start()
    cpu0, t0 = _cpu(path.pids), time.monotonic()
    spy = None
    if profile_dir is not None:
        busy = {k: v for k, v in path.pids.items() if not k.startswith("broker") and k != "bench"}
        spy = asyncio.create_task(profile(busy, seconds, profile_dir / f"load-{int(rate)}"))
    await offer(path, posts, run=run, first=0, senders=senders)
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline:
        match(posts, reader.scores)
        waiting = [p for p in posts if p.status is not None and 200 <= p.status < 300 and p.scored is None]
        # The last bundle of each encounter has no later one to cover it: it waits for its own full score.
        if not waiting:
            break
        await asyncio.sleep(0.2)
    cpu1, wall = _cpu(path.pids), time.monotonic() - t0
    await reader.stop()
    figures = summarize(posts, rate)
    cpu = {k: round(cpu1[k] - cpu0[k], 2) for k in cpu1 if k in cpu0}
    figures["cpu_s"] = cpu
    figures["cpu_ms_per_bundle"] = {k: round(1000 * v / len(posts), 3) for k, v in cpu.items()}
    figures["cpu_ms_per_bundle_path"] = round(
        sum(v for k, v in figures["cpu_ms_per_bundle"].items() if k != "bench"), 3
    )
    figures["wall_s"] = round(wall, 1)
    if idle:
        figures["idle_cpu_s_per_s"] = idle
        figures["cpu_ms_per_bundle_net_of_idle"] = {
            k: round(1000 * (v - idle.get(k, 0.0) * wall) / len(posts), 3) for k, v in cpu.items()
        }
    figures["scores_read"] = len(reader.scores)
    if spy is not None:
        figures["profile"] = await spy
    return figures


async def main(
    *,
    loads: Sequence[float],
    seconds: float = 10.0,
    senders: int = 64,
    start: bool = True,
    kafka_port: int = 29692,
    port_base: int = 28001,
    services: Sequence[str] = (),
    partitions: int = 6,
    drain_s: float = 30.0,
    idle_s: float = 15.0,
    profile_dir: Path | None = None,
    profile_load: float | None = None,
    baseline_requests: int = 3000,
    baseline_concurrency: int = 8,
    emit: Any = print,
) -> list[dict[str, Any]]:
    """Every load in turn (one JSON line each through ``emit``), after the baseline; stops what it started."""
    import pandas as pd

    from vigil.simulate import SAMPLE
    from vigil_scoring.features import offline_features

    rows = offline_features(pd.read_parquet(SAMPLE)).to_numpy(dtype=np.float32)
    with scratch_dir("vigil-bench-e2e-") as workdir:
        for attempt in range(3):
            try:
                baseline = await _baseline(
                    rows, requests=baseline_requests, concurrency=baseline_concurrency, workdir=workdir
                )
                break
            except RuntimeError:
                # Its server not answering within 90 s happens on a machine loaded ten times over: try again.
                if attempt == 2:
                    raise
    stack, path = await asyncio.to_thread(
        open_stack,
        start=start,
        kafka_port=kafka_port,
        port_base=port_base,
        services=services,
        partitions=partitions,
    )
    results = []
    try:
        idle = await idle_cpu(path, idle_s) if idle_s > 0 else None
        for i, rate in enumerate(loads):
            load_before = os.getloadavg()[0]
            figures = await run_load(
                path,
                rate,
                seconds,
                index=i,
                senders=senders,
                drain_s=drain_s,
                profile_dir=profile_dir if profile_dir is not None and rate == (profile_load or max(loads)) else None,
                idle=idle,
            )
            delivered = figures["delivered_obs_per_s"] or 0.0
            line = {
                "bench": "e2e",
                **figures,
                "baseline_article_fastapi": baseline,
                "ratio_delivered_obs_per_s_vs_baseline_predictions_per_s": round(
                    delivered / baseline["predictions_per_s"], 2
                ),
                "ratio_scored_bundles_per_s_vs_baseline_predictions_per_s": round(
                    delivered / figures["observations_per_bundle"] / baseline["predictions_per_s"], 2
                ),
                "target": TARGET,
                "meets_target": bool(
                    figures["sustained"]
                    and rate >= TARGET["observations_per_s"]
                    and (figures["latency_ms"]["p99"] or 1e9) <= TARGET["p99_ms"]
                ),
                "services": sorted(k for k in path.pids if k != "bench"),
                "partitions": partitions,
                "senders": senders,
                "seconds": seconds,
                "load_average_before": round(load_before, 2),
                "machine_cpus": os.cpu_count(),
            }
            emit(orjson.dumps(line).decode())
            results.append(line)
    finally:
        if start:
            await asyncio.to_thread(stack.down)
    return results
