"""The console's client of shadow's replay API (``POST /replays``, ``GET /replays[/{id}]``).

The registry may not import shadow (an import contract), so replays run there and the console asks over HTTP.

Whose identity shadow sees: the signed-in person's. The console forwards the bearer token the person signed in
with (held server-side in the session, never in the browser), so shadow checks the person's own role and records
the person as the requester. The alternative, a registry service identity allowed to replay with a
``requested_by`` field, would make the registry a deputy whose word shadow must trust: any registry bug or
compromise could replay as anyone, and shadow could not tell who really asked. Forwarding gives the registry no
standing replay privilege at all. (The registry already holds every static token in its own table, so keeping
the person's token in its memory for the session exposes nothing new.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx


class ShadowUnavailable(Exception):
    """Shadow refused or could not be reached; carries the status and the reason shown on the page."""

    def __init__(self, reason: str, status: int = 502) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class ShadowClient:
    """Replay jobs in shadow, asked as the signed-in person (their token on each call)."""

    def __init__(
        self, base_url: str, *, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _call(self, method: str, path: str, token: str, json: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            answer = await self._client.request(method, path, json=json, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as error:
            raise ShadowUnavailable(f"the shadow service could not be reached ({type(error).__name__})") from error
        if answer.status_code >= 400:
            try:
                detail = answer.json().get("detail")
            except ValueError:
                detail = None
            reason = detail if isinstance(detail, str) else f"the shadow service answered {answer.status_code}"
            raise ShadowUnavailable(reason, status=answer.status_code)
        body: dict[str, Any] = answer.json()
        return body

    async def start(self, token: str, *, model: str, version: str, start: datetime, end: datetime) -> dict[str, Any]:
        """Queue a replay; returns the job (its ``id`` and ``state``)."""
        payload = {"model": model, "version": version, "from": start.isoformat(), "to": end.isoformat()}
        return await self._call("POST", "/replays", token, payload)

    async def job(self, token: str, job_id: str) -> dict[str, Any]:
        """One job with its report once done."""
        return await self._call("GET", f"/replays/{quote(job_id, safe='')}", token)

    async def jobs(self, token: str) -> list[dict[str, Any]]:
        """The jobs shadow keeps, newest first."""
        found: list[dict[str, Any]] = (await self._call("GET", "/replays", token)).get("replays", [])
        return found
