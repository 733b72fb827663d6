"""The shadow service: FastStream for its Kafka side, FastAPI for HTTP (frame only, filled in by its issue)."""

from __future__ import annotations

from fastapi import FastAPI

from vigil_common.kafka import make_broker
from vigil_common.metrics import ServiceMetrics
from vigil_common.service import ServiceRuntime, build_http_app
from vigil_shadow.settings import Settings

SERVICE = "shadow"


def bootstrap(settings: Settings) -> ServiceRuntime:
    """Wire the service's broker, metrics and readiness checks."""
    broker = make_broker(settings, client_id=f"vigil-{SERVICE}")
    return ServiceRuntime(name=SERVICE, settings=settings, broker=broker, metrics=ServiceMetrics(SERVICE))


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's HTTP app; its lifespan runs the Kafka side."""
    runtime = bootstrap(settings or Settings())
    return build_http_app(runtime, title="Vigil shadow")
