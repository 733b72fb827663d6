"""The tamper-evident audit log: an append-only hash chain.

Each entry's hash is ``sha256(prev_hash || canonical JSON of the entry's fields)``; the first entry chains from
``GENESIS``. Editing, deleting or reordering any entry breaks every hash after it, and the ``audit_head`` row
(the newest seq and hash) detects a truncated tail. Appends lock the head row (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite serialises writers), and ``prev_hash`` is unique, so concurrent writers cannot fork the chain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from vigil_registry.models import AuditEntry, AuditHead

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, non-JSON values as strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def _timestamp(at: datetime) -> str:
    return at.isoformat(timespec="microseconds")


def entry_digest(entry: AuditEntry) -> str:
    """The hash an entry must carry, given its fields and its ``prev_hash``."""
    body = canonical_json(
        {
            "seq": entry.seq,
            "at": _timestamp(entry.at),
            "model_name": entry.model_name,
            "version": entry.version,
            "action": entry.action,
            "actor": entry.actor,
            "role": entry.role,
            "from_stage": entry.from_stage,
            "to_stage": entry.to_stage,
            "reason": entry.reason,
            "evidence": entry.evidence,
        }
    )
    return hashlib.sha256((entry.prev_hash + body).encode()).hexdigest()


def append(
    session: Session,
    *,
    at: datetime,
    model_name: str,
    version: str | None,
    action: str,
    actor: str,
    role: str | None,
    from_stage: str | None = None,
    to_stage: str | None = None,
    reason: str = "",
    evidence: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry inside the caller's transaction (committed, or rolled back, with the decision)."""
    # Take the head row's write lock before reading it: a no-op UPDATE locks the row on PostgreSQL and starts the
    # write transaction on SQLite (whose driver begins one only at the first write), so no other writer can
    # append between our read of the head and our insert.
    session.exec(update(AuditHead).where(col(AuditHead.id) == 1).values(seq=AuditHead.seq))
    head = session.exec(select(AuditHead).where(AuditHead.id == 1).with_for_update()).first()
    if head is None:
        head = AuditHead(id=1, seq=0, entry_hash=GENESIS)
        session.add(head)
        session.flush()
    entry = AuditEntry(
        seq=head.seq + 1,
        at=at,
        model_name=model_name,
        version=version,
        action=action,
        actor=actor,
        role=role or "none",  # an OAuth2 client without a registry role (it can only read, so never lands here)
        from_stage=from_stage,
        to_stage=to_stage,
        reason=reason,
        evidence=canonical_json(evidence or {}),
        prev_hash=head.entry_hash,
        entry_hash="",
    )
    entry.entry_hash = entry_digest(entry)
    session.add(entry)
    head.seq = entry.seq
    head.entry_hash = entry.entry_hash
    session.add(head)
    session.flush()
    return entry


@dataclass(frozen=True)
class Verification:
    """The result of walking the chain."""

    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API and the CLI."""
        return {"ok": self.ok, "entries": self.entries, "first_bad_seq": self.first_bad_seq, "problem": self.problem}


def verify(session: Session) -> Verification:
    """Recompute every hash and link; report the first entry that does not match."""
    previous = GENESIS
    expected_seq = 1
    count = 0
    for entry in session.exec(select(AuditEntry).order_by(col(AuditEntry.seq))):
        count += 1
        if entry.seq != expected_seq:
            return Verification(False, count, entry.seq, f"sequence gap: expected {expected_seq}, found {entry.seq}")
        if entry.prev_hash != previous:
            return Verification(False, count, entry.seq, "link broken: prev_hash differs from the previous entry")
        if entry_digest(entry) != entry.entry_hash:
            return Verification(False, count, entry.seq, "content altered: the entry's hash does not match")
        previous = entry.entry_hash
        expected_seq += 1
    head = session.get(AuditHead, 1)
    head_seq, head_hash = (head.seq, head.entry_hash) if head else (0, GENESIS)
    if head_seq != count or head_hash != previous:
        return Verification(False, count, count + 1 if head_seq > count else None, "tail truncated or head altered")
    return Verification(True, count)


def parse_evidence(entry: AuditEntry) -> dict[str, Any]:
    """An entry's evidence as a dict."""
    value = json.loads(entry.evidence or "{}")
    return value if isinstance(value, dict) else {"value": value}
