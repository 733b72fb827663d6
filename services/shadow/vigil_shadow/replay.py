"""Replay for analysts: past observations re-scored by chosen versions, judged against what live recorded.

Time basis. ``--from`` / ``--to`` are **observation times** by default (``observed_at``: when the value was
measured, the time features, scores' ``data_time`` and outcome onsets are expressed in), so a replay of a range
judges the same encounter-hours as the live comparison over that range. Observation times are filtered after
reading the topic from its beginning: Kafka's time index only knows record timestamps (arrival times), and data
whose observation times are far from the present (MIMIC's shifted dates, years in the future) may be refused by
a broker as record timestamps or land far from their arrival. ``--time-basis arrival`` instead seeks with
``offsets_for_times`` on the record timestamps (broker arrival), which reads only the range and its warm-up; then
encounter records and demographics that arrived before the warm-up are not seen (their hours cannot be scored).

Warm-up. Features at an hour depend on the encounter's earlier data (staleness, cumulative counts, windows), so
events from ``warmup_hours`` before the range are applied without scoring. Encounter records and the age/sex
readings (admission facts, sent once) are always applied whatever their time (and scored like any reading when
their time is in the range: an admission hour may hold nothing else). Scores equal live's exactly when the
warm-up covers the stays since ICU admission (the default, 14 days, covers PhysioNet stays).

Isolation. Nothing joins a consumer group or commits an offset (``group_id=None``, manual assignment), and replay
publishes nothing: it writes files. Candidate scores are stamped shadow-stage and stay in memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from vigil_contracts.events import (
    EncounterRecorded,
    ObservationRecorded,
    ObservationRetracted,
    OutcomeRecorded,
    RiskScored,
    Stage,
    any_event_adapter,
    canonical_event_adapter,
)
from vigil_contracts.topics import Topics
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.reader import Record
from vigil_scoring.scoring import Incoming
from vigil_shadow import logscan
from vigil_shadow.catalog import ModelKey, RegistryReader, ShadowModel, load_local, parse_model_spec
from vigil_shadow.compare import CompareConfig, Comparison, compare_all
from vigil_shadow.engine import ShadowCore
from vigil_shadow.join import JoinState
from vigil_shadow.report import render_html

log = logging.getLogger(__name__)

DEMOGRAPHICS = frozenset({"age", "sex"})
CHUNK = 5000
"""Records read, applied and scored at a time."""


@dataclass
class ReplayRequest:
    """What to replay and where."""

    start: datetime
    end: datetime
    models: list[str]
    """``NAME:VERSION`` (from the registry) or ``NAME:VERSION=PATH`` (a local package folder)."""
    kafka: KafkaConnection
    """The broker and the principal replay reads as (``analyst`` on a secured stack: it reads, writes nothing)."""
    topic_prefix: str = "vigil."
    warmup_hours: float = 336.0
    time_basis: Literal["observation", "arrival"] = "observation"
    registry_url: str | None = None
    registry_token: str | None = None
    cache_dir: Path = Path(".vigil/replay/models")
    config: CompareConfig = field(default_factory=CompareConfig)


@dataclass
class ReplayResult:
    """The comparisons and what was read."""

    comparisons: list[Comparison]
    counts: dict[str, int]

    def to_json(self, request: ReplayRequest) -> dict[str, Any]:
        """The JSON document replay writes (summaries and plot data)."""
        return {
            "replay": context(request),
            "counts": self.counts,
            "comparisons": [{**c.summary(), "plots": c.plots} for c in self.comparisons],
        }


def context(request: ReplayRequest) -> dict[str, Any]:
    """Run parameters, for the reports."""
    return {
        "from": request.start.isoformat(),
        "to": request.end.isoformat(),
        "models": request.models,
        "topic_prefix": request.topic_prefix,
        "warmup_hours": request.warmup_hours,
        "time_basis": request.time_basis,
        "horizon_hours": request.config.horizon_hours,
        "bootstrap_iterations": request.config.bootstrap_iterations,
    }


async def load_models(request: ReplayRequest) -> dict[ModelKey, ShadowModel]:
    """The chosen versions: local folders, or packages fetched (and verified) from the registry."""
    models: dict[ModelKey, ShadowModel] = {}
    reader: RegistryReader | None = None
    try:
        for spec in request.models:
            name, version, path = parse_model_spec(spec)
            if path is not None:
                model = load_local(spec)
            else:
                if not request.registry_url:
                    raise ValueError(f"{spec}: give NAME:VERSION=PATH or a registry URL")
                reader = reader or RegistryReader(
                    request.registry_url, token=request.registry_token, timeout=30.0, cache_dir=request.cache_dir
                )
                record = await reader.version(name, version)
                if record is None:
                    raise ValueError(f"{name}:{version} is not in the registry")
                model = ShadowModel(name, version, await reader.load(record), Stage.SHADOW, "registry")
            models[model.key] = model
    finally:
        if reader is not None:
            await reader.aclose()
    return models


async def _arrival_range(request: ReplayRequest, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition, the offsets whose broker timestamps fall in [start - warm-up, end) (offsets_for_times)."""
    warm_from = request.start - timedelta(hours=request.warmup_hours)
    first = await logscan.offsets_for_times(request.kafka, topic, warm_from)
    after = await logscan.offsets_for_times(request.kafka, topic, request.end)
    ends = await logscan.end_offsets(request.kafka, [topic])
    begin = {p: o for p, o in first.items() if o is not None}
    stop = {p: after.get(p) or ends.get((topic, p), 0) for p in begin}
    return begin, stop


