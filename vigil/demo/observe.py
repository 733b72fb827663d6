"""What the demo sees on the stack's topics: every record read from the beginning, deduplicated by event id."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from vigil_contracts import events as ev
from vigil_contracts.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class Observed:
    """Everything the demo saw on the topics, deduplicated by event id."""

    ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    icu_start: dict[str, datetime] = field(default_factory=dict)
    obs_hours: set[tuple[str, int]] = field(default_factory=set)
    observations: int = 0
    retractions: int = 0
    live: dict[tuple[str, int], ev.RiskScored] = field(default_factory=dict)
    live_by_version: Counter[str] = field(default_factory=Counter)
    default_model_scores: int = 0
    shadow: dict[tuple[str, str, int], ev.RiskScored] = field(default_factory=dict)
    shadow_by_version: Counter[str] = field(default_factory=Counter)
    alerts: list[ev.AlertRaised] = field(default_factory=list)
    dead_letters: Counter[str] = field(default_factory=Counter)
    lifecycle: list[ev.ModelLifecycleChanged] = field(default_factory=list)
    comparisons: list[ev.ComparisonSummarized] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    pending_obs: list[ev.ObservationRecorded] = field(default_factory=list)

    def first(self, kind: str, event_id: str) -> bool:
        """True the first time an event id is seen on a topic (at-least-once delivery repeats some)."""
        seen = self.ids[kind]
        if event_id in seen:
            return False
        seen.add(event_id)
        return True

    def hour_of(self, encounter: str, at: datetime) -> int | None:
        start = self.icu_start.get(encounter)
        return None if start is None else math.floor((at - start).total_seconds() / 3600)

    def take(self, topic_kind: str, value: bytes) -> ev.Event | None:
        event = ev.any_event_adapter.validate_json(value)
        if not self.first(topic_kind, event.event_id):
            return None
        if isinstance(event, ev.EncounterRecorded) and event.icu_admitted_at is not None:
            self.icu_start.setdefault(event.encounter, event.icu_admitted_at)
            pending, self.pending_obs = self.pending_obs, []
            for o in pending:
                self._obs(o)
        elif isinstance(event, ev.ObservationRecorded):
            self._obs(event)
        elif isinstance(event, ev.ObservationRetracted):
            self.retractions += 1
        elif isinstance(event, ev.RiskScored):
            if topic_kind == "live":
                self.live_by_version[event.model_version] += 1
                self.default_model_scores += int(event.default_model)
                k = (event.encounter, event.hour)
                if k not in self.live or event.observations >= self.live[k].observations:
                    self.live[k] = event
            else:
                self.shadow_by_version[event.model_version] += 1
                ks = (event.model_version, event.encounter, event.hour)
                if ks not in self.shadow or event.observations >= self.shadow[ks].observations:
                    self.shadow[ks] = event
        elif isinstance(event, ev.AlertRaised):
            self.alerts.append(event)
        elif isinstance(event, ev.DeadLettered):
            self.dead_letters[f"{event.service}: {event.error_type}"] += 1
        elif isinstance(event, ev.ModelLifecycleChanged):
            self.lifecycle.append(event)
        elif isinstance(event, ev.ComparisonSummarized):
            self.comparisons.append(event)
        elif isinstance(event, ev.OutcomeRecorded):
            self.outcomes[event.outcome] += 1
        return event

    def _obs(self, o: ev.ObservationRecorded) -> None:
        if o.encounter is None:
            return
        if o.feature in ("age", "sex"):
            return  # demographics arrive with the encounter; the hours that count are the measured ones
        hour = self.hour_of(o.encounter, o.observed_at)
        if hour is None:
            self.pending_obs.append(o)
            return
        self.observations += 1
        self.obs_hours.add((o.encounter, hour))

    def unscored_hours(self) -> set[tuple[str, int]]:
        """Stay-hours with a canonical observation and no live score (must be empty at the end)."""
        return self.obs_hours - set(self.live)

    def unscored_shadow(self, version: str) -> set[tuple[str, int]]:
        return {k for k in self.obs_hours if (version, *k) not in self.shadow}


class TopicWatcher:
    """Reads every topic of the stack from the beginning (no consumer group, nothing committed)."""

    KINDS: ClassVar[dict[str, str]] = {
        "observations": "observations",
        "scores_live": "live",
        "scores_shadow": "shadow",
        "alerts": "alerts",
        "dead_letter": "dlq",
        "lifecycle": "lifecycle",
        "comparisons": "comparisons",
        "outcomes": "outcomes",
    }

    def __init__(self, kafka: dict[str, Any], topics: Topics, on_event: Any = None) -> None:
        self.kafka = kafka
        self.topics = topics
        self.observed = Observed()
        self.on_event = on_event
        self.counts: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.last_activity = time.monotonic()

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self.names = {getattr(self.topics, attr): kind for attr, kind in self.KINDS.items()}
        self.consumer = AIOKafkaConsumer(
            *self.names,
            **self.kafka,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_poll_records=5000,
            metadata_max_age_ms=2000,
        )
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, records in batches.items():
                kind = self.names[tp.topic]
                for r in records:
                    self.counts[kind] += 1
                    self.last_activity = time.monotonic()
                    try:
                        event = self.observed.take(kind, r.value)
                    except ValueError:
                        continue  # the watcher only reads; malformed records are the services' to park
                    if event is not None and self.on_event:
                        self.on_event(kind, event)

    def raise_if_failed(self) -> None:
        """Raise if the reader died (the demo's waits would otherwise wait for records that never come)."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            if error is not None:
                raise RuntimeError(f"the demo's topic reader failed: {type(error).__name__}: {error}") from error

    def quiet_for(self) -> float:
        """Seconds since the last record on any topic."""
        return time.monotonic() - self.last_activity

    async def stop(self) -> None:
        self._stop.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except Exception as error:  # stopping anyway: what the reader saw is kept, its last error is noted
                log.debug("observer stopped with an error", extra={"error_type": type(error).__name__})
        await self.consumer.stop()
