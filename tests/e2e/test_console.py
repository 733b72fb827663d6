"""The console in Debian's Chromium (Playwright driving /usr/bin/chromium): the people who decide, end to end.

The registry app runs alone (no Kafka) on a real SQLite database seeded by tests/console_seed.py, served by
uvicorn on a free port. A data scientist proposes; the proposer's approve is refused; a form without its CSRF
token is refused; a clinical approver reads the evidence, approves and promotes; the promotion shows on the
model page and in the audit trail. Every page is checked with axe-core (no serious or critical violation) and
for requests to any other host, and screenshotted (into docs/console/ when VIGIL_CONSOLE_SCREENSHOTS=1).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
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
}
SCIENTIST, APPROVER = list(TOKENS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The registry app with its console, over a seeded SQLite database; yields its base URL."""
    root = tmp_path_factory.mktemp("console")
    url = f"sqlite:///{root / 'registry.db'}"
    seed(url, root / "artifacts").engine.dispose()
    port = _free_port()
    settings = Settings(
        database_url=url,
        artifact_root=root / "artifacts",
        kafka_enabled=False,
        http_port=port,
        tokens=TOKENS,
        development=False,
    )
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):  # bounded wait for the socket, not a sleep-and-hope
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "the registry app did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


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

    approver.visit("/ui/replay?pick=sepsis:2&start=2026-01-01T00:00&end=2026-01-02T00:00", shot="08-replay")
    assert "--model sepsis:2 --from 2026-01-01T00:00" in page.inner_text("[data-testid=replay-command]")

    # Sign-out ends the session: the next visit is sent to sign in again.
    page.click("header form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/signin$"))
    page.goto(console + "/ui/models")
    assert "/ui/signin" in page.url
    scientist.close()
    approver.close()
