"""The console's pages and forms.

Pages read through the registry core's query functions; forms call its command functions as the signed-in
principal, so the server enforces roles and the four-eyes rule exactly as for the REST API. A page also says,
before anyone clicks, what the signed-in role may not do and why (the same rule, asked in advance).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from sqlmodel import col, select

from vigil_contracts.events import Stage
from vigil_registry.audit import parse_evidence
from vigil_registry.auth import Principal, require
from vigil_registry.console import plots
from vigil_registry.console.sessions import COOKIE, PRE_COOKIE, ConsoleSession, SessionStore
from vigil_registry.console.shadow import ShadowClient, ShadowUnavailable
from vigil_registry.core import Registry
from vigil_registry.errors import Forbidden, RegistryError
from vigil_registry.models import AlertRecord, ProposalPublic, ProposalStatus
from vigil_runtime.auth import Authenticator, AuthError, same_person

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


class ConsoleRoute(APIRoute):
    """A console route answers the registry's refusals (unknown model, forbidden move...) with a page, not JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RegistryError as error:
                session = _sessions(request).get(request.cookies.get(COOKIE))
                return render(request, session, "error.html", status=error.status, reason=error.reason)

        return handle


router = APIRouter(prefix="/ui", include_in_schema=False, route_class=ConsoleRoute)

