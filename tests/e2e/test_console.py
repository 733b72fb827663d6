"""The console in Debian's Chromium (Playwright driving /usr/bin/chromium): the people who decide, end to end.

The registry app runs without its Kafka side on a real SQLite database seeded by tests/console_seed.py, served by
uvicorn on a free port. A data scientist proposes; the proposer's approve is refused; a form without its CSRF
token is refused; a clinical approver reads the evidence, approves and promotes; the promotion shows on the
model page and in the audit trail; an analyst starts a replay of a short range (run for real by shadow's HTTP
app over the test Kafka broker) and reads its report. Every page is checked with axe-core (no serious or
critical violation) and for requests to any other host, and screenshotted (into docs/console/ when
VIGIL_CONSOLE_SCREENSHOTS=1).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.console_seed import seed
from vigil_registry.app import create_app
from vigil_registry.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "tests" / "support" / "axe" / "axe.min.js"
SHOTS = ROOT / "docs" / "console"
TOKENS = {
    "console-test-scientist-token-7f3a9c": {"user": "dana-scientist", "role": "data_scientist"},
    "console-test-approver-token-41be0d": {"user": "dr-alice", "role": "clinical_approver"},
    "console-test-analyst-token-5c21e8a": {"user": "ann-analyst", "role": "analyst"},
    "console-test-shadow-reader-93d0b2f": {"user": "svc-shadow", "role": "viewer"},
}
SCIENTIST, APPROVER, ANALYST, SHADOW_READER = list(TOKENS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(app: Any, port: int) -> Iterator[str]:
    """Serve an app with uvicorn in a thread until the generator is closed; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1200):  # bounded wait for the socket (shadow first rebuilds its state), not a sleep-and-hope
        if server.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert server.started, "the app did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    """The registry's and shadow's ports, chosen first: each is told where the other is."""
    return {"registry": _free_port(), "shadow": _free_port()}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]) -> Iterator[str]:
    """The registry app with its console, over a seeded SQLite database; yields its base URL."""
    root = tmp_path_factory.mktemp("console")
    url = f"sqlite:///{root / 'registry.db'}"
    port = ports["registry"]
    seed(url, root / "artifacts", public_url=f"http://127.0.0.1:{port}").engine.dispose()
    settings = Settings(
        database_url=url,
        artifact_root=root / "artifacts",
        kafka_enabled=False,
        http_port=port,
        public_url=f"http://127.0.0.1:{port}",
        tokens=TOKENS,
        shadow_url=f"http://127.0.0.1:{ports['shadow']}",
        development=False,
    )
    yield from _serve(create_app(settings), port)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (Playwright's own browser downloads cannot work here)."""
    from playwright.sync_api import sync_playwright

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is missing: scripts/install-system-deps.sh installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: scripts/install-system-deps.sh fetches the pinned axe-core with npm pack")
    return AXE.read_text()


