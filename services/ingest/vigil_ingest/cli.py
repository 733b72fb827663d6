"""Command line of ingest (mounted under ``vigil`` as ``vigil ingest``)."""

from __future__ import annotations

import gzip
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import typer

from vigil_ingest.mapping import Mapper, TimeRules, event_line, parse_fhir_datetime, strip_bom
from vigil_ingest.publishing import Deduper

app = typer.Typer(help="ingest commands.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """Ingest: FHIR R4 in, canonical observations out."""


_LINK_ORDER = {"Location": 0, "Patient": 1, "Encounter": 2}


def read_payloads(path: Path) -> list[bytes]:
    """The payloads of a file: JSON (one resource or Bundle) or NDJSON, either optionally gzip-compressed."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    data = strip_bom(data)
    if data.lstrip().startswith(b"["):
        # A JSON array of resources (some exports): each element is a payload.
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError:
            return [data]
        if isinstance(items, list) and all(isinstance(item, dict) for item in items):
            return [orjson.dumps(item) for item in items]
        return [data]
    name = path.name.lower().removesuffix(".gz")
    lines = [line for line in data.splitlines() if line.strip()]
    if name.endswith((".ndjson", ".jsonl")):
        return lines
    if len(lines) > 1 and all(line.lstrip().startswith(b"{") and line.rstrip().endswith(b"}") for line in lines):
        # Several complete objects, one a line, in a file named .json: NDJSON after all (only if each line parses).
        try:
            for line in lines[:2]:
                orjson.loads(line)
            return lines
        except orjson.JSONDecodeError:
            pass
    return [data]


def _first_type(payloads: list[bytes]) -> int:
    if not payloads:
        return 9
    try:
        first = orjson.loads(payloads[0])
    except orjson.JSONDecodeError:
        return 9
    return _LINK_ORDER.get(str(first.get("resourceType")), 5) if isinstance(first, dict) else 9


def schema_problems(payload: bytes) -> list[tuple[str | None, str | None, str]]:
    """FHIR R4B schema problems per resource (fhir.resources), entry by entry: (type, id, problem), no values.

    Advisory only: the mapping reads what it needs and names its own problems; this shows integrators where a
    payload departs from the specification (slow: about 3,000 resources/s).
    """
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []  # the mapping already rejects it with the parser's reason
    if not isinstance(data, dict):
        return []
    resources = [data]
    if data.get("resourceType") == "Bundle" and isinstance(data.get("entry"), list):
        resources = [
            e["resource"] for e in data["entry"] if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
    problems: list[tuple[str | None, str | None, str]] = []
    for resource in resources:
        raw_type, raw_id = resource.get("resourceType"), resource.get("id")
        rtype = raw_type if isinstance(raw_type, str) else None
        rid = str(raw_id) if isinstance(raw_id, str | int) else None
        try:
            model = get_fhir_model_class(rtype or "")
        except (KeyError, ValueError):
            problems.append((rtype, rid, "unknown or missing resourceType"))
            continue
        try:
            model.model_validate(resource)
        except ValidationError as error:
            for e in error.errors(include_input=False, include_url=False)[:5]:
                where = ".".join(str(p) for p in e["loc"])
                problems.append((rtype, rid, f"{where}: {e['msg']}" if where else e["msg"]))
        except Exception as error:  # fhir.resources raises a few non-pydantic errors on odd input
            problems.append((rtype, rid, type(error).__name__))
    return problems


def map_files(
    paths: list[Path],
    out: Any,
    *,
    dedupe: bool = True,
    validate: bool = False,
    clock: datetime | None = None,
) -> Counter[str]:
    """Map files and write one JSON line per canonical event or rejection to ``out``; returns the counts.

    Files whose resources give linkage (Location, Patient, Encounter) are mapped first, whatever the order
    given, so observations find their encounters and age and sex are published.
    """
    mapper = Mapper(time_rules=TimeRules(clock=lambda: clock) if clock is not None else None)
    deduper = Deduper() if dedupe else None
    counts: Counter[str] = Counter()
    loaded = [(path, read_payloads(path)) for path in paths]
    loaded.sort(key=lambda item: _first_type(item[1]))
    for path, payloads in loaded:
        counts["files"] += 1
        for line_no, payload in enumerate(payloads, start=1):
            result = mapper.map_bytes(payload)
            mapper.remember(result)  # "published" (printed): a later file correcting it is a correction
            counts.update(result.counts)
            events = result.events
            if deduper is not None:
                events, dupes = deduper.fresh(events)
                deduper.remember(events)
                counts["duplicates"] += dupes
            for event in events:
                out.write(orjson.dumps(event_line(event)).decode() + "\n")
            counts["events"] += len(events)
            for rejection in result.rejections:
                line = rejection.as_json()
                line["source"]["file"] = str(path)
                if len(payloads) > 1:
                    line["source"]["line"] = line_no
                out.write(orjson.dumps(line).decode() + "\n")
            counts["rejections"] += len(result.rejections)
            if validate:
                for rtype, rid, problem in schema_problems(payload):
                    source: dict[str, Any] = {"resource_type": rtype, "resource_id": rid, "file": str(path)}
                    if len(payloads) > 1:
                        source["line"] = line_no
                    out.write(orjson.dumps({"invalid": problem, "source": source}).decode() + "\n")
                    counts["schema_problems"] += 1
    return counts


@app.command("map")
def map_command(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="FHIR JSON, NDJSON or .gz files."),
    no_dedupe: bool = typer.Option(False, "--no-dedupe", help="Print repeated events again."),
    validate: bool = typer.Option(
        False, "--validate", help='Also check each resource against the FHIR R4B schema: {"invalid": ...} lines.'
    ),
    summary: bool = typer.Option(True, help="Print counts to stderr at the end."),
    clock: str | None = typer.Option(
        None,
        "--clock",
        help="Judge 'later than now' readings against this ISO time instead of the current time "
        "(date-shifted data sets, such as MIMIC-IV's 2100s, need it). The service always uses its own clock.",
    ),
) -> None:
    """Dry run: map FHIR files to canonical events without Kafka; one JSON line per event or rejection.

    The rules are the service's: same events, same refusals (a leading UTF-8 byte-order mark is dropped on both).
    """
    when = parse_fhir_datetime(clock)[0] if clock else None
    counts = map_files(list(files), sys.stdout, dedupe=not no_dedupe, validate=validate, clock=when)
    sys.stdout.flush()
    if summary:
        typer.echo(orjson.dumps(dict(sorted(counts.items()))).decode(), err=True)
