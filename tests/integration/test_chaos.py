"""The chaos suite: faults on a real three-broker cluster while FHIR streams in, and nothing lost or doubled.

One secured three-broker cluster for the module (``vigil kafka start --brokers 3``'s LocalCluster, SASL_SSL with
SCRAM and ACLs, on its own ports); each scenario on its own topics and groups, with ingest, scorer, shadow and drift
as processes, each as its own principal. The same small feed (16 stays of the bundled sample, about 400 Bundles
with heart rates drifting from the 14th hour) is posted in every scenario. An uninterrupted run comes first; then:
a broker killed (-9) mid-stream and restarted; the active KRaft controller killed (-9) and restarted; a second
scorer, shadow and drift added mid-stream and the first ones removed; each service killed (-9) once and restarted.

Every scenario checks (tests/chaos.py): each FHIR entry answered 2xx (refusals and dropped connections retried with
the same ids) and its canonical events on the observations topic, nothing else there; every stay-hour scored live
and in shadow, exactly once per (encounter, data time, observations) after dedupe by event id, the final score of
each hour equal to offline scoring of the rows as sent; and drift's alerts, as transitions per alert key, equal to
the uninterrupted run's. Each prints its accounting line.

That a killed broker loses no acknowledged write is the broker scenario's accounting; replication by default and
the refusal of one replica are `test_replication_cluster.py`'s. Both run in `make test`'s lane B (scripts/test.sh).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import Accounting, Faults, Feed, Stack, active_controller, run_scenario
from vigil.kafka_local import LocalCluster

# Beside the session broker (+0), the CLI test's (+20), the ingest outage test's (+40) and the replication test's
# (+80): six ports from +60.
PORT = int(os.environ.get("VIGIL_TEST_CHAOS_PORT", int(os.environ.get("VIGIL_TEST_KAFKA_PORT", "19092")) + 60))

# Three JVMs and four service processes per scenario. In `make test`'s lane B, beside lane A (and `make chaos` alone):
# with the installed packages' bytecode compiled at setup (Makefile), a service starts on a third of the CPU it
# took when every process compiled pandas, scipy and sklearn from source, which is what made the suite fit in CI.
pytestmark = [pytest.mark.slow, pytest.mark.chaos]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    home = tmp_path_factory.mktemp("chaos-home")
    cluster = LocalCluster(name=f"chaos-{uuid.uuid4().hex[:6]}", brokers=3, base_port=PORT, home=home)
    cluster.start(timeout=180)
    try:
        yield cluster
    finally:
        # Its data is deleted next: no controlled shutdown to wait for (three of them took most of a minute).
        for node in cluster.nodes:
            cluster.stop_node(node.node_id, kill=True)
        cluster.destroy()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chaos")


async def no_faults(stack: Stack, feed: Feed) -> list[str]:
    return []


async def kill_a_broker(stack: Stack, feed: Feed) -> list[str]:
    cluster = stack.cluster
    await feed.reach(0.3)
    controller, _ = await asyncio.to_thread(active_controller, cluster)
    victim = next(n.node_id for n in cluster.nodes if n.node_id != controller)  # the controller has its own test
    await asyncio.to_thread(cluster.stop_node, victim, kill=True)
    at = feed.share_sent
    await feed.reach(0.6)
    back = feed.share_sent
    # Restarted while the feed goes on and the services drain; the scenario waits for it before its checks end.
    stack.in_background(asyncio.to_thread(cluster.start, timeout=300))
    return [f"broker {victim} killed at {at:.0%} of the Bundles, restarted from {back:.0%}"]


async def kill_the_controller(stack: Stack, feed: Feed) -> list[str]:
    cluster = stack.cluster
    await feed.reach(0.3)
    controller, epoch = await asyncio.to_thread(active_controller, cluster)
    await asyncio.to_thread(cluster.stop_node, controller, kill=True)
    at = feed.share_sent
    successor, _ = await asyncio.to_thread(active_controller, cluster, newer_than=epoch)
    assert successor != controller
    await feed.reach(0.6)
    back = feed.share_sent
    stack.in_background(asyncio.to_thread(cluster.start, timeout=300))  # as in kill_a_broker
    return [f"controller {controller} killed at {at:.0%}, {successor} took over, restarted from {back:.0%}"]


SCALED = ("scorer", "shadow", "drift")


async def add_and_remove_instances(stack: Stack, feed: Feed) -> list[str]:
    # Early and on a slower feed: three processes take half a minute to be ready, and they must join mid-stream.
    await feed.reach(0.1)
    added = [stack.start(n) for n in SCALED]
    # They join while the feed runs; on a loaded machine the feed waits at half-way until they are ready.
    held = await feed.held_until(stack.ready(*added), 0.5)
    at = feed.share_sent
    await feed.reach(0.6)
    for n in SCALED:
        stack.instances[n][0].stop()  # the first instance leaves: its partitions and state go to the second
    return [
        f"second instances ready at {at:.0%}"
        + (f" (feed held {held:.0f}s for them)" if held else "")
        + f", first ones removed at {feed.share_sent:.0%}"
    ]


async def kill_each_service(stack: Stack, feed: Feed) -> list[str]:
    notes = []
    replacements = []
    for share, name in ((0.15, "ingest"), (0.3, "scorer"), (0.4, "shadow"), (0.5, "drift")):
        await feed.reach(share)
        notes.append(f"{name} at {feed.share_sent:.0%}")
        # Ingest's replacement is awaited (the feed waits for it anyway); the consumers' start while the feed goes on.
        replacements.append(await stack.restart(name, wait=name == "ingest"))
    await stack.ready(*replacements)
    return ["killed -9 and restarted: " + ", ".join(notes)]


SCENARIOS: dict[str, tuple[Faults, float]] = {
    "uninterrupted": (no_faults, 3.0),
    "broker": (kill_a_broker, 3.0),
    "controller": (kill_the_controller, 3.0),
    "scale": (add_and_remove_instances, 1.0),  # slower: the added instances must be ready before the feed ends
    "services": (kill_each_service, 1.5),  # slower: four kills must land while the feed runs
}
"""Each scenario's faults and the feed's pace (simulated hours per second)."""


def scenario(cluster: LocalCluster, work: Path, name: str) -> Accounting:
    faults, speed = SCENARIOS[name]
    result = asyncio.run(run_scenario(cluster, work, name, faults, speed=speed))
    print(f"\n{result.line()}")
    return result


@pytest.fixture(scope="module")
def uninterrupted(cluster: LocalCluster, work: Path) -> Accounting:
    """The feed through a stack without faults: the alerts every other scenario must raise too."""
    return scenario(cluster, work, "uninterrupted")


def test_uninterrupted_run_accounts_for_everything_and_raises_the_drift(uninterrupted: Accounting) -> None:
    assert "open" in uninterrupted.alerts.get("data_drift:inputs:heart_rate", []), uninterrupted.alerts


@pytest.mark.parametrize("name", ["broker", "controller", "scale", "services"])
def test_faults_mid_stream_lose_nothing_double_nothing_and_raise_the_same_alerts(
    cluster: LocalCluster, work: Path, uninterrupted: Accounting, name: str
) -> None:
    assert scenario(cluster, work, name).alerts == uninterrupted.alerts