class Person:
    """One browser context (its own cookies) for one signed-in person, with the page checks every visit runs."""

    def __init__(self, browser: Any, base: str, axe: str) -> None:
        # bypass_csp: the console's Content-Security-Policy would (rightly) block the injected axe script.
        self.context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
        self.base = base
        self.axe = axe
        self.foreign: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()

    def _route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(self.base + "/") or url == self.base:
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def visit(self, path: str, shot: str | None = None) -> Any:
        self.page.goto(self.base + path)
        self.check(shot)
        return self.page

    def check(self, shot: str | None) -> None:
        """No request left the service; axe finds no serious or critical violation; a screenshot if named."""
        self.page.wait_for_load_state("networkidle")
        assert self.foreign == [], f"requests to other hosts from {self.page.url}: {self.foreign}"
        self.page.evaluate(self.axe)
        result = self.page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        bad = [
            f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in result["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert bad == [], f"accessibility violations on {self.page.url}: {bad}"
        if shot:
            out = SHOTS if os.environ.get("VIGIL_CONSOLE_SCREENSHOTS") == "1" else Path(self.context_dir)
            out.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(out / f"{shot}.png"), full_page=True)

    context_dir = "/tmp/vigil-console-shots"

    def sign_in(self, token: str, shot: str | None = None) -> None:
        self.visit("/ui/models")
        assert "/ui/signin" in self.page.url, "an anonymous visit must be sent to sign in"
        self.check(shot)
        self.page.fill("#token", token)
        self.page.click("form.signin button[type=submit]")
        self.page.wait_for_url(re.compile(r".*/ui/models$"))

    def csrf(self) -> str:
        return str(self.page.input_value("input[name=csrf] >> nth=0"))

    def close(self) -> None:
        self.context.close()


def test_propose_refusals_approve_and_promote_in_a_browser(console: str, browser: Any, axe_source: str) -> None:
    review = "/ui/models/sepsis/versions/2/review"

    scientist = Person(browser, console, axe_source)
    scientist.sign_in(SCIENTIST, shot="01-sign-in")
    page = scientist.page
    assert page.inner_text("[data-testid=who]") == "dana-scientist"
    assert page.inner_text("[data-testid=role]") == "data_scientist"
    scientist.check("02-models")
    assert page.inner_text("[data-testid=production-sepsis]") == "1"

    scientist.visit("/ui/models/sepsis/versions/2", shot="03-version")
    assert "Intended use" in page.content() and "Package digests" in page.content()
    page.fill("#reason-propose-for-production", "better AUROC at a lower alert rate")
    page.click("button[value=propose-for-production]")
    page.wait_for_url(re.compile(r".*/review$"))
    scientist.check(None)
    assert "proposed for production" in page.inner_text("[role=status]")
    assert "proposed by dana-scientist" in page.inner_text("[data-testid=proposal]")

    # The proposer's own approve button: disabled, with the reason on the page; and the server refuses it too.
    approve = page.locator("button[value=approve]")
    assert approve.is_disabled()
    why = page.inner_text("#why-approve")
    assert "four-eyes" in why and "may not approve" in why
    refused = page.request.post(console + "/ui/models/sepsis/versions/2/approve", form={"csrf": scientist.csrf()})
    assert refused.status == 403
    assert "may not approve" in refused.text()

    approver = Person(browser, console, axe_source)
    approver.sign_in(APPROVER)
    page = approver.page
    assert page.inner_text("[data-testid=role]") == "clinical_approver"

    # A form posted without its CSRF token is refused, even from a person who may approve.
    no_csrf = page.request.post(console + "/ui/models/sepsis/versions/2/approve", form={"reason": "forged"})
    assert no_csrf.status == 403 and "CSRF" in no_csrf.text()

    # The evidence: the policy's report, the plots drawn on the server, alert burden and subgroups.
    approver.visit(review, shot="04-review")
    policy = page.inner_text("[data-testid=policy]")
    assert "auroc diff ci low" in policy and "pass" in policy and "fail" not in policy
    assert page.locator("figure svg[aria-label^='ROC curves']").count() == 1
    assert page.locator("figure svg[aria-label^='Reliability diagram']").count() == 1
    burden = page.inner_text("[data-testid=burden]")
    assert "candidate 2" in burden and "of 65" in burden
    subgroups = page.inner_text("[data-testid=subgroups]")
    assert "female" in subgroups and "65-79" in subgroups
    assert page.locator("button[value=promote]").is_disabled(), "promotion waits for the approval"

    page.fill("#reason-approve", "evidence reviewed: better discrimination, fewer alerts")
    page.click("button[value=approve]")
    page.wait_for_url(re.compile(r".*/review$"))
    assert "approved" in page.inner_text("[role=status]")
    page.fill("#reason-promote", "promote after approval")
    page.click("button[value=promote]")
    page.wait_for_url(re.compile(r".*/review$"))
    approver.check(None)
    assert "promoted to production" in page.inner_text("[role=status]")

    approver.visit("/ui/models/sepsis", shot="05-model")
    assert page.inner_text("[data-testid=production]") == "2"
    assert re.search(r"promoted 2 \(shadow → production\)\s+by dr-alice", page.inner_text("[data-testid=timeline]"))

    approver.visit("/ui/audit?model=sepsis&action=promoted", shot="06-audit")
    assert "Hash chain verified" in page.inner_text("[data-testid=verification]")
    rows = page.locator("[data-testid=audit] tbody tr")
    assert rows.count() == 2  # version 1 first, version 2 now
    assert "dr-alice" in rows.nth(0).inner_text() and "promote after approval" in rows.nth(0).inner_text()

    approver.visit("/ui/monitoring", shot="07-monitoring")
    open_alerts = page.inner_text("[data-testid=open-alerts]")
    assert "temperature" in open_alerts and "psi" in open_alerts and "0.440" in open_alerts
    assert page.locator("[data-testid=open-alerts] td.spark svg").count() == 1
    assert "ece" in page.inner_text("[data-testid=resolved-alerts]")

    # Sign-out ends the session: the next visit is sent to sign in again.
    page.click("header form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/signin$"))
    page.goto(console + "/ui/models")
    assert "/ui/signin" in page.url
    scientist.close()
    approver.close()


