"""Generated documentation: the AsyncAPI document of each service's Kafka side.

The documents come from the services' own FastStream brokers (their subscribers and publishers, and the event
contracts' pydantic schemas), so they cannot drift from the code; a test regenerates them and compares.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from faststream.specification import AsyncAPI

from vigil.stack import SERVICE_NAMES
from vigil_contracts.headers import CORRELATION_ID, TOPIC_KINDS, headers_schema
from vigil_contracts.topics import Topics
from vigil_runtime.service import ServiceRuntime


def runtime_of(wired: Any) -> ServiceRuntime:
    """The ServiceRuntime inside whatever a service's ``bootstrap`` returns (a runtime, a tuple, a wiring)."""
    if isinstance(wired, ServiceRuntime):
        return wired
    if isinstance(wired, tuple):
        return next(part for part in wired if isinstance(part, ServiceRuntime))
    runtime = wired.runtime
    if not isinstance(runtime, ServiceRuntime):
        raise TypeError(f"bootstrap() returned no ServiceRuntime ({type(runtime).__name__})")
    return runtime


def asyncapi_document(service: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of one service, built from its broker as ``bootstrap`` wires it."""
    app = importlib.import_module(f"vigil_{service}.app")
    # Documentation only: a throwaway SQLite database, never the stack's (the registry's bootstrap opens one).
    overrides = {"database_url": "sqlite://"} if service == "registry" else {}
    settings = importlib.import_module(f"vigil_{service}.settings").Settings(**overrides)
    runtime = runtime_of(app.bootstrap(settings))
    if runtime.broker is None:
        raise ValueError(f"{service} has no Kafka side to document")
    spec = AsyncAPI(runtime.broker, title=f"Vigil {service}", version="0.1.0", description=(app.__doc__ or "").strip())
    document: dict[str, Any] = json.loads(spec.to_specification().to_json())
    declare_headers(document, settings.topics)
    return document


def declare_headers(document: dict[str, Any], topics: Topics) -> None:
    """Give every message the headers schema of its topic (``vigil_contracts.headers``).

    FastStream declares no headers and a ``correlation_id`` header of its own; the documents say instead what
    Vigil's producers set (event type, schema version, ``vigil-correlation-id``, ``traceparent``), so they match
    what is on the wire (a unit test produces through the producers and compares).
    """
    by_address = {name: topic for topic, name in topics.all().items()}
    messages = document["components"]["messages"]
    for channel in document["channels"].values():
        topic = by_address.get(channel["address"])
        if topic is None:
            raise ValueError(f"channel {channel['address']} is no Vigil topic")
        for ref in channel["messages"].values():
            name = unquote(ref["$ref"].removeprefix("#/components/messages/"))
            message = messages[name]
            message["headers"] = headers_schema(TOPIC_KINDS[topic])
            message["correlationId"] = {
                "description": "Carried from the request or consumed message that led to this one.",
                "location": f"$message.header#/{CORRELATION_ID}",
            }


def write_asyncapi(out: Path) -> list[Path]:
    """Write ``<service>.json`` for every service into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for service in SERVICE_NAMES:
        path = out / f"{service}.json"
        path.write_text(json.dumps(asyncapi_document(service), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
