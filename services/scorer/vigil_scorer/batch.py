"""One batch of observations: parse, track, predict, publish, park; and the partition state it stands on.

Records that do not parse (or name no encounter) are parked in the dead-letter topic by
``vigil_runtime.kafka.process_batch``; the rest are applied to the encounter states and every touched
encounter-hour is scored in one model call; the scores are published to the live topic (production models only)
and acknowledged. A failed batch is handled like a crash of its partitions: their states are dropped, re-read from
the changelog before the retry, and the partitions rewound to their committed offsets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from vigil_contracts.events import Stage
from vigil_runtime.kafka import Parsed
from vigil_runtime.reader import read_to_end
from vigil_scorer.assignment import Assignment
from vigil_scorer.checkpointer import Checkpointer
from vigil_scorer.metrics import SERVICE, ScorerMetrics
from vigil_scorer.model_manager import ModelManager
from vigil_scorer.settings import Settings
from vigil_scoring.scoring import Incoming, NotProductionError

log = logging.getLogger(__name__)
Failures = list[tuple[ConsumerRecord[Any, Any], BaseException | str]]


class BatchStep:
    """Scores a batch of parsed records with the live model and restores or rewinds the partitions it touches."""

    def __init__(
        self,
        settings: Settings,
        metrics: ScorerMetrics,
        *,
        models: ModelManager,
        checkpointer: Checkpointer,
        assignment: Assignment,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.metrics = metrics
        self.models = models
        self.checkpointer = checkpointer
        self.assignment = assignment

    async def handle(self, items: list[Parsed[Any]]) -> Failures:
        """Score the records of owned partitions; return the records to park, with why."""
        core, live = self.models.core, self.models.live
        if core is None or live is None:
            await asyncio.sleep(1.0)  # failed closed: no confirmed model yet; the batch stays uncommitted
            raise NotProductionError("no production model confirmed by the registry")
        if core.stage is not Stage.PRODUCTION:
            await asyncio.sleep(1.0)  # paused until a production model is announced; the batch stays uncommitted
            raise NotProductionError("the model in use is not in production")
        # Records fetched before a rebalance may belong to partitions now owned by another process: skip them,
        # their new owner scores them from the committed offset.
        mine = [p for p in items if p.record.partition in self.assignment.owned]
        base = self.metrics.base
        base.batch_size.labels(SERVICE).observe(len(items))
        if len(mine) < len(items):
            base.count(self.topics.observations, "not_owned", len(items) - len(mine))
        partitions = {p.record.partition for p in mine}
        needs_restore = self.assignment.needs_restore
        try:
            if needs_restore & partitions:
                await self.restore(needs_restore & partitions)
            t0 = time.perf_counter()
            outcome = core.process(
                Incoming(p.event, p.record.timestamp / 1000.0, p.record.partition, p.record.offset) for p in mine
            )
            t1 = time.perf_counter()
            await live.publish(outcome.scores)
            t2 = time.perf_counter()
            self.checkpointer.changed(outcome.changed)
            stages = base.processing
            stages.labels(SERVICE, "score").observe(t1 - t0)
            stages.labels(SERVICE, "publish_scores").observe(t2 - t1)
        except BaseException:
            # The in-memory states may now be ahead of the changelog: drop them, re-read them before the retry
            # (on_batch also rewinds the partitions to their committed offsets).
            self.metrics.errors.labels("batch").inc()
            core.drop_partitions(partitions)
            self.assignment.needs_restore |= partitions
            self.checkpointer.batch_failed(partitions)
            raise
        failed: Failures = [(mine[i].record, reason) for i, reason in outcome.failures]
        base.count(self.topics.observations, "processed", outcome.applied)
        base.count(self.topics.observations, "duplicate", outcome.duplicates)
        if outcome.scores:
            labels = (SERVICE, core.model_name, core.model_version, core.stage.value)
            base.scores.labels(*labels).inc(len(outcome.scores))
            hist = base.score_latency.labels(*labels)
            for s in outcome.scores:
                hist.observe(s.latency_ms / 1000.0)
        return failed

    async def rewind(self, partitions: set[int]) -> None:
        """After a failed batch: forget the partitions' states and progress, rewind them to the committed offsets."""
        await self.checkpointer.settle()
        if self.models.core is not None:
            self.models.core.drop_partitions(partitions)
        self.assignment.needs_restore |= partitions
        self.checkpointer.forget(partitions)
        consumer = self.assignment.consumer_of()
        if consumer is None:
            return
        for p in partitions:
            tp = TopicPartition(self.topics.observations, p)
            try:
                offset = self.checkpointer.committed.get(p)
                if offset is None:
                    offset = await consumer.committed(tp)
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
            except Exception as error:  # a partition revoked meanwhile: its new owner starts from the commit
                log.info("rewind skipped", extra={"partition": p, "error_type": type(error).__name__})

    async def restore(self, partitions: Iterable[int]) -> None:
        """Read the partitions' encounter states back from the changelog (before any of their records is scored)."""
        parts = set(partitions)
        # Snapshots go to the changelog partition numbered like the observations partition their events come
        # from, so the owner of observations partition p restores by reading changelog partition p to its end.
        values = await read_to_end(
            self.settings.kafka,
            self.topics.scorer_state,
            parts,
            timeout_s=self.settings.restore_timeout_s,
        )
        core = self.models.core
        if core is None:
            raise RuntimeError("states restored before the model was loaded")
        core.drop_partitions(parts)
        restored = 0
        for encounter, value in values.items():
            try:
                core.restore(encounter, value)
            except (ValueError, KeyError, TypeError):
                self.metrics.errors.labels("restore").inc()
                log.exception("unreadable changelog snapshot ignored")
                continue
            restored += value is not None
        self.assignment.needs_restore -= parts
        await self._mark_replay(parts)
        self.metrics.restored.inc(restored)
        log.info("states restored", extra={"count": restored, "processed": len(parts)})

    async def _mark_replay(self, partitions: set[int]) -> None:
        """Mark records before the partitions' current log end as a replay (the previous owner may have scored them).

        A score of them under another model version than the snapshot's is marked as a re-score (``rescore``).
        """
        consumer = self.assignment.consumer_of()
        core = self.models.core
        if consumer is None or core is None or not partitions:
            return
        tps = [TopicPartition(self.topics.observations, p) for p in partitions]
        try:
            ends = await consumer.end_offsets(tps)
        except Exception as error:  # without it, replayed scores are still correct, only not marked
            log.warning("log end offsets unavailable", extra={"error_type": type(error).__name__})
            return
        for tp, end in ends.items():
            core.replay_until[tp.partition] = int(end)