# --- replay: the console starts it in shadow, shadow replays the test broker's log ------------------------


def _replay_data(kafka: Any, password_file: Path, topic_prefix: str) -> tuple[dict[str, Any], str, str]:
    """Four short stays on the topics (observations, the live model's scores, outcomes); the shadow settings'
    Kafka keywords and the replay's range (observation times) as the form's ``datetime-local`` values."""
    from tests.conftest import kafka_settings, run_sync
    from vigil import simulate as sim
    from vigil_contracts import events as ev
    from vigil_runtime.kafka import ensure_topics
    from vigil_runtime.producer import AckedProducer
    from vigil_scoring.model_package import ModelPackage, default_package_path
    from vigil_scoring.physionet import stay_events
    from vigil_scoring.scoring import ScoringCore
    from vigil_shadow.settings import Settings as ShadowSettings

    common: dict[str, Any] = {**kafka_settings(kafka, password_file), "topic_prefix": topic_prefix}
    settings = ShadowSettings(**common, registry_url=None)
    stays = sim.load_stays(None, stays=4, seed=11, septic_share=0.5)
    observations: list[Any] = []
    outcomes: list[Any] = []
    for stay in stays:
        observations += stay_events(
            stay.rows, encounter=stay.encounter, patient=stay.patient, icu_admitted_at=stay.icu_admitted_at
        )
        end = stay.icu_admitted_at + timedelta(hours=stay.hours)
        onset = stay.icu_admitted_at + timedelta(hours=stay.onset_hour) if stay.onset_hour is not None else None
        outcomes.append(
            ev.OutcomeRecorded(
                event_id=ev.deterministic_id("outcome", stay.encounter),
                occurred_at=end,
                key=stay.encounter,
                encounter=stay.encounter,
                patient=stay.patient,
                outcome="sepsis" if onset is not None else "discharged",
                onset_at=onset,
                recorded_at=end,
            )
        )
    live = ScoringCore(ModelPackage.load(default_package_path("1")), stage=ev.Stage.PRODUCTION).score(observations)

    async def publish() -> None:
        await ensure_topics(settings)
        publisher = AckedProducer(settings.kafka, client_id="test-console-replay-feeder")
        await publisher.start()
        try:
            await publisher.publish_all(settings.topics.observations, observations)
            await publisher.publish_all(settings.topics.scores_live, live)
            await publisher.publish_all(settings.topics.outcomes, outcomes)
        finally:
            await publisher.stop()

    run_sync(publish())  # Playwright's sync API already runs an event loop in this thread
    run_sync(_coordinator_ready(settings))
    times = [e.observed_at for e in observations if isinstance(e, ev.ObservationRecorded)]
    first, last = min(times), max(times) + timedelta(hours=1)
    return common, first.strftime("%Y-%m-%dT%H:%M:%S"), last.strftime("%Y-%m-%dT%H:%M:%S")


