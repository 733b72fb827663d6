"""Structured, PHI-free logs.

Log records carry a message and an allowlisted set of fields (ids of resources and events, counts, topics,
offsets, model names, durations, error types). Anything else passed in ``extra`` is dropped by the formatter,
so a patient name or a value cannot reach a log line by accident.

Repeated warnings and errors are rate-limited (:class:`RepeatFilter`): during a broker outage aiokafka alone wrote
about 586 lines a second of the same connection errors, which buries everything else and fills disks.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

ALLOWED_FIELDS = frozenset(
    {
        "service",
        "event_id",
        "resource_type",
        "resource_id",
        "count",
        "processed",
        "parked",
        "duplicates",
        "ignored",
        "topic",
        "source_topic",
        "partition",
        "offset",
        "error_type",
        "reason",
        "model_name",
        "model_version",
        "stage",
        "duration_ms",
        "batch_size",
        "status",
        "alert_key",
        "kind",
        "severity",
        "feature",
        "metric",
        "port",
        "url",
        "action",
        "path",
        "pid",
        "attempt",
        "version",
        "repeated",
    }
)
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and allowlisted extras only."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key in ALLOWED_FIELDS:
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and where it happened, never its message: messages may quote input values.
            out["exception"] = record.exc_info[0].__name__
        return orjson.dumps(out, default=str).decode()


@dataclass
class _Window:
    started: float
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Let a repeated warning or error through once per ``interval_s``, with the count of those it held back.

    Records repeat when they share logger, level, call site and message template (``"Unable connect to node with
    id %s: %s"``, whatever its arguments). The first passes; the next ones within the interval are dropped and
    counted; the first after the interval passes with ``(repeated N times in the last T s)`` and a ``repeated``
    field. Records below ``level`` always pass (per-batch info lines differ in meaning, not just in values). The
    remembered call sites are bounded (``max_keys``, oldest dropped first), and the filter is thread-safe (the
    ingest mapping thread logs too). ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        interval_s: float = 10.0,
        *,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.level = level
        self.clock = clock
        self.max_keys = max_keys
        self._windows: OrderedDict[tuple[object, ...], _Window] = OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level or self.interval_s <= 0:
            return True
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        key = (record.name, record.levelno, record.pathname, record.lineno, str(record.msg), exc_type)
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.started < self.interval_s:
                window.suppressed += 1
                return False
            self._windows[key] = _Window(now)
            self._windows.move_to_end(key)
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
        if window is not None and window.suppressed:
            # Rendered here (then the arguments dropped), so that the suffix cannot meet a stray '%' in them.
            elapsed = now - window.started
            record.msg = f"{record.getMessage()} (repeated {window.suppressed} times in the last {elapsed:.0f} s)"
            record.args = None
            record.repeated = window.suppressed
        return True


def configure_logging(
    level: str = "INFO", *, json: bool = True, service: str | None = None, repeat_interval_s: float = 10.0
) -> None:
    """Route all logging to stderr through the PHI-free formatter, repeated warnings and errors rate-limited."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    if service:
        handler.addFilter(_ServiceFilter(service))
    repeats = RepeatFilter(repeat_interval_s)
    # On the root handler, every propagating logger is covered (aiokafka.conn, aiokafka.client, uvicorn, ours).
    handler.addFilter(repeats)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "faststream.access"):
        logging.getLogger(noisy).setLevel("WARNING")
    # FastStream's own logger does not propagate (it writes to stdout with its own handler): filter it at the source.
    logging.getLogger("faststream").addFilter(repeats)


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True
