"""The 16 MiB case: one legal bundle of 25,000 readings for one encounter, through ingest and the scorer.

Before: the encounter's snapshot grew past the broker's 1 MiB message limit, every checkpoint failed, offsets
stopped, /ready stayed 200, and a restart re-published thousands of scores. Now: every snapshot stays far under
the limit, checkpoints commit, and a scorer restarted from the last checkpoint re-sends exactly the scores (same
ids, same probabilities) the first one sent for the records after it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.support import package_path
from tests.unit.test_scorer_pipeline import FakeConsumer, FakeSink, record
from vigil_contracts import events as ev
from vigil_ingest.mapping import Mapper, TimeRules
from vigil_runtime.metrics import ServiceMetrics
from vigil_scorer.pipeline import LoadedModel, ScorerService
from vigil_scorer.settings import Settings
from vigil_scoring.model_package import ModelPackage

READINGS = 25_000
START = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
BROKER_MAX_MESSAGE = 1_048_576
BATCH = 2_000


def big_bundle() -> bytes:
    """A transaction Bundle: the Patient, the Encounter and one heart-rate Observation a minute, with narrative."""
    entries: list[dict[str, Any]] = [
        {"resource": {"resourceType": "Patient", "id": "big-p", "gender": "female", "birthDate": "1950-01-01"}},
        {
            "resource": {
                "resourceType": "Encounter",
                "id": "big-e",
                "status": "in-progress",
                "subject": {"reference": "Patient/big-p"},
                "period": {"start": START.isoformat()},
            }
        },
    ]
    for i in range(READINGS):
        entries.append(
            {
                "fullUrl": f"urn:uuid:big-{i:06d}",
                "resource": {
                    "resourceType": "Observation",
                    "id": f"big-hr-{i}",
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "vital-signs",
                                }
                            ]
                        }
                    ],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                    "subject": {"reference": "Patient/big-p"},
                    "encounter": {"reference": "Encounter/big-e"},
                    "effectiveDateTime": (START + timedelta(minutes=i)).isoformat(),
                    "valueQuantity": {
                        "value": 60 + (i * 7) % 60,
                        "unit": "beats/minute",
                        "system": "http://unitsofmeasure.org",
                        "code": "/min",
                    },
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def scorer(tmp_path: Path) -> tuple[ScorerService, FakeSink, FakeConsumer]:
    sink = FakeSink()
    service = ScorerService(
        Settings(model_cache_dir=tmp_path, idle_hours=10_000.0),
        ServiceMetrics("scorer"),
        sink=sink,  # type: ignore[arg-type]
        dead_letters=None,  # type: ignore[arg-type]
        registry=None,  # type: ignore[arg-type]
    )
    service.install(LoadedModel(ModelPackage.load(package_path("1")), ev.Stage.PRODUCTION))
    service.owned = {0}
    service.assignment_done.set()
    consumer = FakeConsumer(sink)
    service.consumer_of = lambda: consumer
    return service, sink, consumer


def scores_of(sink: FakeSink, topic: str) -> list[tuple[str, float, int]]:
    out = []
    for t, batch in sink.sent:
        if t == topic:
            for _, value, _ in batch:
                s = ev.RiskScored.model_validate_json(value or b"")
                out.append((s.event_id, s.probability, s.hour))
    return out


def test_a_16_mib_bundle_keeps_checkpoints_committing_and_a_restart_resends_nothing_that_differs(
    tmp_path: Path,
) -> None:
    body = big_bundle()
    assert 12 * 2**20 < len(body) <= 16 * 2**20  # legal: under ingest's 16 MiB body limit
    mapper = Mapper(time_rules=TimeRules(clock=lambda: START + timedelta(days=30)))
    result = mapper.map_bytes(body)
    assert result.rejections == []
    events = result.events
    assert sum(isinstance(e, ev.ObservationRecorded) and e.feature == "heart_rate" for e in events) == READINGS
    records = [record(e, 0, offset) for offset, e in enumerate(events)]
    batches = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]

    first, sink, consumer = scorer(tmp_path / "a")
    crash_after = len(batches) - 3  # the last checkpoint before the crash follows this batch
    last_snapshots: list[tuple[bytes | None, bytes | None, int | None]] = []
    sent_after_checkpoint = 0
    for n, batch in enumerate(batches):
        assert asyncio.run(first._handle(batch)) == []
        first.consumed[0] = batch[-1].record.offset + 1
        if n <= crash_after:
            asyncio.run(first.checkpoint())  # a checkpoint after every batch: each one must be written
            states = [b for t, b in sink.sent if t == first.topics.scorer_state]
            assert states, "a checkpoint wrote no snapshot"
            sizes = [len(v or b"") for _, v, _ in states[-1]]
            assert max(sizes) < BROKER_MAX_MESSAGE // 4, sizes
            assert consumer.commits == {0: batch[-1].record.offset + 1}  # the offsets keep advancing
            last_snapshots = states[-1]
            sent_after_checkpoint = len(scores_of(sink, first.topics.scores_live))
    assert first.checkpoints_ok()
    first_scores = scores_of(sink, first.topics.scores_live)
    resent_expected = first_scores[sent_after_checkpoint:]
    assert resent_expected, "the crash must leave scored, uncommitted records to replay"

    # Restart: a new process restores the last checkpoint's snapshot and replays from the committed offset.
    second, sink2, _ = scorer(tmp_path / "b")
    assert second.core is not None
    for key, value, _ in last_snapshots:
        second.core.restore((key or b"").decode(), value)
    committed = consumer.commits[0]
    replay = [r for r in records if r.record.offset >= committed]
    for i in range(0, len(replay), BATCH):
        assert asyncio.run(second._handle(replay[i : i + BATCH])) == []
    resent = scores_of(sink2, second.topics.scores_live)
    assert resent == resent_expected  # same ids, same probabilities, same hours: nothing that differs


def test_a_replay_under_another_model_version_is_marked_as_a_rescore(tmp_path: Path) -> None:
    """After a restart with another model, re-sent stay-hours carry the new version and say they replace a score."""
    from tests import factories

    events = [factories.encounter()] + [
        factories.observation(
            observed_at=factories.T0 + timedelta(hours=h), source=factories.source(resource_id=f"o{h}")
        )
        for h in range(6)
    ]
    records = [record(e, 0, i) for i, e in enumerate(events)]
    first, sink, _ = scorer(tmp_path / "a")
    asyncio.run(first._handle(records[:3]))
    first.consumed[0] = 3
    asyncio.run(first.checkpoint())
    asyncio.run(first._handle(records[3:]))  # scored, then a crash before the next checkpoint
    (snapshot,) = [b for t, b in sink.sent if t == first.topics.scorer_state][-1]

    second, sink2, _ = scorer(tmp_path / "b")
    second.install(LoadedModel(ModelPackage.load(package_path("2")), ev.Stage.PRODUCTION))  # the model changed
    assert second.core is not None
    second.core.restore("enc-1", snapshot[1])
    second.core.replay_until[0] = len(records)  # what _mark_replay reads from the log end on restore
    asyncio.run(second._handle(records[3:]))
    later = record(
        factories.observation(
            observed_at=factories.T0 + timedelta(hours=7), source=factories.source(resource_id="new")
        ),
        0,
        len(records),
    )
    asyncio.run(second._handle([later]))
    sent = [
        ev.RiskScored.model_validate_json(v or b"")
        for t, batch in sink2.sent
        if t == second.topics.scores_live
        for _, v, _ in batch
    ]
    assert [s.model_version for s in sent] == ["2"] * len(sent)
    assert [s.rescore for s in sent] == [True] * (len(sent) - 1) + [False]  # the new record is no replay
    first_ids = {s[0] for s in scores_of(sink, first.topics.scores_live)}
    assert not first_ids & {s.event_id for s in sent}  # never one id for two probabilities