async def _coordinator_ready(settings: Any) -> None:
    """Bounded wait until the broker answers group-offset queries: a fresh test broker creates its offsets topic
    on the first one, and shadow's start-up (which asks once) would fail on a coordinator not yet elected."""
    from aiokafka.errors import KafkaError

    from vigil_shadow import logscan

    for _ in range(60):
        try:
            await logscan.committed_offsets(settings.kafka, "vigil-console-test-probe", settings.topics.observations)
            return
        except KafkaError:
            await asyncio.sleep(1)
    raise AssertionError("the broker's group coordinator did not become available")


@pytest.fixture(scope="module")
def shadow(
    console: str, ports: dict[str, int], kafka_cluster: Any, kafka: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str]]:
    """Shadow's real HTTP app (its Kafka side included) on its own topics of the test broker, holding a little
    history to replay; yields its URL and the range to replay."""
    from tests.conftest import TEST_ADMIN
    from vigil_shadow.app import create_app as create_shadow
    from vigil_shadow.settings import Settings as ShadowSettings

    prefix = f"t{uuid.uuid4().hex[:10]}."
    common, start, end = _replay_data(kafka, kafka_cluster.secrets.password_file(TEST_ADMIN), prefix)
    settings = ShadowSettings(
        **common,
        http_port=ports["shadow"],
        group_id=f"shadow-{uuid.uuid4().hex[:8]}",
        registry_url=console,
        registry_token=SHADOW_READER,
        # The stack's tokens table as shadow reads it: the analyst's token carries the analyst role.
        auth_tokens={ANALYST: TOKENS[ANALYST]},
        model_cache_dir=tmp_path_factory.mktemp("shadow-models"),
        bootstrap_iterations=20,  # a short report: the CIs' precision is not what this test checks
        replay_warmup_hours=0,
        development=False,
    )
    for url in _serve(create_shadow(settings), ports["shadow"]):
        yield url, start, end


def test_an_analyst_replays_a_range_and_reads_the_report(
    console: str, shadow: tuple[str, str, str], browser: Any, axe_source: str
) -> None:
    _, start, end = shadow
    analyst = Person(browser, console, axe_source)
    analyst.sign_in(ANALYST)
    page = analyst.visit("/ui/replay")
    assert page.inner_text("[data-testid=role]") == "analyst"
    page.select_option("#r-version", "sepsis:2")
    page.fill("#r-start", start)
    page.fill("#r-end", end)
    page.click("[data-testid=replay-form] button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/replay/r\d+-[0-9a-f]+$"))
    assert "replay of sepsis 2 started" in page.inner_text("[role=status]")
    # The job page reloads itself (a meta refresh, no script) until shadow reports the job finished.
    state = page.locator("[data-testid=replay-state]")
    for _ in range(240):  # bounded: a few seconds on an idle machine
        if state.inner_text() in ("done", "failed"):
            break
        page.wait_for_timeout(1000)
    analyst.check("09-replay-report")
    assert page.inner_text("[data-testid=replay-state]") == "done", page.inner_text("main")
    assert re.search(r"Read \d+ observations", page.inner_text("[data-testid=replay-counts]"))
    assert "sepsis 2 against live 1" in page.inner_text("main")
    assert page.locator("figure svg[aria-label^='ROC curves']").count() == 1
    job_url = page.url

    analyst.visit("/ui/replay", shot="08-replay")
    assert "ann-analyst" in page.inner_text("[data-testid=replay-jobs]")
    analyst.visit("/ui/audit?action=replay_requested")
    assert "ann-analyst" in page.inner_text("[data-testid=audit]")

    # Other roles see the form disabled with the reason, and cannot read the job either.
    approver = Person(browser, console, axe_source)
    approver.sign_in(APPROVER)
    page = approver.visit("/ui/replay")
    assert page.locator("[data-testid=replay-form] button[type=submit]").is_disabled()
    assert "may not replay" in page.inner_text("#why-replay")
    assert page.request.get(job_url).status == 403
    analyst.close()
    approver.close()
