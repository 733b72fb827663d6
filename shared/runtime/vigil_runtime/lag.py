"""Consumer lag of every consumer group a service runs, for ``vigil_consumer_lag{service,group,topic}``.

The service frame samples it in the background for every FastStream subscriber with a group (the ones without a
group, ``group_id=None``, read a topic from a chosen offset and have no lag to speak of). The lag of a group on a
topic is the sum, over the partitions this process is assigned, of the broker's high watermark minus the
consumer's position: summed, so that the label set stays bounded whatever the partition count, and per process,
so that ``sum by (group, topic)`` over the instances of a scaled-out service is the group's lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

from vigil_runtime.metrics import ServiceMetrics, topic_label

log = logging.getLogger(__name__)


def grouped_subscribers(broker: Any) -> list[Any]:
    """The broker's subscribers that consume in a consumer group."""
    return [s for s in getattr(broker, "subscribers", []) if getattr(s, "group_id", None)]


def consumers_assigned(broker: Any) -> bool:
    """Whether every grouped subscriber's consumer has joined its group and received an assignment (/ready).

    An empty assignment counts (an instance beyond the partition count is idle, not broken); a consumer still
    joining, or not started, does not. aiokafka exposes no public "joined" flag: its subscription's assignment is
    None until the group's first assignment arrives.
    """
    for subscriber in grouped_subscribers(broker):
        consumer = getattr(subscriber, "consumer", None)
        state = getattr(consumer, "_subscription", None)
        subscription = getattr(state, "subscription", None)
        if subscription is None or subscription.assignment is None:
            return False
    return True


class ConsumerLag:
    """Samples the lag of a broker's grouped subscribers every ``interval_s`` into the service's metrics."""

    def __init__(self, broker: Any, metrics: ServiceMetrics, *, interval_s: float = 5.0) -> None:
        self.broker = broker
        self.metrics = metrics
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def _grouped(self) -> list[tuple[str, Any]]:
        out = []
        for subscriber in grouped_subscribers(self.broker):
            consumer = getattr(subscriber, "consumer", None)
            if consumer is not None:
                out.append((str(subscriber.group_id), consumer))
        return out

    def declare(self) -> None:
        """Start every grouped subscriber's series at 0, so dashboards and alerts see the series from the start."""
        for subscriber in grouped_subscribers(self.broker):
            for topic in getattr(subscriber, "topic_names", None) or []:
                self.metrics.consumer_lag.labels(
                    self.metrics.service, str(subscriber.group_id), topic_label(topic)
                ).set(0)

    async def sample(self) -> dict[tuple[str, str], int]:
        """Measure now: records behind, per (group, topic kind); also set in the gauge."""
        lags: dict[tuple[str, str], int] = defaultdict(int)
        for group, consumer in self._grouped():
            for topic in consumer.subscription() or ():
                lags[(group, topic_label(topic))] += 0  # an instance without partitions reports 0, not nothing
            for tp in consumer.assignment():
                key = (group, topic_label(tp.topic))
                try:
                    highwater = consumer.highwater(tp)
                    position = await asyncio.wait_for(consumer.position(tp), timeout=1.0)
                except Exception as error:  # best effort: a partition being revoked is measured next time
                    log.debug("lag not measured", extra={"partition": tp.partition, "error_type": type(error).__name__})
                    continue
                if highwater is not None and position is not None:
                    lags[key] += max(0, int(highwater) - int(position))
        for (group, topic), lag in lags.items():
            self.metrics.consumer_lag.labels(self.metrics.service, group, topic).set(lag)
        return dict(lags)

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception as error:
                log.warning("consumer lag not sampled", extra={"error_type": type(error).__name__})
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        """Sample in the background until :meth:`stop`."""
        self.declare()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="consumer-lag")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
