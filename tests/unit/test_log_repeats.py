"""The log-rate limit: a repeated warning or error is logged once per interval, with the count it held back."""

from __future__ import annotations

import logging

import orjson
import pytest

from vigil_runtime.logging import JsonFormatter, RepeatFilter, configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Capture(logging.Handler):
    def __init__(self, repeats: RepeatFilter) -> None:
        super().__init__()
        self.addFilter(repeats)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def logged() -> tuple[logging.Logger, Capture, Clock]:
    clock = Clock()
    capture = Capture(RepeatFilter(10.0, clock=clock))
    logger = logging.getLogger("test.repeats")
    logger.handlers[:] = [capture]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, capture, clock


def connection_error(logger: logging.Logger, node: int = 1) -> None:
    # The shape of aiokafka's outage line: one template, arguments that vary.
    logger.error("Unable connect to node with id %s: %s", node, "[Errno 111] Connect call failed")


def test_repeats_within_the_interval_are_counted_and_reported_once_it_passes(
    logged: tuple[logging.Logger, Capture, Clock],
) -> None:
    logger, capture, clock = logged
    for _ in range(313):
        connection_error(logger)
        clock.now += 0.01
    assert [line["msg"] for line in capture.lines] == [
        "Unable connect to node with id 1: [Errno 111] Connect call failed"
    ]
    clock.now = 1000.0 + 10.5
    connection_error(logger, node=2)  # the same template with other arguments is a repeat
    assert len(capture.lines) == 2
    assert capture.lines[1]["msg"] == (
        "Unable connect to node with id 2: [Errno 111] Connect call failed (repeated 312 times in the last 10 s)"
    )
    assert capture.lines[1]["repeated"] == 312
    # a new window: the next one within 10 s is held back again, a lone one after it carries no count
    connection_error(logger)
    clock.now += 60
    connection_error(logger)
    assert len(capture.lines) == 3 and str(capture.lines[2]["msg"]).endswith("(repeated 1 times in the last 60 s)")
    clock.now += 60
    connection_error(logger)
    assert capture.lines[3]["msg"] == "Unable connect to node with id 1: [Errno 111] Connect call failed"
    assert "repeated" not in capture.lines[3]


def test_other_messages_levels_and_info_lines_are_not_held_back(
    logged: tuple[logging.Logger, Capture, Clock],
) -> None:
    logger, capture, _ = logged

    def publish_failed() -> None:
        logger.error("publish failed")

    connection_error(logger)
    publish_failed()  # another message: its own window
    logger.error("Unable connect to node with id %s: %s", 1, "x")  # the same message from another line: its own
    logger.warning("Unable connect to node with id %s: %s", 1, "x")  # another level: its own window
    for i in range(5):
        logger.info("batch %s", i)  # below WARNING: every one passes
    assert len(capture.lines) == 9
    connection_error(logger)
    publish_failed()
    assert len(capture.lines) == 9


def test_a_percent_sign_in_the_arguments_survives_the_suffix(logged: tuple[logging.Logger, Capture, Clock]) -> None:
    logger, capture, clock = logged
    for step in (0, 0, 11):
        clock.now += step
        logger.error("ratio %s", "100%")
    assert capture.lines[-1]["msg"] == "ratio 100% (repeated 1 times in the last 11 s)"


def test_the_remembered_call_sites_are_bounded() -> None:
    repeats = RepeatFilter(10.0, clock=Clock(), max_keys=3)
    for i in range(10):
        record = logging.makeLogRecord({"name": "x", "levelno": logging.ERROR, "msg": f"distinct {i}"})
        assert repeats.filter(record)
    assert len(repeats._windows) == 3


def test_zero_interval_logs_everything() -> None:
    repeats = RepeatFilter(0.0, clock=Clock())
    record = logging.makeLogRecord({"name": "x", "levelno": logging.ERROR, "msg": "same"})
    assert all(repeats.filter(record) for _ in range(5))


def test_every_service_installs_it_on_the_root_handler_and_faststream() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    faststream = logging.getLogger("faststream")
    saved_filters = faststream.filters[:]
    try:
        configure_logging("INFO", service="ingest", repeat_interval_s=7.0)
        (handler,) = root.handlers
        (repeats,) = [f for f in handler.filters if isinstance(f, RepeatFilter)]
        assert repeats.interval_s == 7.0
        assert repeats in faststream.filters
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        faststream.filters[:] = saved_filters