class _RangeSplitter:
    """Sorts the observations read, in log order, into warm-up (applied, not scored) and range (scored)."""

    def __init__(self, request: ReplayRequest, join: JoinState, counts: dict[str, int]) -> None:
        self.request = request
        self.join = join
        self.counts = counts
        self.warm_from = request.start - timedelta(hours=request.warmup_hours)
        self.start_ms = request.start.timestamp() * 1000
        self.end_ms = request.end.timestamp() * 1000
        self.in_range = False
        """Whether an event of the range has been read yet (a retraction before it is warm-up)."""

    def split(self, records: list[Record]) -> tuple[list[Incoming], list[Incoming]]:
        """The chunk's events to apply as warm-up and those to score, each in log order."""
        request = self.request
        warm: list[Incoming] = []
        scored: list[Incoming] = []
        for record in records:
            self.counts["observations_read"] += 1
            try:
                event = canonical_event_adapter.validate_json(record.value or b"")
            except ValueError:
                self.counts["unreadable"] += 1
                continue
            self.join.add_canonical(event)
            item = Incoming(event, partition=record.partition, offset=record.offset)
            admission_fact = isinstance(event, EncounterRecorded) or (
                isinstance(event, ObservationRecorded) and event.feature in DEMOGRAPHICS
            )
            if request.time_basis == "arrival":
                if record.timestamp_ms < self.start_ms:
                    warm.append(item)
                elif record.timestamp_ms < self.end_ms:
                    scored.append(item)
                continue
            at = event.observed_at if isinstance(event, ObservationRecorded) else None
            if admission_fact and (at is None or not request.start <= at < request.end):
                # Admission facts are sent once: applied whatever their time (scored with the range when in it).
                warm.append(item)
                continue
            if isinstance(event, ObservationRetracted):
                # A retraction applies at its arrival in the stream: warm when it precedes the range's events.
                (scored if self.in_range else warm).append(item)
                continue
            if at is None or at < self.warm_from or at >= request.end:
                continue
            if at < request.start:
                warm.append(item)
            else:
                scored.append(item)
                self.in_range = True
        return warm, scored


async def _read_recorded(request: ReplayRequest, topics: Topics, join: JoinState) -> None:
    """Join the recorded live scores and outcomes of the whole log."""
    async for chunk in logscan.read_until(request.kafka, topics.scores_live):
        for record in chunk:
            try:
                event = any_event_adapter.validate_json(record.value or b"")
            except ValueError:
                continue
            if isinstance(event, RiskScored) and event.stage is Stage.PRODUCTION:
                join.add_score(event)
    async for chunk in logscan.read_until(request.kafka, topics.outcomes):
        for record in chunk:
            try:
                event = any_event_adapter.validate_json(record.value or b"")
            except ValueError:
                continue
            if isinstance(event, OutcomeRecorded):
                join.add_outcome(event)


async def run_replay(request: ReplayRequest) -> ReplayResult:
    """Re-score the range with the chosen versions and compare each with the recorded live scores."""
    if request.end <= request.start:
        raise ValueError("--to must be after --from")
    topics = Topics(request.topic_prefix)
    models = await load_models(request)
    core = ShadowCore({k: m.package for k, m in models.items()})
    join = JoinState()
    counts = {"observations_read": 0, "warmup_events": 0, "scored_events": 0, "unreadable": 0, "scores": 0}
    splitter = _RangeSplitter(request, join, counts)
    begin: dict[int, int] | None = None
    stop: dict[int, int] | None = None
    if request.time_basis == "arrival":
        begin, stop = await _arrival_range(request, topics.observations)
        if not begin:
            stop = {}  # nothing arrived in the range
    # One chunk at a time, applied and scored before the next is read: memory holds the encounters' states, the
    # range's scores and one chunk, not the range's records.
    async for chunk in logscan.read_until(request.kafka, topics.observations, stop, start=begin, chunk=CHUNK):
        warm, scored = splitter.split(chunk)
        counts["warmup_events"] += len(warm)
        counts["scored_events"] += len(scored)
        core.warm(warm)
        for score in core.process(scored).scores:
            join.add_score(score)
            counts["scores"] += 1

    await _read_recorded(request, topics, join)
    window = (request.start, request.end) if request.time_basis == "observation" else (None, None)
    comparisons = compare_all(
        join,
        config=request.config,
        window_start=window[0],
        window_end=window[1],
        with_plots=True,
        candidates=sorted(models),
    )
    return ReplayResult(comparisons=comparisons, counts=counts)


def write_outputs(
    result: ReplayResult, request: ReplayRequest, *, html_path: Path | None, json_path: Path | None
) -> None:
    """Write the HTML report and/or the JSON document."""
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_json(request), indent=1, default=str) + "\n")
    if html_path is not None:
        title = f"Vigil replay {request.start.isoformat()} to {request.end.isoformat()}"
        html_path.write_text(
            render_html(result.comparisons, title=title, context={**context(request), **result.counts})
        )
