"""The registry service: FastAPI for its REST API, FastStream for its Kafka side (both optional in tests).

``bootstrap`` wires the engine, the artifact store, the core, the consumer and the outbox relay once, from the
settings; ``create_app`` adds the routes. Start-up runs the Alembic migrations, then the relay and the broker.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from vigil_contracts.events import ModelLifecycleChanged
from vigil_registry.api.routes import audits, models, proposals
from vigil_registry.artifacts import ArtifactStore
from vigil_registry.auth import grants
from vigil_registry.console import mount_console
from vigil_registry.consumer import EvidenceHandler, subscribe
from vigil_registry.core import Registry
from vigil_registry.db import make_engine, migrate
from vigil_registry.errors import NotEligible, RegistryError, Unauthorized
from vigil_registry.outbox import OutboxRelay
from vigil_registry.settings import Settings
from vigil_runtime.auth import build_authenticator
from vigil_runtime.kafka import DeadLetters, make_broker
from vigil_runtime.metrics import ServiceMetrics
from vigil_runtime.producer import AckedProducer
from vigil_runtime.provenance import LifecycleSigner, ensure_signing_key
from vigil_runtime.service import ServiceRuntime, build_http_app

SERVICE = "registry"
log = logging.getLogger(__name__)


@dataclass
class Wiring:
    """Everything ``bootstrap`` built (tests reach the parts through it)."""

    settings: Settings
    runtime: ServiceRuntime
    registry: Registry
    relay: OutboxRelay | None
    handler: EvidenceHandler | None


def bootstrap(settings: Settings) -> Wiring:
    """Wire the database, store, core, and (when Kafka is enabled) consumer and outbox relay."""
    engine = make_engine(settings.database_url)
    store = ArtifactStore(settings.artifact_root)
    relay_box: list[OutboxRelay] = []

    def notify() -> None:
        if relay_box:
            relay_box[0].wake()

    registry = Registry(
        engine,
        store,
        artifact_url=settings.artifact_url,
        notify=notify,
        max_upload_bytes=settings.max_upload_bytes,
    )
    metrics = ServiceMetrics(SERVICE)
    broker = make_broker(settings, client_id=f"vigil-{SERVICE}") if settings.kafka_enabled else None
    runtime = ServiceRuntime(name=SERVICE, settings=settings, broker=broker, metrics=metrics)

    def database_ready() -> bool:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True

    runtime.checks["database"] = database_ready

    async def run_migrations() -> None:
        if settings.migrate_on_start:
            await asyncio.to_thread(migrate, settings.database_url)

    runtime.on_start.append(run_migrations)
    relay: OutboxRelay | None = None
    handler: EvidenceHandler | None = None
    if broker is not None:
        publisher = AckedProducer(settings.kafka, client_id=f"vigil-{SERVICE}-out")
        dead_letters = DeadLetters(publisher, settings.topics.dead_letter, service=SERVICE)
        handler = subscribe(broker, settings, registry, dead_letters, metrics)
        relay = OutboxRelay(
            registry.outbox,
            publisher,
            settings.topics.lifecycle,
            signer=LifecycleSigner(ensure_signing_key(settings.signing_key_file)),
            poll_seconds=settings.outbox_poll_seconds,
            ready=lambda: runtime.started,
            metrics=metrics,
        )
        # Declared for the AsyncAPI document only: the relay publishes through the AckedProducer.
        broker.publisher(
            settings.topics.lifecycle,
            title="models.lifecycle",
            description=(
                "ModelLifecycleChanged for every registry decision, keyed by model name (from the outbox), "
                "signed with the registry's Ed25519 key (signature and signing_key_id fields)."
            ),
            schema=ModelLifecycleChanged,
        )
        relay_box.append(relay)
        # The producer starts before the relay and stops after it (the relay's last drain still publishes).
        runtime.on_start.extend([publisher.start, relay.start])
        runtime.on_stop.extend([relay.stop, publisher.stop])
        runtime.checks["producer"] = lambda: publisher.started

    async def dispose() -> None:
        engine.dispose()

    runtime.on_stop.append(dispose)
    return Wiring(settings=settings, runtime=runtime, registry=registry, relay=relay, handler=handler)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The registry's HTTP app (OpenAPI at /docs); its lifespan migrates and runs the Kafka side."""
    settings = settings or Settings()
    wiring = bootstrap(settings)
    authenticator = build_authenticator(settings.auth(), extra=grants(settings.effective_tokens()))
    app = build_http_app(
        wiring.runtime,
        authenticator=authenticator,
        title="Vigil registry",
        description=(
            "Model versions, stages (registered, shadow, production, archived, retired), model cards, "
            "four-eyes approvals, a tamper-evident audit trail, and promotions and rollbacks driven by evidence."
        ),
    )
    app.state.wiring = wiring
    app.state.registry = wiring.registry
    app.state.anonymous_read = settings.anonymous_read or settings.development
    app.include_router(models.router)
    app.include_router(proposals.router)
    app.include_router(audits.router)
    if settings.console_enabled:
        mount_console(app, idle_minutes=settings.console_idle_minutes)

    @app.exception_handler(RegistryError)
    async def registry_error(_: Request, error: RegistryError) -> JSONResponse:
        body: dict[str, object] = {"detail": error.reason}
        if error.status == 422:
            # One shape for every 422, the one FastAPI's request validation answers and the documents describe.
            body = {"detail": [{"loc": ["body"], "msg": error.reason, "type": "value_error"}]}
        if isinstance(error, NotEligible):
            body["report"] = error.report
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
        return JSONResponse(body, status_code=error.status, headers=headers)

    return app
