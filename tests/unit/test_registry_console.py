"""The registry's console over FastAPI's TestClient and a real SQLite database (no Kafka, no browser).

Sessions and their cookie, CSRF on every form, idle expiry, roles and the four-eyes rule asked in advance and
enforced by the server, and pages that say so when evidence is missing. tests/e2e/test_console.py drives the
same pages in Chromium.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.pg import make_package
from vigil_contracts.events import Stage
from vigil_registry.app import create_app
from vigil_registry.auth import Principal
from vigil_registry.console.sessions import COOKIE, SessionStore
from vigil_registry.console.shadow import ShadowClient
from vigil_registry.core import Registry
from vigil_registry.settings import Settings

pytestmark = pytest.mark.unit

TOKENS = {
    "scientist-token-0123456789abcdef": {"user": "dana", "role": "data_scientist"},
    "approver-token-0123456789abcdefg": {"user": "dr-alice", "role": "clinical_approver"},
    "dual-scientist-0123456789abcdefg": {"user": "dr-carol", "role": "data_scientist"},
    "dual-approver-0123456789abcdefgh": {"user": "dr-carol", "role": "clinical_approver"},
    "viewer-token-0123456789abcdefghi": {"user": "vic", "role": "viewer"},
    "analyst-token-0123456789abcdefgh": {"user": "ann", "role": "analyst"},
}
SCI, APP, DUAL_SCI, DUAL_APP, VIEW, ANALYST = TOKENS
FEED = "ehr-feed-token-0123456789abcdefghij"


@pytest.fixture
def app_and_registry(tmp_path: Path) -> Iterator[tuple[Any, Registry]]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'console.db'}",
        artifact_root=tmp_path / "artifacts",
        tokens=TOKENS,
        kafka_enabled=False,
        development=False,
        # A stack caller (the EHR feed's token): valid for the service, but no registry role and no read scope.
        auth_tokens={FEED: {"user": "ehr-feed", "scopes": ["system/Observation.write"]}},
    )
    app = create_app(settings)
    with TestClient(app):  # runs the lifespan: migrations
        registry: Registry = app.state.registry
        registry.lifecycle.register_folder(Principal("dana", "data_scientist"), make_package(tmp_path, version="1"))
        registry.lifecycle.set_stage(Principal("dana", "data_scientist"), "sepsis", "1", Stage.SHADOW)
        yield app, registry


def client(app: Any, base_url: str = "http://testserver") -> TestClient:
    return TestClient(app, base_url=base_url, follow_redirects=False)


def form_csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "every form carries a CSRF token"
    return found.group(1)


def sign_in(c: TestClient, token: str) -> None:
    page = c.get("/ui/signin")
    answer = c.post("/ui/signin", data={"token": token, "csrf": form_csrf(page.text), "next": "/ui/models"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/models"


def test_anonymous_visits_go_to_sign_in_and_come_back(app_and_registry: tuple[Any, Registry]) -> None:
    c = client(app_and_registry[0])
    answer = c.get("/ui/models/sepsis")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/signin?next=/ui/models/sepsis"


def test_a_token_is_exchanged_for_a_strict_http_only_session_cookie(app_and_registry: tuple[Any, Registry]) -> None:
    c = client(app_and_registry[0])
    page = c.get("/ui/signin")
    answer = c.post("/ui/signin", data={"token": SCI, "csrf": form_csrf(page.text)})
    cookie = answer.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the TLS test below
    assert SCI not in cookie, "the token itself never reaches the browser"
    models = c.get("/ui/models")
    assert models.status_code == 200
    assert 'data-testid="who">dana<' in models.text and 'data-testid="role">data_scientist<' in models.text
    assert "default-src 'self'" in models.headers["content-security-policy"]


def test_the_cookie_is_secure_over_tls(app_and_registry: tuple[Any, Registry]) -> None:
    c = client(app_and_registry[0], base_url="https://testserver")
    page = c.get("/ui/signin")
    answer = c.post("/ui/signin", data={"token": SCI, "csrf": form_csrf(page.text)})
    assert "Secure" in answer.headers["set-cookie"]


def test_sign_in_refuses_a_missing_csrf_token_an_unknown_token_and_an_outside_next(
    app_and_registry: tuple[Any, Registry],
) -> None:
    c = client(app_and_registry[0])
    c.get("/ui/signin")
    assert c.post("/ui/signin", data={"token": SCI}).status_code == 403
    csrf = form_csrf(c.get("/ui/signin").text)
    unknown = c.post("/ui/signin", data={"token": "not-a-token-of-anyone-at-all", "csrf": csrf})
    assert unknown.status_code == 303 and "error=" in unknown.headers["location"]
    assert COOKIE not in unknown.headers.get("set-cookie", "")
    csrf = form_csrf(c.get("/ui/signin").text)
    no_read = c.post("/ui/signin", data={"token": FEED, "csrf": csrf})
    assert no_read.status_code == 303 and "may+not+read" in no_read.headers["location"]
    assert COOKIE not in no_read.headers.get("set-cookie", "")
    csrf = form_csrf(c.get("/ui/signin").text)
    outside = c.post("/ui/signin", data={"token": SCI, "csrf": csrf, "next": "//elsewhere.example/x"})
    assert outside.headers["location"] == "/ui/models"


def test_forms_without_their_csrf_token_are_refused_and_change_nothing(
    app_and_registry: tuple[Any, Registry],
) -> None:
    app, registry = app_and_registry
    c = client(app)
    sign_in(c, SCI)
    refused = c.post("/ui/models/sepsis/versions/1/propose", data={"reason": "forged"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    wrong = c.post("/ui/models/sepsis/versions/1/propose", data={"reason": "forged", "csrf": "guess"})
    assert wrong.status_code == 403
    assert registry.queries.proposals("sepsis") == []
    assert c.post("/ui/signout", data={}).status_code == 403


def test_roles_and_the_four_eyes_rule_are_shown_and_enforced(app_and_registry: tuple[Any, Registry]) -> None:
    app, registry = app_and_registry
    viewer = client(app)
    sign_in(viewer, VIEW)
    page = viewer.get("/ui/models/sepsis/versions/1")
    assert re.search(r'value="propose-for-production"\s+disabled', page.text)
    assert "role &#39;viewer&#39; may not propose" in page.text

    # dr-carol holds both roles: she proposes as a data scientist ...
    proposer = client(app)
    sign_in(proposer, DUAL_SCI)
    page = proposer.get("/ui/models/sepsis/versions/1")
    done = proposer.post("/ui/models/sepsis/versions/1/propose", data={"reason": "ready", "csrf": form_csrf(page.text)})
    assert done.status_code == 303 and done.headers["location"].endswith("/review")
    # ... and as a clinical approver her approve button says why it is disabled, and the server refuses it.
    approver = client(app)
    sign_in(approver, DUAL_APP)
    review = approver.get("/ui/models/sepsis/versions/1/review")
    assert re.search(r'value="approve"\s+disabled', review.text)
    assert "four-eyes rule: you proposed this version" in review.text
    refused = approver.post("/ui/models/sepsis/versions/1/approve", data={"csrf": form_csrf(review.text)})
    assert refused.status_code == 403 and "four-eyes" in refused.text
    assert registry.queries.proposals("sepsis")[0].status.value == "open"

    other = client(app)
    sign_in(other, APP)
    review = other.get("/ui/models/sepsis/versions/1/review")
    assert not re.search(r'value="approve"\s+disabled', review.text)
    ok = other.post("/ui/models/sepsis/versions/1/approve", data={"csrf": form_csrf(review.text), "reason": "fine"})
    assert ok.status_code == 303
    assert registry.queries.proposals("sepsis")[0].decided_by == "dr-alice"


def test_a_review_without_shadow_evidence_says_so(app_and_registry: tuple[Any, Registry]) -> None:
    c = client(app_and_registry[0])
    sign_in(c, APP)
    page = c.get("/ui/models/sepsis/versions/1/review")
    assert page.status_code == 200
    assert "Shadow has not published a comparison of this version yet" in page.text
    assert "<svg" not in page.text
    missing = c.get("/ui/models/unknown")
    assert missing.status_code == 404 and "<html" in missing.text and "unknown" in missing.text


def test_sign_out_ends_the_session(app_and_registry: tuple[Any, Registry]) -> None:
    c = client(app_and_registry[0])
    sign_in(c, SCI)
    page = c.get("/ui/models")
    assert c.post("/ui/signout", data={"csrf": form_csrf(page.text)}).status_code == 303
    assert c.get("/ui/models").status_code == 303


def test_idle_sessions_expire() -> None:
    now = [1000.0]
    store = SessionStore(idle_seconds=60.0, clock=lambda: now[0])
    sid, _ = store.open(Principal("dana", "data_scientist"))
    now[0] += 59.0
    assert store.get(sid) is not None  # a visit keeps it alive ...
    now[0] += 59.0
    assert store.get(sid) is not None
    now[0] += 61.0
    assert store.get(sid) is None  # ... idleness ends it
    assert store.get("forged") is None


# --- replay (shadow faked at the HTTP level: the console's own client talks to it) ------------------------


class FakeShadow:
    """Shadow's replay API as far as the console uses it; records the bearer token of each call."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.jobs: dict[str, dict[str, Any]] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.tokens.append(request.headers["authorization"].removeprefix("Bearer "))
        if request.method == "POST" and request.url.path == "/replays":
            body = json.loads(request.content)
            job = {"id": f"r{len(self.jobs)}-abcd", "state": "queued", "requested_by": "ann", **body}
            job.update(submitted_at="2026-01-03T00:00:00+00:00", error=None)
            self.jobs[job["id"]] = job
            return httpx.Response(202, json=job)
        if request.method == "GET" and request.url.path == "/replays":
            return httpx.Response(200, json={"replays": list(self.jobs.values())})
        job_id = request.url.path.rsplit("/", 1)[-1]
        if job_id not in self.jobs:
            return httpx.Response(404, json={"detail": f"no replay job {job_id}"})
        return httpx.Response(200, json=self.jobs[job_id])


