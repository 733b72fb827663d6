"""Ingest throughput: observations per second through the mapping core and through HTTP to Kafka.

Baselines measured in the same run:
- core: a naive parse of each resource with fhir.resources (R4B ``Observation.model_validate_json``), which
  validates only and maps nothing; the ratio is core obs/s over baseline obs/s.
- HTTP to Kafka: the same service with one Observation per request (how a naive integration posts) against
  Bundles of ``--bundle`` Observations; every answer is a 2xx only after the broker acknowledged the events.

Each figure is given twice: per second of wall time, and per second of CPU time of the process doing the work
(``time.process_time`` for the core; the ingest subprocess's utime+stime from /proc for HTTP). On a shared machine
the second is the honest "one core" figure: wall time there includes waiting for other people's processes.

Run: ``.venv/bin/python bench/bench_ingest.py`` (core only) or with ``--bootstrap 127.0.0.1:19092`` for HTTP to
Kafka too (starts ``python -m vigil_ingest`` as a subprocess on its own topics).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from copy import deepcopy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from vigil_ingest.mapping import Mapper

UCUM = "http://unitsofmeasure.org"
# 30 days ago at midnight UTC: ingest refuses readings later than its clock (plus a small skew), so a fixed future
# date (MIMIC's shifted 2180s) made every reading a rejection and the HTTP part fail with 422.
T0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=30)
VITALS = [
    ("8867-4", "/min", 88.0),
    ("9279-1", "/min", 18.0),
    ("2708-6", "%", 97.0),
    ("8310-5", "[degF]", 98.6),
    ("2160-0", "mg/dL", 1.1),
]


def observation(i: int, encounter: str = "enc-1", patient: str = "pat-1") -> dict[str, Any]:
    """A realistic vital-sign Observation (MIMIC-shaped); every fifth one is a BP panel with two components."""
    when = (T0 + timedelta(minutes=i)).isoformat()
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"obs-{i}",
        "meta": {"versionId": "1"},
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
                ]
            }
        ],
        "subject": {"reference": f"Patient/{patient}"},
        "encounter": {"reference": f"Encounter/{encounter}"},
        "effectiveDateTime": when,
    }
    if i % 5 == 4:
        base["code"] = {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}
        base["component"] = [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {
                    "value": v,
                    "unit": "mm[Hg]",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            }
            for code, v in (("8480-6", 120.0), ("8462-4", 70.0))
        ]
        return base
    code, unit, value = VITALS[i % 5]
    base["code"] = {"coding": [{"system": "http://loinc.org", "code": code}]}
    base["valueQuantity"] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    return base


def bundle(observations: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle of the observations."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": o, "request": {"method": "POST", "url": "Observation"}}
            for o in observations
        ],
    }


def bench_core(n: int, repeats: int) -> dict[str, float]:
    """Observations per second through the core (bytes in, events out) and through the fhir.resources baseline."""
    payloads = [orjson.dumps(observation(i, encounter=f"enc-{i % 50}")) for i in range(n)]
    bundles = [orjson.dumps(bundle([observation(i + j) for j in range(100)])) for i in range(0, n, 100)]
    best_single = best_bundle = cpu_single = cpu_bundle = 0.0
    events = 0
    for _ in range(repeats):
        mapper = Mapper()
        t, c = time.perf_counter(), time.process_time()
        events = sum(len(mapper.map_bytes(p).events) for p in payloads)
        best_single = max(best_single, n / (time.perf_counter() - t))
        cpu_single = max(cpu_single, n / (time.process_time() - c))
        mapper = Mapper()
        t, c = time.perf_counter(), time.process_time()
        for b in bundles:
            mapper.map_bytes(b)
        best_bundle = max(best_bundle, n / (time.perf_counter() - t))
        cpu_bundle = max(cpu_bundle, n / (time.process_time() - c))
    from fhir.resources.R4B.observation import Observation

    sample = payloads[: max(1000, n // 10)]
    best_base = cpu_base = 0.0
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for p in sample:
            Observation.model_validate_json(p)
        best_base = max(best_base, len(sample) / (time.perf_counter() - t))
        cpu_base = max(cpu_base, len(sample) / (time.process_time() - c))
    return {
        "core_single_obs_per_s_wall": best_single,
        "core_single_obs_per_cpu_s": cpu_single,
        "core_bundle_obs_per_s_wall": best_bundle,
        "core_bundle_obs_per_cpu_s": cpu_bundle,
        "baseline_fhir_resources_obs_per_s_wall": best_base,
        "baseline_fhir_resources_obs_per_cpu_s": cpu_base,
        "ratio_core_vs_baseline_cpu": cpu_single / cpu_base,
        "events_per_observation": events / n,
    }


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _post_all(url: str, bodies: list[bytes], concurrency: int, token: str) -> float:
    import httpx

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            r = await client.post(url, content=body, headers=headers)
            if r.status_code >= 300:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

    headers = {"content-type": "application/fhir+json", "authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=60) as client:
        t = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - t


def bench_http(bootstrap: str, n: int, bundle_size: int, concurrency: int, baseline_n: int) -> dict[str, float]:
    """Observations per second through HTTP to Kafka (acknowledged) with Bundles, and one resource per request."""
    import httpx

    port = _free_port()
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    # Ingest refuses unauthenticated writes; the bench is an EHR sender with a one-off token of its own.
    token = secrets.token_urlsafe(32)
    grant = {"user": "bench-ehr", "scopes": ["system/*.write"]}
    env = {
        **os.environ,
        "INGEST_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "INGEST_TOPIC_PREFIX": prefix,
        "INGEST_HTTP_PORT": str(port),
        "INGEST_PARTITIONS": "3",
        "INGEST_LOG_LEVEL": "WARNING",
        "INGEST_CONSUME_RAW_TOPIC": "false",
        "INGEST_AUTH_TOKENS": orjson.dumps({token: grant}).decode(),
    }
    proc = subprocess.Popen([sys.executable, "-m", "vigil_ingest"], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("ingest did not become ready")
        obs = [observation(i, encounter=f"enc-{i % 50}") for i in range(n)]
        bodies = [orjson.dumps(bundle(obs[i : i + bundle_size])) for i in range(0, n, bundle_size)]
        # warm-up (connections, producer metadata)
        warm = [orjson.dumps(bundle([observation(10**7 + i) for i in range(10)]))]
        asyncio.run(_post_all(f"{base}/fhir", warm, 1, token))
        cpu0 = _cpu_seconds(proc.pid)
        elapsed = asyncio.run(_post_all(f"{base}/fhir", bodies, concurrency, token))
        server_cpu = _cpu_seconds(proc.pid) - cpu0
        singles = []
        for i in range(baseline_n):
            o = deepcopy(obs[i])
            o["id"] = f"single-{i}"
            singles.append(orjson.dumps(o))
        cpu0 = _cpu_seconds(proc.pid)
        elapsed_single = asyncio.run(_post_all(f"{base}/fhir/Observation", singles, concurrency, token))
        server_cpu_single = _cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bundled = n / elapsed
    single = baseline_n / elapsed_single
    return {
        "http_kafka_bundle_obs_per_s_wall": bundled,
        "http_kafka_bundle_obs_per_server_cpu_s": n / server_cpu,
        "http_kafka_single_resource_obs_per_s_wall": single,
        "http_kafka_single_resource_obs_per_server_cpu_s": baseline_n / server_cpu_single,
        "ratio_bundle_vs_single_wall": bundled / single,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers: also bench HTTP to Kafka.")
    parser.add_argument("--bundle", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--baseline-n", type=int, default=2000)
    args = parser.parse_args()
    results = bench_core(args.n, args.repeats)
    if args.bootstrap:
        results.update(bench_http(args.bootstrap, args.n, args.bundle, args.concurrency, args.baseline_n))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for key, value in results.items():
        print(f"{key:48s} {value:12.1f}" if value > 10 else f"{key:48s} {value:12.3f}")


if __name__ == "__main__":
    main()
