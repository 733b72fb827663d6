"""Before/after in one run: an older commit's scorer and ingest benchmarks against this checkout's, interleaved.

``vigil bench compare --before REV`` checks REV out into a temporary git worktree, gives it an environment of its
own (``uv sync --frozen --all-packages`` into that worktree's ``.venv``; uv's cache makes this quick), starts one
local broker for both sides, and runs the two versions' benchmarks as child processes in turns: before, after,
before, after... for ``--rounds`` rounds. Whatever else loads the machine then weighs on both sides alike, which
two runs an hour apart cannot promise. It prints one JSON line: every figure's runs and median per side and the
after/before ratio of the medians (for throughputs above 1 is better, for latencies below 1 is).

Each side runs its own ``bench/bench_scorer.py`` (``python -m bench.bench_scorer``: JSON on stdout) and
``bench/bench_ingest.py`` (``key value`` lines on stdout) unchanged, so each version is measured by its own code.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Side:
    """One version of the repository: where it is checked out and which Python runs it."""

    name: str
    root: Path

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"


@contextmanager
def checkout(rev: str, *, repo: Path = REPO) -> Iterator[Side]:
    """REV in a temporary git worktree with its own synced environment; removed afterwards."""
    parent = Path(tempfile.mkdtemp(prefix="vigil-compare-"))
    where = parent / "before"
    shared = repo.parent / "shared"
    if shared.is_dir():
        # Both versions read set A from ``../shared/data`` beside their checkout: give the old one the same.
        (parent / "shared").symlink_to(shared)
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(where), rev], check=True)
    try:
        # The old commit's own lock, into its own .venv: the before side runs exactly the code and pins of REV.
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
        subprocess.run(
            [*_uv(), "sync", "--frozen", "--all-packages", "--quiet"],
            cwd=where,
            env=env,
            check=True,
        )
        yield Side("before", where)
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(where)], check=False)
        shutil.rmtree(parent, ignore_errors=True)


def _uv() -> list[str]:
    """uv as the Makefile runs it (a module of the system Python), or the binary on PATH."""
    found = shutil.which("uv")
    return [found] if found else ["python3", "-m", "uv"]


def _child_env(side: Side) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{side.root / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # The comparison's broker is plaintext (see compare()); today's code refuses plaintext outside development
    # mode, the old one ignores both variables.
    env["VIGIL_KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"
    env["VIGIL_DEVELOPMENT"] = "true"
    return env


def flatten(data: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON document under a dotted key (booleans and strings left out)."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix.rstrip(".")] = float(data)
    return out


def parse_ingest(text: str) -> dict[str, float]:
    """The ``key value`` lines bench_ingest prints (its load-average line is skipped)."""
    figures: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("load average"):
            try:
                figures[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return figures


def run_scorer(side: Side, bootstrap: str, *, stays: int, latency_seconds: float) -> dict[str, float]:
    """One run of the side's scorer benchmark; its figures, flattened."""
    command = [
        str(side.python),
        "-m",
        "bench.bench_scorer",
        "--bootstrap",
        bootstrap,
        "--stays",
        str(stays),
        "--latency-seconds",
        str(latency_seconds),
        "--extra-rates",
        "",
    ]
    done = subprocess.run(command, cwd=side.root, env=_child_env(side), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{side.name} scorer benchmark failed ({done.returncode}): {done.stderr[-2000:]}")
    last = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    return flatten(json.loads(last))


def run_ingest(side: Side, bootstrap: str, *, n: int, baseline_n: int) -> dict[str, float]:
    """One run of the side's ingest benchmark (core and HTTP to Kafka); its figures."""
    command = [
        str(side.python),
        "bench/bench_ingest.py",
        "--n",
        str(n),
        "--repeats",
        "1",
        "--baseline-n",
        str(baseline_n),
        "--bootstrap",
        bootstrap,
    ]
    env = _child_env(side)
    env["PYTHONPATH"] = str(side.root)  # the script is run by path: its own checkout's packages come first
    done = subprocess.run(command, cwd=side.root, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{side.name} ingest benchmark failed ({done.returncode}): {done.stderr[-2000:]}")
    return parse_ingest(done.stdout)


def summarise(runs: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    """Per benchmark and figure: both sides' runs, their medians and the after/before ratio of the medians."""
    out: dict[str, Any] = {}
    for bench, sides in runs.items():
        common = sorted(set.intersection(*(set(r) for side in sides.values() for r in side)) if sides else set())
        figures: dict[str, Any] = {}
        for key in common:
            before = [r[key] for r in sides["before"]]
            after = [r[key] for r in sides["after"]]
            b, a = statistics.median(before), statistics.median(after)
            figures[key] = {
                "before": before,
                "after": after,
                "median_before": round(b, 3),
                "median_after": round(a, 3),
                "ratio_after_before": round(a / b, 3) if b else None,
            }
        out[bench] = figures
    return out


def compare(
    before_rev: str,
    *,
    port: int,
    rounds: int = 3,
    benches: Sequence[str] = ("scorer", "ingest"),
    stays: int = 120,
    latency_seconds: float = 8.0,
    ingest_n: int = 10_000,
    ingest_baseline_n: int = 1000,
    log: Any = sys.stderr,
) -> dict[str, Any]:
    """Run both versions' benchmarks interleaved on one local broker; the summary (see the module docstring)."""
    from vigil.kafka_local import LocalCluster

    # Plaintext on purpose: the old commit's benchmarks take a bare bootstrap address and know no credentials, and
    # both sides must meet the same broker; what TLS + SASL cost is measured by `vigil bench scorer --security both`.
    cluster = LocalCluster(name="bench-compare", base_port=port, secured=False)
    after = Side("after", REPO)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {b: {"before": [], "after": []} for b in benches}
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    with checkout(before_rev) as before:
        cluster.start(timeout=120)
        try:
            for round_ in range(rounds):
                # Alternate which side goes first, so neither always runs on a warmer (or busier) machine.
                order = (before, after) if round_ % 2 == 0 else (after, before)
                for side in order:
                    for bench in benches:
                        print(f"round {round_ + 1}/{rounds}: {side.name} {bench}", file=log, flush=True)
                        if bench == "scorer":
                            figures = run_scorer(
                                side, cluster.bootstrap_servers, stays=stays, latency_seconds=latency_seconds
                            )
                        else:
                            figures = run_ingest(
                                side, cluster.bootstrap_servers, n=ingest_n, baseline_n=ingest_baseline_n
                            )
                        runs[bench][side.name].append(figures)
                        # Each run's figures as they come: a run cut short still leaves what it measured.
                        print(json.dumps({"round": round_ + 1, "side": side.name, "bench": bench, **figures}), file=log)
        finally:
            cluster.stop()
    return {
        "bench": "compare",
        "before": before_rev,
        "after": head.stdout.strip() + (" (+ uncommitted)" if _dirty() else ""),
        "rounds": rounds,
        "order": "interleaved, the first side alternating per round",
        "params": {
            "stays": stays,
            "latency_seconds": latency_seconds,
            "ingest_n": ingest_n,
            "ingest_baseline_n": ingest_baseline_n,
        },
        "machine_cpus": os.cpu_count(),
        "load_average_end": round(os.getloadavg()[0], 2),
        "figures": summarise(runs),
    }


def _dirty() -> bool:
    status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
    return bool(status.stdout.strip())
