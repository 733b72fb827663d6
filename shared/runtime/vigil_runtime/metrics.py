"""One metrics convention for every service.

- ``vigil_messages_total{service,topic,outcome}``: records consumed, by outcome (processed, parked, duplicate,
  ignored).
- ``vigil_processing_seconds{service,stage}``: time spent per batch or request.
- ``vigil_batch_size{service}``: records per consumed batch.
- ``vigil_scores_total{service,model,version,stage}`` and ``vigil_score_latency_seconds{...}``: scores and their
  event-to-score latency; the live and the shadow scorer differ only by the ``stage`` label.
- ``vigil_ready{service}``: 1 when ``/ready`` would answer 200.
- ``vigil_consumer_lag{service,group,topic}``: records behind the end of ``topic``, summed over the partitions this
  process is assigned in consumer ``group`` (``vigil_runtime.lag``; sum over instances for the group's lag).
- ``vigil_http_requests_total{service,route,method,status}`` and ``vigil_http_request_duration_seconds{service,
  route,method}``: every HTTP request, counted by the route's template (``/models/{name}/versions/{version}``,
  never the raw path: bounded cardinality, no identifiers), with its latency (recorded by the service frame).

Labels never carry patient or encounter identifiers: only service, topic, model and bounded enumerations. The
``topic`` label is the topic's kind (``observations``, ``scores.live``), the same in every service and under any
prefix, so one query covers every stack. Names follow Prometheus' conventions (``promtool check metrics``): base
units in the name, ``_total`` only on counters. Each service owns its registry, so several services can run in
one test process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from vigil_contracts.topics import Topic

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics", "topic_label"]

_KINDS = sorted((t.value for t in Topic), key=len, reverse=True)


def topic_label(topic: str) -> str:
    """The ``topic`` label of a full topic name: its kind without the stack's prefix (other names unchanged)."""
    return next((kind for kind in _KINDS if topic.endswith(kind)), topic)


class ServiceMetrics:
    """The convention's instruments for one service, in a registry of their own."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "vigil_messages", "Records consumed, by outcome.", ["service", "topic", "outcome"], registry=r
        )
        self.processing = Histogram(
            "vigil_processing_seconds",
            "Time spent per batch or request.",
            ["service", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vigil_batch_size", "Records per consumed batch.", ["service"], buckets=BATCH_BUCKETS, registry=r
        )
        self.scores = Counter(
            "vigil_scores", "Risk scores published.", ["service", "model", "version", "stage"], registry=r
        )
        self.score_latency = Histogram(
            "vigil_score_latency_seconds",
            "From the newest observation's arrival in Kafka to its score.",
            ["service", "model", "version", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ready = Gauge("vigil_ready", "1 when the service is ready.", ["service"], registry=r)
        self.consumer_lag = Gauge(
            "vigil_consumer_lag",
            "Records behind the topic's end, summed over the partitions this process is assigned in the group.",
            ["service", "group", "topic"],
            registry=r,
        )
        self.http_requests = Counter(
            "vigil_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["service", "route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "vigil_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["service", "route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # The labelled children of the per-request instruments, looked up once per label set: ``labels()`` validates
        # and locks at every call, several calls per HTTP request. They hold what the instruments hold (no series
        # is removed from these), so the label sets stay bounded as before.
        self._messages: dict[tuple[str, str], Counter] = {}
        self._http: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def count(self, topic: str, outcome: str, n: int = 1) -> None:
        """Add ``n`` consumed records of ``topic`` with ``outcome``."""
        if n:
            child = self._messages.get((topic, outcome))
            if child is None:
                child = self._messages[topic, outcome] = self.messages.labels(self.service, topic_label(topic), outcome)
            child.inc(n)

    def declare(self, topics: list[str], *outcomes: str) -> None:
        """Start the series of ``outcomes`` for ``topics`` at 0, before the first such record.

        A counter series born at its first increment has no earlier sample, so Prometheus' ``increase()`` sees no
        increase for it: the first dead letter of a process would never fire ``VigilDeadLetters``. Declared at
        start, the series reads 0 first and the first parked record is an increase (Prometheus' instrumentation
        practices: "avoid missing metrics").
        """
        for topic in topics:
            for outcome in outcomes:
                self.messages.labels(self.service, topic_label(topic), outcome)

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request and its latency."""
        children = self._http.get((route, method, status))
        if children is None:
            children = self._http[route, method, status] = (
                self.http_requests.labels(self.service, route, method, str(status)),
                self.http_latency.labels(self.service, route, method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def expose(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
