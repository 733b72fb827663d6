"""`vigil ingest map` and `POST /fhir` give the same events and the same refusals on every file of ../shared/fhir.

Each file is mapped by the dry run (``map_files``) and posted to the FHIR REST endpoints (a Bundle to the base, a
resource to its type, each NDJSON line or array element as its own request), each side with a fresh mapper. The
large MIMIC NDJSON files are cut to their first ``NDJSON_LINES`` lines on both sides (one request a line would
take minutes of the unit tier's time); every other file is compared whole.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.testclient import TestClient

from vigil_contracts.events import Event
from vigil_ingest.api import mount_fhir
from vigil_ingest.api.routes.fhir import RESOURCE_TYPES
from vigil_ingest.cli import map_files, read_payloads
from vigil_ingest.core import IngestCore
from vigil_ingest.settings import Settings
from vigil_runtime.metrics import ServiceMetrics

FHIR = {"content-type": "application/fhir+json"}
NDJSON_LINES = 400


class Recorder:
    def __init__(self) -> None:
        self.published: list[Event] = []

    async def publish_all(self, topic: str, events: Sequence[Event]) -> None:
        self.published.extend(events)


def dry_run(path: Path) -> tuple[list[str], list[str]]:
    out = io.StringIO()
    map_files([path], out)
    events, refusals = [], []
    for line in out.getvalue().splitlines():
        item = orjson.loads(line)
        if "event_id" in item:
            events.append(item["event_id"])
        else:
            source = item["source"]
            where = f"{source['resource_type']}/{source['resource_id']}: " if source["resource_id"] else ""
            refusals.append(f"{where}{item['rejected']}")
    return events, refusals


def errors_of(outcome: dict[str, Any]) -> list[str]:
    return [i["diagnostics"] for i in outcome.get("issue", []) if i.get("severity") in ("error", "warning")]


def over_http(path: Path) -> tuple[list[str], list[str], int]:
    settings = Settings(topic_prefix="parity.", max_body_bytes=64 * 1024 * 1024)
    recorder = Recorder()
    app = FastAPI()
    mount_fhir(app, IngestCore(settings, recorder, ServiceMetrics("ingest")), settings)  # type: ignore[arg-type]
    client = TestClient(app)
    refusals: list[str] = []
    unrouted = 0
    for payload in read_payloads(path):
        try:
            parsed = orjson.loads(payload)
            rtype = parsed.get("resourceType") if isinstance(parsed, dict) else None
        except orjson.JSONDecodeError:
            rtype = None
        if rtype is not None and rtype != "Bundle" and rtype not in RESOURCE_TYPES:
            unrouted += 1  # no endpoint for this type (404); the dry run ignores it: neither publishes anything
            continue
        url = "/fhir" if rtype in (None, "Bundle") else f"/fhir/{rtype}"
        response = client.post(url, content=payload, headers=FHIR)
        body = response.json()
        if body.get("resourceType") == "OperationOutcome":
            refusals += errors_of(body)
        else:
            for entry in body.get("entry", []):
                refusals += errors_of(entry["response"].get("outcome", {}))
    return [e.event_id for e in recorder.published], refusals, unrouted


def kit_files(shared_kit: Path) -> list[Path]:
    return sorted(p for p in (shared_kit / "fhir").rglob("*") if p.suffix in (".json", ".gz"))


def cut(path: Path, tmp_path: Path) -> Path:
    """The file itself, or for a large NDJSON file its first lines (uncompressed, same name without .gz)."""
    if not path.name.endswith((".ndjson.gz", ".ndjson")):
        return path
    lines = b"\n".join(read_payloads(path)[:NDJSON_LINES]) + b"\n"
    short = tmp_path / path.name.removesuffix(".gz")
    short.write_bytes(lines)
    return short


def test_every_kit_file_gives_the_same_events_and_refusals(shared_kit: Path, tmp_path: Path) -> None:
    files = kit_files(shared_kit)
    assert len(files) > 300
    compared = 0
    for original in files:
        path = cut(original, tmp_path)
        events, refusals = dry_run(path)
        http_events, http_refusals, unrouted = over_http(path)
        name = original.relative_to(shared_kit)
        assert http_events == events, name
        assert sorted(http_refusals) == sorted(refusals), name
        compared += 1 if not unrouted else 0
    assert compared > 250
