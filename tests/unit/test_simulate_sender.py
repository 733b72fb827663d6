"""The simulator against an ingest that fails: transport errors are retried, a final failure stops the run naming
the stay (by the simulator's handle), the bundle and the exception, and the accounting is on acknowledgements.

The ingest is a real local socket (tests/mock_ingest.py), so httpx meets real dropped connections and timeouts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.mock_ingest import Behaviour, MockIngest
from vigil import simulate as sim
from vigil_contracts.events import OutcomeRecorded
from vigil_scoring.physionet import ICU_EPOCH

FAST = sim.RetryPolicy(attempts=3, backoff_s=0.01, timeout_s=2.0)


class Outcomes:
    """Records outcomes as a producer would, acknowledging at once."""

    def __init__(self) -> None:
        self.published: list[OutcomeRecorded] = []

    async def __call__(self, outcome: OutcomeRecorded) -> Any:
        self.published.append(outcome)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def run(
    behaviour: Any, *, stays: int = 4, retry: sim.RetryPolicy = FAST, deadline_s: float | None = 60.0
) -> tuple[sim.SimulationReport, MockIngest, Outcomes, list[sim.Stay]]:
    ingest = MockIngest(behaviour)
    url = await ingest.start()
    plan = sim.load_stays(None, stays=stays, seed=11, arrival_hours=4.0)
    report = sim.SimulationReport()
    items = sim.timeline(plan, drifts=[], outcome_delay_hours=6.0, start=ICU_EPOCH, report=report)
    sender = sim.HttpSender(url, report, concurrency=3, retry=retry, handles=sim.stay_handles(plan))
    outcomes = Outcomes()
    try:
        await sim.run_timeline(
            items, sender=sender, publish_outcome=outcomes, report=report, deadline_s=deadline_s, progress_every_s=0
        )
    finally:
        await ingest.stop()
    return report, ingest, outcomes, plan


async def test_a_dropped_connection_is_retried_and_the_accounting_is_exact() -> None:
    def once(n: int) -> Behaviour:
        return "drop" if n == 5 else "ok"

    report, ingest, outcomes, plan = await run(once)
    assert report.transport_errors == {"RemoteProtocolError": 1}
    assert report.retries == 1
    assert report.stopped is None
    # Every planned bundle was posted once, acknowledged once; the dropped one reached ingest twice (resent).
    assert report.bundles_planned == report.bundles_posted == report.bundles_acknowledged == len(ingest.answered)
    assert sum(ingest.seen.values()) == report.bundles_posted + 1
    assert all(n == 1 for n in ingest.answered.values())
    # Entries: planned = sent = acknowledged one by one, nothing unaccounted for.
    assert report.entries_planned == report.entries_sent == report.entries_acknowledged > 0
    assert report.entries_unacknowledged == 0
    assert report.entry_outcomes == {"201": report.entries_sent}
    assert len(outcomes.published) == len(plan)


async def test_a_timeout_and_a_503_are_retried_too() -> None:
    def flaky(n: int) -> Behaviour:
        return {3: "hang", 7: "503"}.get(n, "ok")  # type: ignore[return-value]

    report, _, _, _ = await run(flaky, retry=sim.RetryPolicy(attempts=3, backoff_s=0.01, timeout_s=0.5))
    assert report.transport_errors == {"ReadTimeout": 1}
    assert report.retried_status == {503: 1}
    assert report.http_status == {200: report.bundles_planned}
    assert report.entries_unacknowledged == 0


async def test_an_ingest_that_keeps_failing_stops_the_run_naming_stay_bundle_and_error() -> None:
    def broken(n: int) -> Behaviour:
        return "ok" if n <= 4 else "drop"

    with pytest.raises(sim.SimulationStopped) as stopped:
        await asyncio.wait_for(run(broken, stays=6), timeout=60)
    error = stopped.value
    assert "RemoteProtocolError" in error.reason and "after 3 attempts" in error.reason
    assert error.reason.startswith("sending stay #") and " of 6's bundle #" in error.reason
    assert "Bundle/" in error.reason
    # No identifier of the source data in the message: only the simulator's handle and the bundle's hash id.
    plan = sim.load_stays(None, stays=6, seed=11, arrival_hours=4.0)
    assert not any(s.patient_id in error.reason or s.encounter in error.reason for s in plan)
    report = error.report
    assert report.stopped == error.reason
    assert report.entries_unacknowledged > 0, "a stopped run never reports zero loss"
    assert report.entries_acknowledged < report.entries_planned
    assert report.bundles_acknowledged == 4


async def test_an_ingest_that_never_answers_stops_the_run_at_its_deadline() -> None:
    def silent(n: int) -> Behaviour:
        return "hang"

    slow = sim.RetryPolicy(attempts=5, backoff_s=0.01, timeout_s=30.0)  # alone, 150 s per bundle
    with pytest.raises(sim.SimulationStopped) as stopped:
        await asyncio.wait_for(run(silent, retry=slow, deadline_s=1.0), timeout=30)
    assert "did not finish within 1s" in stopped.value.reason
    assert "0 of" in stopped.value.reason
    assert stopped.value.report.entries_unacknowledged == stopped.value.report.entries_planned


def test_phase_reports_add_up_instead_of_overwriting() -> None:
    a, b = sim.SimulationReport(), sim.SimulationReport()
    a.http_status.update({200: 5, 400: 1})
    b.http_status.update({200: 7})
    a.entry_outcomes.update({"201": 10})
    b.entry_outcomes.update({"201": 3, "422": 1})
    a.entries_planned, b.entries_planned = 10, 5
    a.rejected_encounters.add("x")
    both = a.merge(b)
    assert both.http_status == {200: 12, 400: 1}
    assert both.entry_outcomes == {"201": 13, "422": 1}
    assert both.entries_planned == 15 and both.entries_unacknowledged == 1
    assert both.rejected_encounters == {"x"}


async def test_a_held_feed_sends_nothing_until_released_and_then_everything() -> None:
    # The chaos suite holds the feed while added instances start on a loaded machine (tests/chaos.py).
    ingest = MockIngest(lambda n: "ok")
    url = await ingest.start()
    plan = sim.load_stays(None, stays=2, seed=11, arrival_hours=1.0)
    report = sim.SimulationReport()
    items = sim.timeline(plan, drifts=[], outcome_delay_hours=6.0, start=ICU_EPOCH, report=report)
    sender = sim.HttpSender(url, report, retry=FAST, handles=sim.stay_handles(plan))
    hold = asyncio.Event()
    try:
        run = asyncio.create_task(
            sim.run_timeline(items, sender=sender, publish_outcome=Outcomes(), report=report, speed=0, hold=hold)
        )
        await asyncio.sleep(0.2)  # the loop runs the feed's task meanwhile: it must be waiting on the hold
        assert not run.done()
        assert report.bundles == 0 and not ingest.seen
        hold.set()
        await run
    finally:
        await ingest.stop()
    assert report.bundles_planned == report.bundles_acknowledged == len(ingest.answered) > 0
    assert report.entries_unacknowledged == 0
