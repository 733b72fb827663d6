"""Structured, PHI-free logs.

Log records carry a message and an allowlisted set of fields (ids of resources and events, counts, topics,
offsets, model names, durations, error types). Anything else passed in ``extra`` is dropped by the formatter,
so a patient name or a value cannot reach a log line by accident.
"""

from __future__ import annotations

import logging
import sys
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


def configure_logging(level: str = "INFO", *, json: bool = True, service: str | None = None) -> None:
    """Route all logging to stderr through the PHI-free formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    if service:
        handler.addFilter(_ServiceFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "faststream.access"):
        logging.getLogger(noisy).setLevel("WARNING")


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True
