"""Replay jobs: analysts' replays (``vigil_shadow.replay``) run by the shadow service in the background.

The console (in the registry, which may not import shadow) starts a replay through shadow's HTTP API
(``POST /replays``) and reads its report when it is done (``GET /replays/{id}``). This module is the part that
runs without HTTP: a bounded queue of jobs, each calling :func:`vigil_shadow.replay.run_replay` unchanged.

Bounds. At most ``max_concurrent`` replays run at once (each reads the observation log and holds what it scores
in memory), at most ``max_pending`` wait or run (more is refused: the caller retries later), and only the last
``keep`` finished jobs are kept with their reports. Jobs and reports live in this process's memory: a restart
forgets them (a replay is a read of the log and can be run again); the registry's audit trail keeps who asked.

A replay runs in a worker thread with its own event loop: its scoring and bootstrap are CPU-bound Python, and on
the service's loop they would stall the live shadow consumer and the HTTP probes for the whole replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from vigil_shadow.replay import ReplayRequest, ReplayResult, run_replay

log = logging.getLogger(__name__)


class JobState(StrEnum):
    """Where a replay job is."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class TooManyJobs(Exception):
    """The queue is full: the request is refused rather than held without bound."""


@dataclass
class ReplayJob:
    """One requested replay: what, who asked, where it is, and its report once done."""

    id: str
    model: str
    version: str
    start: datetime
    end: datetime
    requested_by: str
    submitted_at: datetime
    state: JobState = JobState.QUEUED
    started_at: datetime | None = None
    finished_at: datetime | None = None
    report: dict[str, Any] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        """Done or failed."""
        return self.state in (JobState.DONE, JobState.FAILED)

    def public(self, *, with_report: bool) -> dict[str, Any]:
        """The job as JSON (the report only when asked for: it carries the plot data)."""
        out: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "requested_by": self.requested_by,
            "state": self.state.value,
            "submitted_at": self.submitted_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "error": self.error,
        }
        if with_report:
            out["report"] = self.report
        return out


RequestFactory = Callable[[str, str, datetime, datetime], ReplayRequest]
"""(model, version, start, end) -> the replay request (the service fills in its broker, registry and config)."""
Runner = Callable[[ReplayRequest], Awaitable[ReplayResult]]


def _in_thread(run: Runner, request: ReplayRequest) -> ReplayResult:
    return asyncio.run(run(request))  # type: ignore[arg-type]


@dataclass
class ReplayJobs:
    """The service's replay jobs."""

    make_request: RequestFactory
    run: Runner = run_replay
    max_concurrent: int = 1
    max_pending: int = 4
    keep: int = 20
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _jobs: dict[str, ReplayJob] = field(default_factory=dict)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _slots: asyncio.Semaphore | None = None
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def submit(self, model: str, version: str, start: datetime, end: datetime, *, requested_by: str) -> ReplayJob:
        """Queue a replay (it starts when a slot is free); TooManyJobs when ``max_pending`` are already in play.

        ValueError for a range that cannot be replayed (checked here, so the caller hears it at once).
        """
        if end <= start:
            raise ValueError("'to' must be after 'from'")
        if sum(not j.finished for j in self._jobs.values()) >= self.max_pending:
            raise TooManyJobs(f"{self.max_pending} replays are already queued or running; try again later")
        if self._slots is None:  # made here, inside the running loop
            self._slots = asyncio.Semaphore(self.max_concurrent)
        job = ReplayJob(
            id=f"r{next(self._counter)}-{secrets.token_hex(4)}",
            model=model,
            version=version,
            start=start,
            end=end,
            requested_by=requested_by,
            submitted_at=self.clock(),
        )
        self._jobs[job.id] = job
        self._tasks[job.id] = asyncio.create_task(self._execute(job))
        self._forget_old()
        log.info("replay queued", extra={"job": job.id, "model": model, "version": version})
        return job

    def get(self, job_id: str) -> ReplayJob | None:
        """One job, or None when unknown (or forgotten)."""
        return self._jobs.get(job_id)

    def list(self) -> list[ReplayJob]:
        """Every kept job, newest first."""
        return sorted(self._jobs.values(), key=lambda j: j.submitted_at, reverse=True)

    async def _execute(self, job: ReplayJob) -> None:
        assert self._slots is not None
        try:
            async with self._slots:
                job.state = JobState.RUNNING
                job.started_at = self.clock()
                request = self.make_request(job.model, job.version, job.start, job.end)
                result = await asyncio.to_thread(_in_thread, self.run, request)
                job.report = result.to_json(request)
                job.state = JobState.DONE
        except asyncio.CancelledError:
            job.state, job.error = JobState.FAILED, "cancelled: the shadow service stopped"
            raise
        except ValueError as error:
            # Replay's own refusals (unknown version, bad range): its messages name versions and times, no data.
            job.state, job.error = JobState.FAILED, str(error)
        except Exception as error:  # the job fails, the service keeps running
            job.state, job.error = JobState.FAILED, f"replay failed: {type(error).__name__}"
            log.warning("replay failed", extra={"job": job.id, "error_type": type(error).__name__})
        finally:
            job.finished_at = self.clock()
            self._tasks.pop(job.id, None)
        log.info("replay finished", extra={"job": job.id, "state": job.state.value})

    def _forget_old(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.finished), key=lambda j: j.submitted_at)
        for job in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[job.id]

    async def aclose(self) -> None:
        """Cancel what is queued or running (a worker thread already replaying finishes on its own)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