SECURITY_HEADERS = {
    # Only this server's own files may load (closed networks; and an injected script from elsewhere cannot run).
    # Inline styles are allowed for the SVG plots matplotlib writes; no inline script is.
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

STAGE_ORDER = [Stage.PRODUCTION, Stage.SHADOW, Stage.REGISTERED, Stage.ARCHIVED, Stage.RETIRED]


class Refused(Exception):
    """A console request the server refuses (a form without its CSRF token): shown as a page with the status."""

    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


async def refused(request: Request, error: Refused) -> Response:
    """The refusal as a page (the person may not be signed in any more)."""
    session = _sessions(request).get(request.cookies.get(COOKIE))
    return render(request, session, "error.html", status=error.status, reason=error.reason)


class SignInRequired(Exception):
    """No live session: the browser is sent to the sign-in page (and back afterwards)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


async def sign_in_required(_: Request, error: SignInRequired) -> Response:
    """Redirect to sign-in, remembering where the person was going."""
    return RedirectResponse(f"/ui/signin?next={quote(error.next_path)}", status_code=303)


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def _sessions(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.console_sessions
    return store


def current_session(request: Request) -> ConsoleSession:
    """The signed-in person's session, or a redirect to sign in."""
    session = _sessions(request).get(request.cookies.get(COOKIE))
    if session is None:
        raise SignInRequired(request.url.path)
    return session


async def checked_session(request: Request) -> ConsoleSession:
    """For forms: the session, and its CSRF token checked (a form without it is refused, 403)."""
    session = current_session(request)
    form = await request.form()
    given = form.get("csrf")
    if not session.csrf_ok(given if isinstance(given, str) else None):
        raise Refused("the form's CSRF token is missing or wrong: reload the page and try again")
    return session


SessionDep = Annotated[ConsoleSession, Depends(current_session)]
FormSessionDep = Annotated[ConsoleSession, Depends(checked_session)]
RegistryDep = Annotated[Registry, Depends(_registry)]


def refusal(principal: Principal, action: str) -> str | None:
    """Why ``principal`` may not perform ``action`` (the registry's own rule), or None when it may."""
    try:
        require(principal, action)
    except Forbidden as error:
        return error.reason
    return None


def render(request: Request, session: ConsoleSession | None, name: str, status: int = 200, **context: Any) -> Response:
    """A page with who is signed in, their CSRF token for forms and a pending notice."""
    notice = ""
    if session is not None:
        notice, session.notice = session.notice, ""
    response = templates.TemplateResponse(
        request,
        name,
        {"session": session, "user": session.principal if session else None, "notice": notice, **context},
        status_code=status,
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


# --- sign-in ---------------------------------------------------------------------------------------


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request, next: str = "/ui/models", error: str = "") -> Response:
    """The sign-in form (a double-submit cookie stands in for the CSRF token of a session not yet open)."""
    pre = secrets.token_urlsafe(32)
    response = render(request, None, "signin.html", next=_safe_next(next), csrf=pre, error=error)
    response.set_cookie(
        PRE_COOKIE, pre, httponly=True, samesite="strict", secure=_secure(request), path="/ui", max_age=900
    )
    return response


def _safe_next(path: str) -> str:
    """Only paths inside the console: a sign-in link cannot send a person elsewhere."""
    return path if path.startswith("/ui/") and not path.startswith("//") else "/ui/models"


@router.post("/signin")
def signin(
    request: Request,
    token: Annotated[str, Form()],
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/ui/models",
) -> Response:
    """Exchange a registry token for a session."""
    pre = request.cookies.get(PRE_COOKIE, "")
    if not pre or not secrets.compare_digest(pre.encode(), csrf.encode()):
        raise Refused("the sign-in form's CSRF token is missing or wrong: reload the page and try again")
    authenticator: Authenticator = request.app.state.auth
    try:
        principal = authenticator.authenticate(f"Bearer {token}")
    except AuthError:
        return RedirectResponse("/ui/signin?error=unknown+token", status_code=303)
    if refusal(principal, "read") is not None:
        return RedirectResponse("/ui/signin?error=this+identity+may+not+read+the+registry", status_code=303)
    sid, _ = _sessions(request).open(principal, token)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", secure=_secure(request), path="/ui")
    response.delete_cookie(PRE_COOKIE, path="/ui")
    return response


@router.post("/signout")
def signout(request: Request, session: FormSessionDep) -> Response:
    """Forget the session."""
    _sessions(request).close(request.cookies.get(COOKIE))
    response = RedirectResponse("/ui/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.get("")
@router.get("/")
def home() -> Response:
    """The models page is the console's front page."""
    return RedirectResponse("/ui/models", status_code=303)


# --- models and versions ---------------------------------------------------------------------------


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, session: SessionDep, registry: RegistryDep) -> Response:
    """Every model, its production version and its versions by stage."""
    models = registry.queries.list_models()
    rows = [
        {
            "model": m,
            "by_stage": _by_stage(m.versions),
            "awaiting": [p.version for p in registry.queries.proposals(m.name) if p.status == ProposalStatus.OPEN],
        }
        for m in models
    ]
    return render(request, session, "models.html", rows=rows, stages=STAGE_ORDER)


def _by_stage(versions: dict[str, Stage]) -> dict[Stage, list[str]]:
    out: dict[Stage, list[str]] = {s: [] for s in STAGE_ORDER}
    for version, stage in versions.items():
        out[stage].append(version)
    return out


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(request: Request, name: str, session: SessionDep, registry: RegistryDep) -> Response:
    """One model: its production version, versions by stage, proposals and lifecycle timeline."""
    model = registry.queries.show_model(name)
    versions = registry.queries.list_versions(name)
    timeline = list(reversed(registry.queries.audit_log(name)))
    return render(
        request,
        session,
        "model.html",
        model=model,
        versions=versions,
        by_stage=_by_stage(model.versions),
        stages=STAGE_ORDER,
        proposals=registry.queries.proposals(name),
        timeline=timeline,
    )


@router.get("/models/{name}/versions/{version}", response_class=HTMLResponse)
def version_page(request: Request, name: str, version: str, session: SessionDep, registry: RegistryDep) -> Response:
    """A version's model card, lineage and package digests, and what may be done with it."""
    public = registry.queries.get_version(name, version)
    proposal = _proposal(registry, name, version)
    propose_refusal = refusal(session.principal, "propose")
    if propose_refusal is None and public.stage != Stage.SHADOW:
        propose_refusal = f"only a shadow version can be proposed; this one is {public.stage.value}"
    if propose_refusal is None and proposal is not None:
        propose_refusal = f"it already has a proposal ({proposal.status.value})"
    return render(
        request,
        session,
        "version.html",
        v=public,
        card=public.card,
        proposal=proposal,
        propose_refusal=propose_refusal,
    )


def _proposal(registry: Registry, name: str, version: str) -> ProposalPublic | None:
    """The version's proposal still in play (open or approved), if any."""
    live = {ProposalStatus.OPEN, ProposalStatus.APPROVED}
    return next((p for p in registry.queries.proposals(name) if p.version == version and p.status in live), None)


@router.get("/models/{name}/versions/{version}/review", response_class=HTMLResponse)
def review_page(request: Request, name: str, version: str, session: SessionDep, registry: RegistryDep) -> Response:
    """The policy's report and the shadow comparison, as a clinical approver reads them; approve or reject."""
    public = registry.queries.get_version(name, version)
    report = registry.queries.eligibility(name, version)
    history = registry.queries.history(name, version)
    comparison = history["comparisons"][-1] if history["comparisons"] else None
    metrics: dict[str, Any] = (comparison or {}).get("metrics") or {}
    curves = metrics.get("curves")
    aurocs = {who: (metrics.get(who) or {}).get("auroc") for who in ("live", "candidate")}
    proposal = _proposal(registry, name, version)
    return render(
        request,
        session,
        "review.html",
        v=public,
        report=report,
        comparison=comparison,
        metrics=metrics,
        roc_svg=plots.roc(curves, aurocs),
        reliability_svg=plots.reliability(curves),
        proposal=proposal,
        refusals=_decision_refusals(session.principal, public.stage, proposal, report.eligible),
    )


def _decision_refusals(
    principal: Principal, stage: Stage, proposal: ProposalPublic | None, eligible: bool
) -> dict[str, str | None]:
    """Why each decision button is disabled for this person now (None: enabled); the server checks again."""
    out: dict[str, str | None] = {}
    for action in ("approve", "reject"):
        why = refusal(principal, action)
        if why is None and (proposal is None or proposal.status != ProposalStatus.OPEN):
            why = "there is no open proposal to decide on"
        if proposal is not None and same_person(proposal.proposed_by, principal.user):
            rule = "four-eyes rule: you proposed this version, so someone else must decide"
            why = f"{why}; {rule}" if why else rule
        out[action] = why
    why = refusal(principal, "promote")
    if why is None and stage != Stage.SHADOW:
        why = f"only a shadow version can be promoted; this one is {stage.value}"
    if why is None and (proposal is None or proposal.status != ProposalStatus.APPROVED):
        why = "promotion needs a proposal approved by a clinical approver"
    if why is None and not eligible:
        why = "the policy's criteria are not all met (see the report)"
    out["promote"] = why
    return out


async def _decide(request: Request, session: ConsoleSession, done: str, call: Any, *args: Any) -> Response:
    """Run a registry command as the signed-in person; show its refusal as a page with the same status."""
    try:
        await run_in_threadpool(call, session.principal, *args)
    except RegistryError as error:
        return render(request, session, "error.html", status=error.status, reason=error.reason)
    session.notice = done
    return RedirectResponse(request.url.path.rsplit("/", 1)[0] + "/review", status_code=303)


def _decision_route(action: str, done: str, doc: str) -> None:
    """One decision form's route (propose, approve, reject, promote): they differ only in the command and notice."""

    async def decide(
        request: Request,
        name: str,
        version: str,
        session: FormSessionDep,
        registry: RegistryDep,
        reason: Annotated[str, Form()] = "",
    ) -> Response:
        return await _decide(
            request, session, f"{name} {version} {done}", getattr(registry.lifecycle, action), name, version, reason
        )

    decide.__doc__ = doc
    router.post(f"/models/{{name}}/versions/{{version}}/{action}", name=f"console_{action}")(decide)


_decision_route("propose", "proposed for production", "A data scientist proposes a shadow version for production.")
_decision_route("approve", "approved", "A clinical approver (not the proposer) approves.")
_decision_route("reject", "rejected", "A clinical approver rejects, with a reason.")
_decision_route("promote", "promoted to production", "Promote an approved, eligible candidate.")


# --- monitoring, audit, replay ---------------------------------------------------------------------


def _alerts(registry: Registry) -> list[AlertRecord]:
    """Every alert the registry received, oldest first (a read of the evidence table, no new core query)."""
    with registry.session() as db:
        return list(db.exec(select(AlertRecord).order_by(col(AlertRecord.occurred_at), col(AlertRecord.id))).all())


@router.get("/monitoring", response_class=HTMLResponse)
def monitoring_page(request: Request, session: SessionDep, registry: RegistryDep) -> Response:
    """Drift and performance alerts per feature and detector: latest state, value, threshold, sparkline."""
    series: dict[str, list[AlertRecord]] = {}
    for record in _alerts(registry):
        series.setdefault(record.alert_key, []).append(record)
    rows = []
    for key, records in series.items():
        last = records[-1]
        payload = last.payload
        rows.append(
            {
                "key": key,
                "record": last,
                "feature": payload.get("feature") or payload.get("metric") or "",
                "detector": (payload.get("evidence") or {}).get("detector", last.kind),
                "value": payload.get("value"),
                "threshold": payload.get("threshold"),
                "window": payload.get("window", ""),
                "spark": plots.sparkline(
                    [r.payload.get("value") for r in records], payload.get("threshold"), f"values of {key}"
                ),
                "count": len(records),
            }
        )
    open_rows = [r for r in rows if r["record"].state == "open"]
    resolved = [r for r in rows if r["record"].state != "open"]
    return render(request, session, "monitoring.html", open_rows=open_rows, resolved=resolved)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    session: SessionDep,
    registry: RegistryDep,
    model: str = "",
    version: str = "",
    actor: str = "",
    action: str = "",
) -> Response:
    """The audit trail, filtered, and the hash chain's verification."""
    entries = registry.queries.audit_log(model or None, version or None)
    actions = sorted({e.action for e in entries})
    if actor:
        entries = [e for e in entries if e.actor == actor]
    if action:
        entries = [e for e in entries if e.action == action]
    rows = [{"entry": e, "evidence": parse_evidence(e)} for e in reversed(entries)]
    return render(
        request,
        session,
        "audit.html",
        rows=rows,
        verification=registry.queries.verify_audit().as_dict(),
        filters={"model": model, "version": version, "actor": actor, "action": action},
        actions=actions,
    )


