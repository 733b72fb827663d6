"""Mutated real resources never crash the mapper, and every problem is named (no catch-all rejections)."""

from __future__ import annotations

import copy
import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest

from vigil_ingest.mapping import Mapper

JUNK: list[Any] = [None, True, 0, -1, 1e308, "x", "", [], {}, [1], {"a": 1}, "2020-13-45", "Patient/", "#", "<0", [{}]]


def mutate(node: Any, rng: random.Random) -> None:
    if isinstance(node, dict):
        for key in list(node):
            r = rng.random()
            if r < 0.06:
                node[key] = rng.choice(JUNK)
            elif r < 0.09:
                del node[key]
            else:
                mutate(node[key], rng)
    elif isinstance(node, list):
        for i in range(len(node)):
            if rng.random() < 0.06:
                node[i] = rng.choice(JUNK)
            else:
                mutate(node[i], rng)


@pytest.fixture(scope="module")
def documents(shared_kit: Path) -> list[Any]:
    fhir = shared_kit / "fhir"
    docs: list[Any] = []
    for path in sorted(fhir.glob("hl7-examples/**/*.json")):
        if path.stat().st_size < 50_000:
            try:
                docs.append(json.loads(path.read_text()))
            except ValueError:
                continue
    with gzip.open(fhir / "mimic-demo/mimic-iv-fhir-demo-2.1.0/fhir/MimicObservationVitalSignsED.ndjson.gz") as f:
        docs.extend(json.loads(line) for _, line in zip(range(100), f, strict=False))
    return docs


def test_mutated_resources_never_crash(documents: list[Any]) -> None:
    rng = random.Random(20261127)
    mapper = Mapper()
    unexpected = 0
    for _ in range(1500):
        doc = copy.deepcopy(rng.choice(documents))
        mutate(doc, rng)
        result = mapper.map_payload(doc)
        unexpected += sum(1 for r in result.rejections if r.reason.startswith("unexpected structure"))
    assert unexpected == 0


def test_an_unexpected_error_rejects_one_entry_not_the_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Mapper._encounter

    def broken(self: Mapper, *args: Any) -> Any:
        raise TypeError("boom")

    monkeypatch.setattr(Mapper, "_encounter", broken)
    mapper = Mapper()  # after the patch: the mapper binds its per-type mappers when built
    bundle = json.loads((Path(__file__).resolve().parents[1] / "testdata/fhir/icu-bundle.json").read_text())
    result = mapper.map_payload(bundle)
    assert [r.reason for r in result.rejections] == ["unexpected structure (TypeError)"]
    assert any(e.type == "observation.recorded" for e in result.events)
    monkeypatch.setattr(Mapper, "_encounter", original)
