"""Tables (SQLModel) and the public shapes the API returns.

The schema changes only through Alembic migrations (``vigil_registry/migrations``); a test checks that the
migrated schema equals these models.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, Boolean, Column, Index, Integer, String, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from vigil_contracts.events import Stage, utcnow
from vigil_registry.db import UTCDateTime


class RegisteredModel(SQLModel, table=True):
    """A model (e.g. ``sepsis``): its versions share a name, a policy and one production slot."""

    __tablename__ = "registered_models"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(100), nullable=False, unique=True))
    description: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    created_by: str = Field(sa_column=Column(String(100), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    policy: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """Overrides of the default promotion policy (see policy.PromotionPolicy)."""


class ModelVersion(SQLModel, table=True):
    """One uploaded package of a model, its stage and its lineage."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_name", "version", name="uq_model_version"),
        # One production version per model, enforced by the database itself.
        Index(
            "uq_one_production_per_model",
            "model_name",
            unique=True,
            sqlite_where=text("stage = 'production'"),
            postgresql_where=text("stage = 'production'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(sa_column=Column(String(100), nullable=False, index=True))
    version: str = Field(sa_column=Column(String(50), nullable=False))
    stage: str = Field(sa_column=Column(String(16), nullable=False))
    stage_reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    artifact_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    """sha256 of model.onnx (what ``ModelPackage.load(expected_sha256=...)`` checks)."""
    package_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    """Digest of the whole package (its content address in the artifact store)."""
    feature_set_version: str = Field(sa_column=Column(String(50), nullable=False))
    input_schema: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    thresholds: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    card: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    lineage: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(sa_column=Column(String(100), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    stage_changed_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    shadow_since: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    production_since: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    replaced_version: str | None = Field(default=None, sa_column=Column(String(50), nullable=True))
    """The production version this one replaced when promoted: the target of a rollback."""
    flagged: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false")))
    flag_reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    retired_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    outcomes_labelled: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default=text("0")))
    """Outcomes (sepsis onsets and stay ends) received while this version was in shadow or production."""


class ProposalStatus(StrEnum):
    """Where a promotion proposal stands."""

    OPEN = "open"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXECUTED = "executed"
    WITHDRAWN = "withdrawn"


class Proposal(SQLModel, table=True):
    """A data scientist's proposal to promote a shadow version, and the clinical decision on it."""

    __tablename__ = "proposals"

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(sa_column=Column(String(100), nullable=False, index=True))
    version: str = Field(sa_column=Column(String(50), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    proposed_by: str = Field(sa_column=Column(String(100), nullable=False))
    proposed_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    decided_by: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    decided_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    decision_reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class AuditEntry(SQLModel, table=True):
    """One appended line of the tamper-evident audit log: each entry hashes the one before."""

    __tablename__ = "audit_log"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    model_name: str = Field(sa_column=Column(String(100), nullable=False, index=True))
    version: str | None = Field(default=None, sa_column=Column(String(50), nullable=True))
    action: str = Field(sa_column=Column(String(32), nullable=False))
    actor: str = Field(sa_column=Column(String(100), nullable=False))
    role: str = Field(sa_column=Column(String(32), nullable=False))
    from_stage: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    to_stage: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    evidence: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    """Canonical JSON text (hashed as stored, so no backend can re-render it differently)."""
    prev_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    """Unique: two writers racing for the same predecessor cannot fork the chain."""
    entry_hash: str = Field(sa_column=Column(String(64), nullable=False))


class AuditHead(SQLModel, table=True):
    """The chain's newest entry (one row, locked while appending; detects a truncated tail)."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int = 0
    entry_hash: str = Field(sa_column=Column(String(64), nullable=False))


class OutboxEvent(SQLModel, table=True):
    """A lifecycle event written in the same transaction as its decision, published later by the relay."""

    __tablename__ = "lifecycle_outbox"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(sa_column=Column(String(36), nullable=False, unique=True))
    key: str = Field(sa_column=Column(String(100), nullable=False))
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    published_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True, index=True))
    attempts: int = 0
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class ComparisonRecord(SQLModel, table=True):
    """A ComparisonSummarized received from shadow (deduplicated by event id)."""

    __tablename__ = "comparisons"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(sa_column=Column(String(36), nullable=False, unique=True))
    model_name: str = Field(sa_column=Column(String(100), nullable=False, index=True))
    candidate_version: str = Field(sa_column=Column(String(50), nullable=False))
    live_version: str = Field(sa_column=Column(String(50), nullable=False))
    occurred_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    received_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class AlertRecord(SQLModel, table=True):
    """An AlertRaised received from drift, and what the registry did about it."""

    __tablename__ = "alerts"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(sa_column=Column(String(36), nullable=False, unique=True))
    alert_key: str = Field(sa_column=Column(String(200), nullable=False, index=True))
    model_name: str | None = Field(default=None, sa_column=Column(String(100), nullable=True, index=True))
    model_version: str | None = Field(default=None, sa_column=Column(String(50), nullable=True))
    kind: str = Field(sa_column=Column(String(32), nullable=False))
    severity: str = Field(sa_column=Column(String(16), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    occurred_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    received_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    action_taken: str = Field(default="", sa_column=Column(String(32), nullable=False, server_default=""))
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class SeenOutcome(SQLModel, table=True):
    """Outcome event ids already counted (no encounter or patient ids are kept)."""

    __tablename__ = "outcomes_seen"

    event_id: str = Field(sa_column=Column(String(36), primary_key=True))
    outcome: str = Field(sa_column=Column(String(16), nullable=False))
    received_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


# --- public shapes -------------------------------------------------------------------------------


class ModelVersionPublic(BaseModel):
    """A version as the API shows it."""

    model_name: str
    version: str
    stage: Stage
    stage_reason: str
    artifact_sha256: str
    package_sha256: str
    artifact_url: str
    feature_set_version: str
    input_schema: dict[str, Any]
    thresholds: dict[str, Any]
    card: dict[str, Any]
    lineage: dict[str, Any]
    metrics: dict[str, Any]
    tags: list[str]
    created_by: str
    created_at: datetime
    stage_changed_at: datetime
    shadow_since: datetime | None
    production_since: datetime | None
    replaced_version: str | None
    flagged: bool
    flag_reason: str
    retired_reason: str | None
    outcomes_labelled: int


class ModelPublic(BaseModel):
    """A model with its versions' stages."""

    name: str
    description: str
    created_by: str
    created_at: datetime
    production_version: str | None
    versions: dict[str, Stage]
    policy: dict[str, Any]


class ProposalPublic(BaseModel):
    """A proposal as the API shows it."""

    id: int
    model_name: str
    version: str
    status: ProposalStatus
    proposed_by: str
    proposed_at: datetime
    reason: str
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str


class AuditEntryPublic(BaseModel):
    """An audit entry as the API shows it (evidence parsed)."""

    seq: int
    at: datetime
    model_name: str
    version: str | None
    action: str
    actor: str
    role: str
    from_stage: str | None
    to_stage: str | None
    reason: str
    evidence: dict[str, Any]
    prev_hash: str
    entry_hash: str


__all__ = [
    "AlertRecord",
    "AuditEntry",
    "AuditEntryPublic",
    "AuditHead",
    "ComparisonRecord",
    "ModelPublic",
    "ModelVersion",
    "ModelVersionPublic",
    "OutboxEvent",
    "Proposal",
    "ProposalPublic",
    "ProposalStatus",
    "RegisteredModel",
    "SeenOutcome",
    "utcnow",
]