def _shadow(request: Request) -> ShadowClient | None:
    client: ShadowClient | None = request.app.state.console_shadow
    return client


def _replay_refusal(request: Request, principal: Principal) -> str | None:
    """Why this person cannot replay from the console (the registry's rule; shadow checks it again)."""
    why = refusal(principal, "replay")
    if why is None and _shadow(request) is None:
        why = "this registry has no shadow service configured (REGISTRY_SHADOW_URL)"
    return why


def _utc(value: str) -> datetime:
    """A form's ``datetime-local`` value (or ISO 8601), read as UTC when it has no offset."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/replay", response_class=HTMLResponse)
async def replay_page(
    request: Request, session: SessionDep, registry: RegistryDep, pick: str = "", start: str = "", end: str = ""
) -> Response:
    """Replay: pick a version and a range; an analyst starts it in shadow and reads the report here."""
    choices = [(m.name, v) for m in registry.queries.list_models() for v in m.versions]
    model, _, version = pick.partition(":")
    if (model, version) not in choices:
        model = version = ""
    why = _replay_refusal(request, session.principal)
    jobs: list[dict[str, Any]] = []
    jobs_error = ""
    client = _shadow(request)
    if why is None and client is not None:
        try:
            jobs = await client.jobs(session.token)
        except ShadowUnavailable as error:
            jobs_error = error.reason
    return render(
        request,
        session,
        "replay.html",
        choices=choices,
        chosen={"model": model, "version": version, "start": start, "end": end},
        refusal=why,
        jobs=jobs,
        jobs_error=jobs_error,
    )


@router.post("/replay")
async def start_replay(
    request: Request,
    session: FormSessionDep,
    registry: RegistryDep,
    pick: Annotated[str, Form()],
    start: Annotated[str, Form()],
    end: Annotated[str, Form()],
) -> Response:
    """Start a replay in shadow as the signed-in analyst, record it in the audit trail, go to the job's page."""
    why = _replay_refusal(request, session.principal)
    if why is not None:
        return render(request, session, "error.html", status=403, reason=why)
    model, _, version = pick.partition(":")
    registry.queries.get_version(model, version)  # an unknown version is a 404 page before shadow is asked
    try:
        start_at, end_at = _utc(start), _utc(end)
    except ValueError:
        return render(request, session, "error.html", status=422, reason="give the range as dates and times")
    client = _shadow(request)
    assert client is not None
    try:
        job = await client.start(session.token, model=model, version=version, start=start_at, end=end_at)
    except ShadowUnavailable as error:
        return render(request, session, "error.html", status=error.status, reason=error.reason)
    await run_in_threadpool(
        registry.lifecycle.note_replay, session.principal, model, version, job_id=job["id"], start=start_at, end=end_at
    )
    session.notice = f"replay of {model} {version} started"
    return RedirectResponse(f"/ui/replay/{quote(job['id'], safe='')}", status_code=303)


@router.get("/replay/{job_id}", response_class=HTMLResponse)
async def replay_job_page(request: Request, job_id: str, session: SessionDep) -> Response:
    """A replay job: its state (the page refreshes itself, no script, until done) and then its report."""
    why = _replay_refusal(request, session.principal)
    if why is not None:
        return render(request, session, "error.html", status=403, reason=why)
    client = _shadow(request)
    assert client is not None
    try:
        job = await client.job(session.token, job_id)
    except ShadowUnavailable as error:
        return render(request, session, "error.html", status=error.status, reason=error.reason)
    comparisons = []
    for c in (job.get("report") or {}).get("comparisons", []):
        metrics = c.get("metrics") or {}
        aurocs = {who: (metrics.get(who) or {}).get("auroc") for who in ("live", "candidate")}
        comparisons.append(
            {
                "c": c,
                "metrics": metrics,
                "roc_svg": plots.roc(metrics.get("curves"), aurocs),
                "reliability_svg": plots.reliability(metrics.get("curves")),
            }
        )
    return render(request, session, "replay_job.html", job=job, comparisons=comparisons)
