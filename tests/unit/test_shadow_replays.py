"""Shadow's replay jobs: the bounded job queue, and the HTTP routes the console starts replays through.

The replay itself is faked here (a runner returning a result); tests/e2e/test_console.py runs the real one
against the stack's Kafka from the browser.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from vigil_runtime.auth import Authenticator, Grant, TokenTable
from vigil_runtime.kafka_security import KafkaConnection
from vigil_shadow.api.routes import replays
from vigil_shadow.jobs import JobState, ReplayJobs, TooManyJobs
from vigil_shadow.replay import ReplayRequest, ReplayResult

pytestmark = pytest.mark.unit

START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 1, 2, tzinfo=UTC)
TOKENS = {
    "analyst-token-0123456789abcdefgh": Grant(user="Ann-Analyst", role="analyst"),
    "admin-token-0123456789abcdefghij": Grant(user="admin", role="admin"),
    "approver-token-0123456789abcdefg": Grant(user="dr-alice", role="clinical_approver"),
    "reader-token-0123456789abcdefghi": Grant(user="operator", scopes=["system/*.read"]),
}
ANALYST, ADMIN, APPROVER, READER = ({"Authorization": f"Bearer {t}"} for t in TOKENS)


def make_request(model: str, version: str, start: datetime, end: datetime) -> ReplayRequest:
    return ReplayRequest(start=start, end=end, models=[f"{model}:{version}"], kafka=KafkaConnection("127.0.0.1:9"))


class FakeRunner:
    """Stands in for run_replay: records each request; with ``hold`` runs wait until ``release`` is set."""

    def __init__(self, *, fail: BaseException | None = None, hold: bool = False) -> None:
        self.requests: list[ReplayRequest] = []
        self.fail = fail
        # A thread event: each replay runs in a worker thread on its own loop (as ReplayJobs runs it).
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.running = 0
        self.most_at_once = 0

    async def __call__(self, request: ReplayRequest) -> ReplayResult:
        self.requests.append(request)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.to_thread(self.release.wait, 30)
            if self.fail is not None:
                raise self.fail
            return ReplayResult(comparisons=[], counts={"observations_read": 7, "scores": 3})
        finally:
            self.running -= 1


async def wait_finished(jobs: ReplayJobs, job_id: str) -> None:
    for _ in range(500):
        job = jobs.get(job_id)
        if job is not None and job.finished:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} did not finish")


async def test_a_job_runs_the_replay_and_keeps_its_report() -> None:
    runner = FakeRunner()
    jobs = ReplayJobs(make_request, run=runner)
    job = jobs.submit("sepsis", "2", START, END, requested_by="ann")
    assert job.state is JobState.QUEUED
    await wait_finished(jobs, job.id)
    assert job.state is JobState.DONE and job.error is None
    assert runner.requests[0].models == ["sepsis:2"]
    assert (runner.requests[0].start, runner.requests[0].end) == (START, END)
    assert job.report is not None
    assert job.report["counts"] == {"observations_read": 7, "scores": 3}
    assert job.report["replay"]["models"] == ["sepsis:2"]
    assert "report" not in job.public(with_report=False)


async def test_replays_run_one_at_a_time_and_the_queue_is_bounded() -> None:
    runner = FakeRunner(hold=True)
    jobs = ReplayJobs(make_request, run=runner, max_concurrent=1, max_pending=2)
    first = jobs.submit("sepsis", "1", START, END, requested_by="ann")
    second = jobs.submit("sepsis", "2", START, END, requested_by="ann")
    with pytest.raises(TooManyJobs):
        jobs.submit("sepsis", "3", START, END, requested_by="ann")
    for _ in range(100):
        if first.state is JobState.RUNNING:
            break
        await asyncio.sleep(0.01)
    assert first.state is JobState.RUNNING and second.state is JobState.QUEUED
    runner.release.set()
    await wait_finished(jobs, second.id)
    assert runner.most_at_once == 1
    assert [j.id for j in jobs.list()] == [second.id, first.id]


async def test_a_failing_replay_fails_its_job_with_a_reason_and_no_data() -> None:
    jobs = ReplayJobs(make_request, run=FakeRunner(fail=ValueError("sepsis:9 is not in the registry")))
    job = jobs.submit("sepsis", "9", START, END, requested_by="ann")
    await wait_finished(jobs, job.id)
    assert job.state is JobState.FAILED and job.error == "sepsis:9 is not in the registry"

    crashing = ReplayJobs(make_request, run=FakeRunner(fail=RuntimeError("row 17: patient 42")))
    job = crashing.submit("sepsis", "2", START, END, requested_by="ann")
    await wait_finished(crashing, job.id)
    assert job.error == "replay failed: RuntimeError"  # an unexpected message may quote data: only its type


async def test_old_finished_jobs_are_forgotten_and_an_empty_range_is_refused() -> None:
    jobs = ReplayJobs(make_request, run=FakeRunner(), keep=2)
    for version in "1234":
        await wait_finished(jobs, jobs.submit("sepsis", version, START, END, requested_by="ann").id)
    jobs.submit("sepsis", "5", START, END, requested_by="ann")
    assert [j.version for j in jobs.list() if j.finished] == ["4", "3"]
    with pytest.raises(ValueError, match="after"):
        jobs.submit("sepsis", "1", END, START, requested_by="ann")
    await jobs.aclose()


# --- HTTP -----------------------------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[tuple[TestClient, FakeRunner]]:
    runner = FakeRunner()
    app = FastAPI()
    app.state.auth = Authenticator(TokenTable(TOKENS))
    app.state.shadow = SimpleNamespace(replays=ReplayJobs(make_request, run=runner))
    app.include_router(replays.router)
    from vigil_runtime.auth import AuthError

    @app.exception_handler(AuthError)
    async def refused(_: Any, error: AuthError) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": error.reason}, status_code=error.status)

    with TestClient(app) as client:  # one event loop for the whole test: background jobs keep running
        yield client, runner


def poll(client: TestClient, path: str) -> dict[str, Any]:
    for _ in range(200):
        body: dict[str, Any] = client.get(path, headers=ANALYST).json()
        if body["state"] in ("done", "failed"):
            return body
        time.sleep(0.01)
    raise AssertionError("the job did not finish")


def test_an_analyst_starts_a_replay_and_reads_its_report(api: tuple[TestClient, FakeRunner]) -> None:
    client, _ = api
    answer = client.post(
        "/replays",
        json={"model": "sepsis", "version": "2", "from": START.isoformat(), "to": END.isoformat()},
        headers=ANALYST,
    )
    assert answer.status_code == 202
    job = answer.json()
    assert answer.headers["location"] == f"/replays/{job['id']}"
    assert job["requested_by"] == "ann-analyst" and job["state"] in ("queued", "running")
    done = poll(client, f"/replays/{job['id']}")
    assert done["state"] == "done" and done["report"]["counts"]["scores"] == 3
    listed = client.get("/replays", headers=ADMIN).json()["replays"]
    assert [j["id"] for j in listed] == [job["id"]] and "report" not in listed[0]
    assert client.get("/replays/nope", headers=ANALYST).status_code == 404


@pytest.mark.parametrize("headers", [APPROVER, READER])
def test_other_roles_and_read_scopes_may_not_replay(
    api: tuple[TestClient, FakeRunner], headers: dict[str, str]
) -> None:
    client, runner = api
    body = {"model": "sepsis", "version": "2", "from": START.isoformat(), "to": END.isoformat()}
    answer = client.post("/replays", json=body, headers=headers)
    assert answer.status_code == 403 and "analyst" in answer.json()["detail"]
    assert client.get("/replays", headers=headers).status_code == 403
    assert client.post("/replays", json=body).status_code == 401
    assert runner.requests == []


def test_a_local_path_or_an_empty_range_is_refused(api: tuple[TestClient, FakeRunner]) -> None:
    client, runner = api
    sneaky = {"model": "sepsis", "version": "2=/etc", "from": START.isoformat(), "to": END.isoformat()}
    assert client.post("/replays", json=sneaky, headers=ANALYST).status_code == 422
    backwards = {"model": "sepsis", "version": "2", "from": END.isoformat(), "to": START.isoformat()}
    answer = client.post("/replays", json=backwards, headers=ANALYST)
    assert answer.status_code == 422 and "after" in answer.json()["detail"]
    assert runner.requests == []
