"""The frame every service shares: a FastStream broker for its Kafka side, FastAPI for HTTP.

A service provides its settings, its broker (with its subscribers declared) and its readiness checks; this
module adds ``/health`` (the process answers), ``/ready`` (every check passes: model loaded, database and broker
usable), ``/metrics`` (Prometheus) and a lifespan that creates the topics, starts the broker, and stops it
gracefully (in-flight batches finish and commit) on shutdown.

It also installs the service's authenticator (``vigil_runtime.auth``: routes declare what they need with
``Depends(requires(...))``; refusals become 401/403 with ``WWW-Authenticate`` and the reason) and serves
``/docs`` and ``/redoc`` from the Swagger UI and ReDoc assets of the pinned ``fastapi-offline`` package: no CDN,
so the pages work on a closed clinical network and load no unpinned third-party script.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.staticfiles import StaticFiles
from faststream import FastStream
from faststream.kafka import KafkaBroker
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from pydantic import BaseModel, Field
from starlette.routing import Router, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vigil_runtime import tracing
from vigil_runtime.auth import Authenticator, AuthError, build_authenticator, operations_access
from vigil_runtime.kafka import ensure_topics
from vigil_runtime.lag import ConsumerLag, consumers_assigned, grouped_subscribers
from vigil_runtime.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from vigil_runtime.replication import PRODUCER_ACKS, describe_replication, enforce, unsafe_replication
from vigil_runtime.responses import AUTH_RESPONSES, json_errors
from vigil_runtime.settings import VigilSettings
from vigil_runtime.shutdown import Step, stop_within

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], bool | Awaitable[bool]]
Hook = Callable[[], Awaitable[None]]


@dataclass
class ServiceRuntime:
    """What a running service is made of; built once by the service's ``bootstrap``."""

    name: str
    settings: VigilSettings
    broker: KafkaBroker | None
    metrics: ServiceMetrics
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    on_start: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)
    before_leaving: list[Hook] = field(default_factory=list)
    """Run at a stop before the consumers leave their groups: state handed over while still a member."""
    started: bool = False

    async def readiness(self) -> dict[str, bool]:
        """Run every readiness check; a check that raises counts as not ready."""
        results: dict[str, bool] = {"started": self.started}
        if self.broker is not None:
            try:
                results["broker"] = bool(await self.broker.ping(timeout=2.0))
            except Exception:
                results["broker"] = False
            if grouped_subscribers(self.broker):
                # A consumer service can do its job once its group gave it partitions (or none, when idle).
                results["consumers_assigned"] = self.started and consumers_assigned(self.broker)
        for name, check in self.checks.items():
            try:
                value = check()
                results[name] = bool(await value) if inspect.isawaitable(value) else bool(value)
            except Exception:
                results[name] = False
        self.metrics.ready.labels(self.name).set(1 if all(results.values()) else 0)
        return results

    def stream(self) -> FastStream:
        """The FastStream application (used for the AsyncAPI document)."""
        if self.broker is None:
            raise RuntimeError(f"{self.name} has no Kafka side")
        return FastStream(self.broker)


class Health(BaseModel):
    """The process answers."""

    status: str = Field(examples=["ok"])
    service: str = Field(examples=["scorer"])


class Readiness(BaseModel):
    """Whether the service can do its job, and each check's result."""

    ready: bool
    service: str = Field(examples=["scorer"])
    checks: dict[str, bool] = Field(examples=[{"started": True, "broker": True}])


READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Every check passes"},
    503: {"model": Readiness, "description": "A check fails (``checks`` says which)"},
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
"""``/metrics`` is Prometheus text, not JSON (the document must not promise ``application/json``)."""


DOCS_ASSETS = "/docs-assets"
"""Where the Swagger UI and ReDoc files of ``fastapi_offline`` are served."""


