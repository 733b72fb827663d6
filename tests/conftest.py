"""Fixtures shared by every tier.

Tiers are folders (``unit``, ``integration``, ``e2e``) and markers of the same names, added here from the
folder, so ``pytest -m unit`` runs one tier. The ``kafka_bootstrap`` fixture gives the integration tier a real
broker: ``$VIGIL_TEST_BOOTSTRAP`` if set (it must answer), else a native broker it starts on port 19092 and
stops at the end if it started it. It never skips: a broker that cannot start is a failure.

The broker is the secured one (SASL_SSL, SCRAM-SHA-512, StandardAuthorizer, deny by default), with two
principals of the tests' own beside the stack's: ``test-admin`` (ACLs on every topic and group, not a super user)
creates each test's topics and reads what the test checks; ``outsider`` authenticates but holds no ACL. Tests
that exercise a service as its own principal ask ``kafka_as(principal, topic_prefix)``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from vigil_runtime.kafka_security import KafkaConnection, create_acls

if TYPE_CHECKING:
    from vigil.kafka_local import LocalCluster

T = TypeVar("T")

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


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even when called inside a test's event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


TEST_ADMIN = "test-admin"
OUTSIDER = "outsider"


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[LocalCluster]:
    """The secured test cluster (started here unless ``$VIGIL_TEST_BOOTSTRAP`` names a running one)."""
    from vigil.kafka_local import KafkaError, LocalCluster
    from vigil_contracts.access import AclBinding

    cluster = LocalCluster(
        name="test",
        base_port=int(os.environ.get("VIGIL_TEST_KAFKA_PORT", "19092")),
        extra_principals=(TEST_ADMIN, OUTSIDER),
    )
    given = os.environ.get("VIGIL_TEST_BOOTSTRAP")
    if given:
        BROKER.update(how="given", bootstrap=given)
        yield cluster
        return
    already = cluster.running()
    try:
        bootstrap = cluster.start(timeout=120)
    except KafkaError as error:
        if "was formatted" not in str(error):
            raise
        cluster.destroy()  # a plaintext test cluster from before the broker was secured: its data is disposable
        bootstrap = cluster.start(timeout=120)
    # test-admin: every topic and group by ACL, so that tests go through the authorizer like services do.
    wildcard = [
        AclBinding(TEST_ADMIN, kind, name, "literal", "All")
        for kind, name in (("topic", "*"), ("group", "*"), ("cluster", "kafka-cluster"))
    ]
    run_sync(create_acls(cluster.connection(), wildcard))
    BROKER.update(how="reused" if already else "started", bootstrap=bootstrap)
    yield cluster
    if not already and not os.environ.get("VIGIL_KEEP_TEST_BROKER"):
        cluster.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_cluster: LocalCluster) -> str:
    """A real Kafka broker's bootstrap servers."""
    return os.environ.get("VIGIL_TEST_BOOTSTRAP") or kafka_cluster.bootstrap_servers


@pytest.fixture(scope="session")
def kafka(kafka_cluster: LocalCluster, kafka_bootstrap: str) -> KafkaConnection:
    """The tests' own connection (``test-admin``): creates topics, writes inputs, reads what a test checks."""
    return kafka_cluster.secrets.connection(kafka_bootstrap, TEST_ADMIN)


@pytest.fixture(scope="session")
def kafka_as(kafka_cluster: LocalCluster, kafka_bootstrap: str) -> Callable[[str, str], KafkaConnection]:
    """A connection as ``principal`` with the stack's ACLs created for ``topic_prefix`` (idempotent)."""
    from vigil_contracts.access import bindings_for
    from vigil_contracts.topics import Topics

    def connect(principal: str, topic_prefix: str) -> KafkaConnection:
        run_sync(create_acls(kafka_cluster.connection(), bindings_for(Topics(topic_prefix))))
        return kafka_cluster.secrets.connection(kafka_bootstrap, principal)

    return connect


@pytest.fixture
def topic_prefix() -> str:
    """A prefix of this test's own, so every test has its own topics."""
    return f"t{uuid.uuid4().hex[:10]}."


def kafka_settings(connection: KafkaConnection, password_file: Path) -> dict[str, object]:
    """Settings keywords for a connection's broker, CA and principal (the password as a file, like services)."""
    return {
        "kafka_bootstrap_servers": connection.bootstrap_servers,
        "kafka_security_protocol": connection.security_protocol,
        "kafka_ca_file": connection.ca_file,
        "kafka_username": connection.username,
        "kafka_password_file": str(password_file),
    }


def kafka_env(connection: KafkaConnection, password_file: Path, prefix: str = "VIGIL") -> dict[str, str]:
    """The same as environment variables, for services run as subprocesses."""
    return {f"{prefix}_{k.upper()}": str(v) for k, v in kafka_settings(connection, password_file).items()}


KAFKA_FIELDS = ("kafka_bootstrap_servers", "kafka_security_protocol", "kafka_ca_file", "kafka_username")


def settings_kafka_env(settings: Any, prefix: str = "VIGIL") -> dict[str, str]:
    """A settings object's broker and credentials as environment variables (its password file, not the password)."""
    env = {f"{prefix}_{k.upper()}": str(getattr(settings, k)) for k in KAFKA_FIELDS if getattr(settings, k)}
    if settings.kafka_password_file:
        env[f"{prefix}_KAFKA_PASSWORD_FILE"] = settings.kafka_password_file
    return env


@pytest.fixture(scope="session")
def principal_env(
    kafka_cluster: LocalCluster, kafka_as: Callable[[str, str], KafkaConnection]
) -> Callable[..., dict[str, str]]:
    """Environment variables that make a subprocess connect as ``principal`` (its ACLs made for the prefix)."""

    def env(principal: str, topic_prefix: str, prefix: str = "VIGIL") -> dict[str, str]:
        connection = kafka_as(principal, topic_prefix)
        return kafka_env(connection, kafka_cluster.secrets.password_file(principal), prefix)

    return env


@pytest.fixture
def settings_env(kafka_cluster: LocalCluster, kafka: KafkaConnection, topic_prefix: str) -> dict[str, object]:
    """Keyword arguments that point any service's Settings at the test broker (as test-admin) and this test's topics.

    Every service accepts the tests' bearer token (``tests.factories.AUTH``), with every scope.
    """
    from tests.factories import TEST_GRANTS

    return {
        **kafka_settings(kafka, kafka_cluster.secrets.password_file(TEST_ADMIN)),
        "topic_prefix": topic_prefix,
        "partitions": 3,
        "auth_tokens": TEST_GRANTS,
    }


def ready_within(client: Any, timeout: float = 30.0) -> Any:
    """Poll a TestClient's ``/ready`` until 200 (consumer services are ready once their group assigned them)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/ready")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)
