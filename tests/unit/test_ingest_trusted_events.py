"""Readings built without a second validation (``vigil_ingest.mapping.recorded``) are the events validation builds.

The mapper sets a reading's state directly (pydantic's validation of fields it made itself was ~16% of a reading's
time); the contract still holds if, for every event it makes, ``model_validate`` of the same fields gives an equal
event with the same field types and the same bytes on the wire. Checked over the kit's FHIR corpus, the fuzz
cases of test_ingest_fuzz.py, the generated bundles of test_ingest_properties.py and the benchmark's resources.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from vigil_contracts.events import ObservationRecorded, SourceRef, canonical_event_adapter
from vigil_ingest.mapping import Mapper, MapResult, TimeRules, recorded, source_ref
from vigil_runtime.kafka import encode

from .test_ingest_fuzz import mutate
from .test_ingest_properties import NOW, bundle

pytestmark = pytest.mark.unit
SHIFTED_NOW = datetime(2300, 1, 1, tzinfo=UTC)  # MIMIC's shifted dates must not be refused as future readings


def as_validated(event: ObservationRecorded) -> None:
    """The event equals ``model_validate`` of its own fields: values, types, wire bytes."""
    source = event.source
    source_fields = {name: getattr(source, name) for name in SourceRef.model_fields}
    assert SourceRef.model_validate(source_fields) == source
    fields: dict[str, Any] = {name: getattr(event, name) for name in ObservationRecorded.model_fields}
    fields["source"] = source_fields
    validated = ObservationRecorded.model_validate(fields)
    assert validated == event
    for name in ObservationRecorded.model_fields:
        assert type(getattr(validated, name)) is type(getattr(event, name)), name
    assert type(validated.source.version_id) is type(source.version_id)
    assert type(validated.source.system) is type(source.system)
    wire = encode(event)
    assert wire == encode(validated)
    assert canonical_event_adapter.validate_json(wire) == event
    assert hash(event) == hash(validated)


def check(result: MapResult) -> int:
    readings = [e for e in result.events if isinstance(e, ObservationRecorded)]
    for event in readings:
        as_validated(event)
    return len(readings)


def test_the_builders_give_what_validation_gives() -> None:
    at = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    ref = source_ref("Observation", "o-1", None, "Bundle/b")
    event = recorded("id-1", at, None, "p", "heart_rate", 88.0, "/min", at, "final", "<", ref, 190.4, "[degF]")
    as_validated(event)
    assert event.key == "unlinked" and event.type == "observation.recorded" and event.schema_version == 1
    assert event.model_fields_set == ObservationRecorded(**{**event.__dict__}).model_fields_set - {
        "schema_version",
        "type",
    }
    with pytest.raises(Exception, match="frozen"):
        event.value = 1.0  # type: ignore[misc]


def test_the_kit_corpus_and_its_fuzz_cases(shared_kit: Path) -> None:
    fhir = shared_kit / "fhir"
    documents: list[Any] = []
    for path in sorted(fhir.glob("**/*.json")):
        if path.stat().st_size < 200_000:  # the large Synthea bundles repeat the same shapes, at seconds each
            try:
                documents.append(json.loads(path.read_text()))
            except ValueError:
                continue
    for name in ("MimicObservationVitalSignsED", "MimicObservationED"):
        source = fhir / f"mimic-demo/mimic-iv-fhir-demo-2.1.0/fhir/{name}.ndjson.gz"
        if source.exists():
            with gzip.open(source) as f:
                documents.extend(json.loads(line) for _, line in zip(range(200), f, strict=False))
    mapper = Mapper(time_rules=TimeRules(clock=lambda: SHIFTED_NOW))
    plain = sum(check(mapper.map_payload(copy.deepcopy(doc))) for doc in documents)
    rng = random.Random(20261130)
    fuzzed = 0
    small = [doc for doc in documents if len(json.dumps(doc)) < 50_000]
    for _ in range(1000):
        doc = copy.deepcopy(rng.choice(small))
        mutate(doc, rng)
        fuzzed += check(mapper.map_payload(doc))
    assert plain > 200 and fuzzed > 100, (plain, fuzzed)


def test_the_repository_bundles_and_the_benchmark_resources() -> None:
    from bench.bench_ingest import bundle as bench_bundle
    from bench.bench_ingest import observation

    mapper = Mapper()
    testdata = Path(__file__).resolve().parents[1] / "testdata/fhir"
    n = sum(check(mapper.map_bytes(p.read_bytes())) for p in sorted(testdata.glob("**/*.json")))
    n += check(mapper.map_bytes(orjson.dumps(bench_bundle([observation(i) for i in range(50)]))))
    assert n > 50


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bundle())
def test_generated_bundles(payload: dict[str, Any]) -> None:
    check(Mapper(time_rules=TimeRules(clock=lambda: NOW)).map_bytes(orjson.dumps(payload)))
