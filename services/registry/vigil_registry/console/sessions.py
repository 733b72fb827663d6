"""Console sessions: a bearer token exchanged once for a server-side session with its own CSRF token.

The session id travels in an HttpOnly, SameSite=Strict cookie (Secure when the console is served over TLS); the
token itself is never stored in the browser. The server keeps it in the session (never rendered, never logged) for
one purpose: the console forwards it to shadow when the person starts a replay, so shadow checks that person's
role itself (see ``console/shadow.py``). Sessions live in this process's memory: a restart signs everyone
out, which is the safe failure for a console that approves clinical models. Idle sessions expire.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vigil_registry.auth import Principal

COOKIE = "vigil_console"
"""The session cookie's name."""
PRE_COOKIE = "vigil_console_signin"
"""The sign-in form's double-submit cookie (there is no session yet to hold its CSRF token)."""


@dataclass
class ConsoleSession:
    """One signed-in person: who, the CSRF token of their forms, when they were last seen, one pending notice."""

    principal: Principal
    csrf: str
    last_seen: float
    notice: str = ""
    token: str = field(default="", repr=False)
    """The bearer token signed in with (forwarded to shadow for replays; ``repr=False``: kept out of logs)."""

    def csrf_ok(self, given: str | None) -> bool:
        """Constant-time check of a form's CSRF token."""
        return bool(given) and hmac.compare_digest(self.csrf.encode(), (given or "").encode())


@dataclass
class SessionStore:
    """Session id -> session, with idle expiry."""

    idle_seconds: float
    clock: Callable[[], float] = time.monotonic
    _sessions: dict[str, ConsoleSession] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, principal: Principal, token: str = "") -> tuple[str, ConsoleSession]:
        """A new session for ``principal``; returns its id (the cookie's value) and the session."""
        sid = secrets.token_urlsafe(32)
        session = ConsoleSession(
            principal=principal, csrf=secrets.token_urlsafe(32), last_seen=self.clock(), token=token
        )
        with self._lock:
            self._expire()
            self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> ConsoleSession | None:
        """The live session of ``sid`` (touching it), or None when unknown or idle too long."""
        if not sid:
            return None
        with self._lock:
            self._expire()
            session = self._sessions.get(sid)
            if session is not None:
                session.last_seen = self.clock()
            return session

    def close(self, sid: str | None) -> None:
        """Sign out: forget the session."""
        if sid:
            with self._lock:
                self._sessions.pop(sid, None)

    def _expire(self) -> None:
        cutoff = self.clock() - self.idle_seconds
        for sid in [s for s, v in self._sessions.items() if v.last_seen < cutoff]:
            del self._sessions[sid]
