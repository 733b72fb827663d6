"""A stand-in for ingest's FHIR endpoint on a real local socket, whose failures are chosen per request.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) for httpx, so the simulator's sender meets
real transport failures: a connection closed without an answer (httpx's ``RemoteProtocolError``), an answer that
never comes (``ReadTimeout``), or a 5xx. A good request is answered as ingest answers a transaction bundle: one
``201`` outcome per entry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx
import orjson

FHIR = "application/fhir+json"

Behaviour = Literal["ok", "drop", "hang", "503", "forward", "forward-then-drop"]
"""``forward``: pass the request to ``upstream`` (a real ingest) and relay its answer; ``forward-then-drop``: pass it
on, then close the connection instead of relaying: the worst case, ingest took the bundle and the client never
heard."""


@dataclass
class MockIngest:
    """``behaviour(n)`` decides what the n-th request (1-based) gets."""

    behaviour: Callable[[int], Behaviour] = lambda _: "ok"
    upstream: str | None = None
    requests: int = 0
    seen: Counter[str] = field(default_factory=Counter)
    """Bundle ids received (complete bodies), however they were answered."""
    answered: Counter[str] = field(default_factory=Counter)
    """Bundle ids answered with 201 outcomes."""
    _server: asyncio.Server | None = None
    _hung: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        for writer in self._hung:
            writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                forwarded = {"content-type": FHIR}
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                    elif name.strip().lower() == b"authorization":
                        # The caller's credentials go upstream unchanged: the real ingest decides, not the front.
                        forwarded["authorization"] = value.strip().decode()
                raw = await reader.readexactly(length) if length else b"{}"
                body = orjson.loads(raw)
                self.requests += 1
                self.seen[str(body.get("id"))] += 1
                what = self.behaviour(self.requests)
                if what in ("forward", "forward-then-drop"):
                    async with httpx.AsyncClient(base_url=str(self.upstream), timeout=60) as client:
                        answer = await client.post("/", content=raw, headers=forwarded)
                    if what == "forward-then-drop":
                        writer.close()
                        return
                    self.answered[str(body.get("id"))] += 1
                    status = f"{answer.status_code} {answer.reason_phrase}".encode()
                    payload = answer.content
                elif what == "drop":
                    writer.close()
                    return
                elif what == "hang":
                    self._hung.append(writer)
                    return  # never answers; the client's read timeout fires
                elif what == "503":
                    payload = b'{"resourceType":"OperationOutcome"}'
                    status = b"503 Service Unavailable"
                elif what == "ok":
                    self.answered[str(body.get("id"))] += 1
                    payload = orjson.dumps(
                        {
                            "resourceType": "Bundle",
                            "type": "transaction-response",
                            "entry": [{"response": {"status": "201 Created"}} for _ in body.get("entry", [])],
                        }
                    )
                    status = b"200 OK"
                else:
                    raise ValueError(what)
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\ncontent-type: application/fhir+json\r\n"
                    b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
