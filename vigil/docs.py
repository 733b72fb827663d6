"""Generated documentation: the AsyncAPI document of each service's Kafka side.

The documents come from the services' own FastStream brokers (their subscribers and publishers, and the event
contracts' pydantic schemas), so they cannot drift from the code; a test regenerates them and compares.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from faststream.specification import AsyncAPI

from vigil.stack import SERVICE_NAMES


def asyncapi_document(service: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of one service, built from its broker as ``bootstrap`` wires it."""
    app = importlib.import_module(f"vigil_{service}.app")
    settings = importlib.import_module(f"vigil_{service}.settings").Settings()
    runtime = app.bootstrap(settings)
    spec = AsyncAPI(runtime.broker, title=f"Vigil {service}", version="0.1.0", description=(app.__doc__ or "").strip())
    document: dict[str, Any] = json.loads(spec.to_specification().to_json())
    return document


def write_asyncapi(out: Path) -> list[Path]:
    """Write ``<service>.json`` for every service into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for service in SERVICE_NAMES:
        path = out / f"{service}.json"
        path.write_text(json.dumps(asyncapi_document(service), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