def build_http_app(
    runtime: ServiceRuntime,
    *,
    title: str,
    description: str = "",
    version: str = "0.1.0",
    authenticator: Authenticator | None = None,
) -> FastAPI:
    """A FastAPI app with the standard endpoints whose lifespan runs the service's broker and hooks.

    ``authenticator`` defaults to the one the settings describe (``VigilSettings.auth()``).
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if runtime.broker is not None:
            runtime.settings.kafka.check()  # incomplete credentials fail here, clearly, not as a retry loop
            await _retry(lambda: ensure_topics(runtime.settings), what="create topics")
            # Retried while the broker comes up; the verdict itself is not retried: an unsafe cluster stays unsafe.
            brokers, topics = await _retry(lambda: describe_replication(runtime.settings), what="describe replication")
            problems = unsafe_replication(brokers, topics, acks=PRODUCER_ACKS)
            enforce(problems, development=runtime.settings.development, service=runtime.name)
        for hook in runtime.on_start:
            await hook()
        lag = ConsumerLag(runtime.broker, runtime.metrics) if runtime.broker is not None else None
        if runtime.broker is not None:
            await runtime.broker.start()
        if lag is not None:
            lag.start()
        runtime.started = True
        log.info("service started", extra={"service": runtime.name, "port": runtime.settings.http_port})
        try:
            yield
        finally:
            runtime.started = False
            steps: list[Step] = []
            if lag is not None:
                steps.append(("consumer lag", lag.stop))
            steps.extend((getattr(hook, "__qualname__", "hook"), hook) for hook in runtime.before_leaving)
            if runtime.broker is not None:
                steps.append(("broker", runtime.broker.stop))  # in-flight batches finish (FastStream's graceful bound)
            steps.extend((getattr(hook, "__qualname__", "hook"), hook) for hook in runtime.on_stop)
            failed = await stop_within(steps, budget_s=runtime.settings.stop_timeout_s, service=runtime.name)
            log.info("service stopped", extra={"service": runtime.name, "count": len(failed)})

    app = FastAPI(
        title=title, description=description, version=version, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.runtime = runtime
    app.state.auth = authenticator or build_authenticator(runtime.settings.auth())
    _offline_docs(app, title)
    tracing.configure(
        runtime.name, exporter=runtime.settings.tracing_exporter, endpoint=runtime.settings.tracing_endpoint
    )
    app.add_middleware(HttpFrame, metrics=runtime.metrics, routes=app.router)

    @app.exception_handler(AuthError)
    async def refused(_: Request, error: AuthError) -> JSONResponse:
        return JSONResponse(
            {"detail": error.reason}, status_code=error.status, headers={"WWW-Authenticate": error.www_authenticate()}
        )

    operations = [Depends(operations_access)]

    # Operations routes are open unless the service protects them (then 401/403 like any other route).
    @app.get(
        "/health",
        tags=["operations"],
        summary="The process is alive",
        dependencies=operations,
        responses=AUTH_RESPONSES,
    )
    async def health() -> Health:
        return Health(status="ok", service=runtime.name)

    @app.get(
        "/ready",
        tags=["operations"],
        summary="Model, database and broker usable",
        dependencies=operations,
        response_class=JSONResponse,
        responses={**READY_RESPONSES, **AUTH_RESPONSES},
    )
    async def ready() -> JSONResponse:
        checks = await runtime.readiness()
        ok = all(checks.values())
        body = Readiness(ready=ok, service=runtime.name, checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        dependencies=operations,
        response_class=PlainTextResponse,
        responses={**METRICS_RESPONSES, **json_errors(401, 403)},
    )
    async def metrics() -> Response:
        return Response(runtime.metrics.expose(), media_type=CONTENT_TYPE_LATEST)

    return app


def _offline_docs(app: FastAPI, title: str) -> None:
    """``/docs`` and ``/redoc`` with their scripts and styles served by this process (no CDN, no web fonts)."""
    assets = files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


class HttpFrame:
    """ASGI middleware, one per app: each HTTP request's correlation id and trace, its 405, its metrics.

    One pure-ASGI layer instead of three stacked ones (a correlation/trace layer, a metrics layer, a 405 layer): each
    layer was a coroutine call and a wrapped ``send`` per request, measured in the single-resource ingest benchmark.
    In the order the three ran in, outermost first:

    **Request context.** The correlation id is the client's ``X-Correlation-ID`` when it is well formed (else a new
    random one) and is returned in the response's ``X-Correlation-ID``; the trace continues the client's
    ``traceparent``. With tracing on, the request is a SERVER span named by its route template; the Kafka messages it
    publishes are children of it (``vigil_runtime.tracing``).

    **Metrics** (when ``metrics`` is given). Every HTTP request counted by route template, method and status, with
    its latency. The route is the matched template (``/models/{name}/versions/{version}``), read from the scope after
    routing; a path no route matches counts as ``unmatched``, so a scan of random paths cannot grow the label set.
    The 405s below and the refusals of authentication are counted like any other answer.

    **Method not allowed** (when ``routes`` is given). 405 with ``Allow`` for a method the documented routes at a path
    do not take. Starlette answers 405 itself only where no route at all takes the request; an undocumented catch-all
    (ingest's FHIR aliases at the root, ``/{resource_type}/{resource_id}``) takes ``PUT /fhir/metadata`` too, and its
    authentication answered 401. The documented routes decide here, before any route's dependencies (the
    authentication) run, and ``Allow`` lists every method they take at the path (Starlette names the first route's
    only). As in OpenAPI, a concrete path wins over a templated one that matches it too: ``/fhir/metadata`` takes GET
    only, not ``/fhir/{resource_type}``'s POST. A path no documented route matches goes on to the router unchanged.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics | None = None, routes: Router | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self._documented: _Documented | None = None

    def documented(self) -> _Documented:
        """The documented routes: methods by concrete path, and each templated path's pattern and methods.

        Read at the first request: the services include their routers after the frame is built.
        """
        if self._documented is None:
            concrete: dict[str, frozenset[str]] = {}
            templated: list[tuple[re.Pattern[str], frozenset[str]]] = []
            routes = iter_route_contexts(self.routes.routes) if self.routes is not None else ()
            for route in routes:
                if not (isinstance(route.original_route, APIRoute) and route.include_in_schema and route.path):
                    continue
                methods = frozenset(route.methods or ())
                if "{" in route.path:
                    templated.append((compile_path(route.path)[0], methods))
                else:
                    # compile_path's pattern of a concrete path matches that path alone: a lookup does the same.
                    concrete[route.path] = concrete.get(route.path, frozenset()) | methods
            self._documented = _Documented(concrete, templated)
        return self._documented

    def allowed(self, path: str, method: str) -> list[str] | None:
        """The methods the documented routes take at ``path`` when none takes ``method`` (else None)."""
        documented = self.documented()
        methods = documented.concrete.get(path)
        if methods is None:  # no concrete route here: the templated ones that match decide
            allow: set[str] = set()
            for pattern, taken in documented.templated:
                if pattern.match(path):
                    if method in taken:
                        return None
                    allow |= taken
            return sorted(allow) or None
        return None if method in methods else sorted(methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        correlation = traceparent = None
        for name, value in scope["headers"]:
            if name == b"x-correlation-id":
                correlation = value
            elif name == b"traceparent":
                traceparent = value
        correlation = tracing.valid_correlation_id(correlation) or tracing.new_correlation_id()
        traceparent = tracing.valid_traceparent(traceparent)
        span = None
        if tracing.enabled():
            parent = tracing.Origin(correlation, traceparent) if traceparent else None
            span = tracing.start_span(method, SpanKind.SERVER, parent=parent)  # renamed by route at the end
            origin = tracing.Origin(correlation, tracing.traceparent_of(span), set_span_in_context(span))
        else:
            origin = tracing.Origin(correlation, traceparent or tracing.new_traceparent())
        status = 500  # an exception before the response starts is answered 500 by the server
        correlation_header = (b"x-correlation-id", correlation)

        async def framed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), correlation_header]
            await send(message)

        error: BaseException | None = None
        try:
            with tracing.within(origin):
                allow = self.allowed(scope["path"], method) if self.routes is not None else None
                if allow is None:
                    await self.app(scope, receive, framed_send)
                else:
                    refused = JSONResponse(
                        {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allow)}
                    )
                    await refused(scope, receive, framed_send)
        except BaseException as raised:
            error = raised
            raise
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if self.metrics is not None:
                self.metrics.http_request(route, method, status, time.perf_counter() - started)
            if span is not None:
                # Named by the route template, never the path: paths hold resource ids.
                span.update_name(f"{method} {route}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if error is not None or status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()


@dataclass(frozen=True)
class _Documented:
    """What :class:`HttpFrame` answers 405 from: methods by concrete path, templated paths' patterns and methods."""

    concrete: dict[str, frozenset[str]]
    templated: list[tuple[re.Pattern[str], frozenset[str]]]


async def _retry(action: Callable[[], Awaitable[Any]], *, what: str, attempts: int = 30, delay: float = 1.0) -> Any:
    """Bounded retries while the broker comes up (services may start before it answers)."""
    for attempt in range(1, attempts + 1):
        try:
            return await action()
        except Exception as error:
            if attempt == attempts:
                raise
            log.warning("retrying", extra={"reason": what, "attempt": attempt, "error_type": type(error).__name__})
            await asyncio.sleep(delay)
    return None


def serve(app: FastAPI, settings: VigilSettings) -> None:
    """Run the app under uvicorn until SIGINT or SIGTERM (graceful: the lifespan stops the broker), bounded in time.

    In-flight HTTP requests get :data:`HTTP_DRAIN_S` to finish, the lifespan's steps ``stop_timeout_s``
    (``vigil_runtime.shutdown``); a process still alive :data:`EXIT_GRACE_S` after both (a thread joined at exit,
    anything outside the steps) writes every thread's stack to stderr and exits with status 1, rather than waiting
    for a SIGKILL that says nothing of where it hung (or, outside Kubernetes, for ever).
    """
    import faulthandler

    import uvicorn

    class BoundedServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            faulthandler.dump_traceback_later(HTTP_DRAIN_S + settings.stop_timeout_s + EXIT_GRACE_S, exit=True)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(HTTP_DRAIN_S),
    )
    BoundedServer(config).run()


HTTP_DRAIN_S = 5.0
"""How long a stopping service lets in-flight HTTP requests finish (a post refused by the cut is retried by its
sender: nothing of it counts as accepted before its 2xx)."""
EXIT_GRACE_S = 3.0
"""What a stopping process may take beyond its HTTP drain and its steps' budget before it dumps and exits."""
