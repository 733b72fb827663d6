"""The registry's web console (``/ui``): review, approve, watch and audit in a browser.

Server-rendered (Jinja2) over the registry's own query and command functions, not its REST routes; every form
works without JavaScript, and every asset is served by this process (closed clinical networks have no CDN).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from vigil_registry.console.sessions import SessionStore
from vigil_registry.console.shadow import ShadowClient
from vigil_registry.console.views import Refused, SignInRequired, refused, router, sign_in_required

HERE = Path(__file__).parent


def mount_console(app: FastAPI, *, idle_minutes: float, shadow: ShadowClient | None = None) -> None:
    """Add the console's pages, its static files, its session store and its shadow client to the registry's app."""
    app.state.console_sessions = SessionStore(idle_seconds=idle_minutes * 60.0)
    app.state.console_shadow = shadow
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)
    app.add_exception_handler(SignInRequired, sign_in_required)  # type: ignore[arg-type]
    app.add_exception_handler(Refused, refused)  # type: ignore[arg-type]
