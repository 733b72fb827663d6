"""Fixtures shared by every tier.

Tiers are folders (``unit``, ``integration``, ``e2e``) and markers of the same names, added here from the
folder, so ``pytest -m unit`` runs one tier. The ``kafka_bootstrap`` fixture gives the integration tier a real
broker: ``$VIGIL_TEST_BOOTSTRAP`` if set (it must answer), else a native broker it starts on port 19092 and
stops at the end if it started it. It never skips: a broker that cannot start is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_KIT = REPO_ROOT.parent / "shared"
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO_ROOT / "tests").parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def shared_kit() -> Path:
    """The read-only kit beside the repository (``../shared``); skips where a user's clone lacks it."""
    if not (SHARED_KIT / "data" / "physionet2019_setA.parquet").exists():
        pytest.skip(f"the kit at {SHARED_KIT} is absent (it sits beside the repository on developer machines and CI)")
    return SHARED_KIT


BROKER: dict[str, str] = {}
"""How the session got its broker (for the closing summary)."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which broker the integration tier used and how many tests ran against it, so CI logs show it."""
    outcomes: dict[str, int] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") in ("call", "setup") and "kafka_bootstrap" in getattr(
                report, "vigil_fixtures", ()
            ):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if BROKER:
        terminalreporter.write_line(
            f"[kafka] {BROKER['how']} native broker at {BROKER['bootstrap']}; tests against it: "
            + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    report.vigil_fixtures = tuple(getattr(item, "fixturenames", ()))
    if report.when == "setup" and report.passed:
        report.vigil_fixtures = ()  # count each test once: at its call (or at a failed setup)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka broker's bootstrap servers."""
    given = os.environ.get("VIGIL_TEST_BOOTSTRAP")
    if given:
        BROKER.update(how="given", bootstrap=given)
        yield given
        return
    from vigil.kafka_local import LocalCluster

    cluster = LocalCluster(name="test", base_port=int(os.environ.get("VIGIL_TEST_KAFKA_PORT", "19092")))
    already = cluster.running()
    bootstrap = cluster.start(timeout=120)
    BROKER.update(how="reused" if already else "started", bootstrap=bootstrap)
    yield bootstrap
    if not already and not os.environ.get("VIGIL_KEEP_TEST_BROKER"):
        cluster.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A prefix of this test's own, so every test has its own topics."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def settings_env(kafka_bootstrap: str, topic_prefix: str) -> dict[str, object]:
    """Keyword arguments that point any service's Settings at the test broker and this test's topics.

    Every service accepts the tests' bearer token (``tests.factories.AUTH``), with every scope.
    """
    from tests.factories import TEST_GRANTS

    return {
        "kafka_bootstrap_servers": kafka_bootstrap,
        "topic_prefix": topic_prefix,
        "partitions": 3,
        "auth_tokens": TEST_GRANTS,
    }