@pytest.fixture
def shadow(app_and_registry: tuple[Any, Registry]) -> FakeShadow:
    fake = FakeShadow()
    app_and_registry[0].state.console_shadow = ShadowClient("http://shadow", transport=httpx.MockTransport(fake.handle))
    return fake


def test_an_analyst_starts_a_replay_as_themselves_and_reads_its_report(
    app_and_registry: tuple[Any, Registry], shadow: FakeShadow
) -> None:
    app, registry = app_and_registry
    c = client(app)
    sign_in(c, ANALYST)
    page = c.get("/ui/replay")
    assert page.status_code == 200 and "Start replay" in page.text and "not available to you" not in page.text
    form = {"csrf": form_csrf(page.text), "pick": "sepsis:1", "start": "2026-01-01T00:00", "end": "2026-01-02T00:00"}
    answer = c.post("/ui/replay", data=form)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/replay/r0-abcd"
    # Shadow was asked with the analyst's own token (shadow checks the person's role), over the chosen range.
    assert shadow.tokens == [ANALYST, ANALYST]  # the list of jobs on the page, then the start
    assert shadow.jobs["r0-abcd"]["from"] == "2026-01-01T00:00:00+00:00"
    running = c.get("/ui/replay/r0-abcd")
    assert 'http-equiv="refresh"' in running.text and "queued" in running.text
    report = {
        "replay": {},
        "counts": {"observations_read": 40, "warmup_events": 10, "scored_events": 30, "unreadable": 0, "scores": 30},
        "comparisons": [
            {
                "model_name": "sepsis",
                "candidate_version": "1",
                "live_version": "0",
                "scored_hours": 30,
                "labelled_hours": 30,
                "labelled_encounters": 3,
                "positive_encounters": 1,
                "shadow_hours": 24.0,
                "metrics": {"live": {"auroc": 0.7}, "candidate": {"auroc": 0.8}},
            }
        ],
    }
    shadow.jobs["r0-abcd"].update(state="done", report=report)
    done = c.get("/ui/replay/r0-abcd")
    assert 'http-equiv="refresh"' not in done.text
    assert "Read 40 observations" in done.text and "sepsis 1 against live 0" in done.text
    assert "r0-abcd" in c.get("/ui/replay").text  # the list of jobs links to it
    entry = registry.queries.audit_log("sepsis", "1")[-1]
    assert (entry.action, entry.actor, entry.role) == ("replay_requested", "ann", "analyst")
    assert c.get("/ui/replay/nope").status_code == 404


def test_other_roles_see_replay_disabled_and_are_refused(
    app_and_registry: tuple[Any, Registry], shadow: FakeShadow
) -> None:
    c = client(app_and_registry[0])
    sign_in(c, APP)
    page = c.get("/ui/replay")
    assert "Replay is not available to you: role &#39;clinical_approver&#39; may not replay" in page.text
    assert re.search(r"<button type=\"submit\" disabled[^>]*>Start replay", page.text)
    form = {"csrf": form_csrf(page.text), "pick": "sepsis:1", "start": "2026-01-01T00:00", "end": "2026-01-02T00:00"}
    assert c.post("/ui/replay", data=form).status_code == 403
    assert shadow.tokens == []  # shadow was never asked


def test_a_replay_form_without_its_csrf_token_is_refused(
    app_and_registry: tuple[Any, Registry], shadow: FakeShadow
) -> None:
    c = client(app_and_registry[0])
    sign_in(c, ANALYST)
    form = {"pick": "sepsis:1", "start": "2026-01-01T00:00", "end": "2026-01-02T00:00"}
    assert c.post("/ui/replay", data=form).status_code == 403
    assert shadow.tokens == []
