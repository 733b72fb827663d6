"""Ingest's FHIR REST API: routers with dependencies over :class:`vigil_ingest.core.IngestCore`."""

from __future__ import annotations

from fastapi import FastAPI

from vigil_ingest.api.deps import FhirError, fhir_error_handler
from vigil_ingest.api.routes import fhir
from vigil_ingest.core import IngestCore
from vigil_ingest.settings import Settings


def mount_fhir(app: FastAPI, core: IngestCore, settings: Settings, *, at_root: bool = True) -> None:
    """Serve the FHIR endpoints at ``settings.fhir_base`` (and at the root too when ``at_root``).

    The root: integrations configured with the server's address as their FHIR base (the simulator).
    """
    app.state.ingest_core = core
    app.state.ingest_settings = settings
    app.add_exception_handler(FhirError, fhir_error_handler)  # type: ignore[arg-type]
    base = settings.fhir_base.rstrip("/")
    if base:
        app.include_router(fhir.base_router, prefix=base, tags=["fhir"])
        app.include_router(fhir.router, prefix=base, tags=["fhir"])
        if at_root:
            app.include_router(fhir.router, include_in_schema=False)
    else:
        app.include_router(fhir.router, tags=["fhir"])


__all__ = ["mount_fhir"]
