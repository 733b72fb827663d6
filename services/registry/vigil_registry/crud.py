"""Queries over the registry's tables (keyword-only arguments; no commits here: callers own transactions)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from vigil_contracts.events import Stage
from vigil_registry.errors import NotFound
from vigil_registry.models import (
    AlertRecord,
    AuditEntry,
    ComparisonRecord,
    ModelVersion,
    OutboxEvent,
    Proposal,
    ProposalStatus,
    RegisteredModel,
)


def get_model(session: Session, *, name: str, lock: bool = False) -> RegisteredModel:
    """A model by name (row-locked for the transaction when ``lock``); NotFound if absent."""
    query = select(RegisteredModel).where(RegisteredModel.name == name)
    if lock:
        query = query.with_for_update()
    model = session.exec(query).first()
    if model is None:
        raise NotFound(f"no model named {name!r}")
    return model


def find_model(session: Session, *, name: str) -> RegisteredModel | None:
    """A model by name, or None."""
    return session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()


def list_models(session: Session) -> Sequence[RegisteredModel]:
    """Every model, by name."""
    return session.exec(select(RegisteredModel).order_by(col(RegisteredModel.name))).all()


def find_version(session: Session, *, name: str, version: str) -> ModelVersion | None:
    """A version, or None."""
    return session.exec(
        select(ModelVersion).where(ModelVersion.model_name == name, ModelVersion.version == version)
    ).first()


def get_version(session: Session, *, name: str, version: str) -> ModelVersion:
    """A version; NotFound if absent."""
    row = find_version(session, name=name, version=version)
    if row is None:
        raise NotFound(f"model {name!r} has no version {version!r}")
    return row


def list_versions(session: Session, *, name: str) -> Sequence[ModelVersion]:
    """A model's versions, oldest first."""
    return session.exec(
        select(ModelVersion).where(ModelVersion.model_name == name).order_by(col(ModelVersion.id))
    ).all()


def production_version(session: Session, *, name: str) -> ModelVersion | None:
    """The model's production version, if any."""
    return session.exec(
        select(ModelVersion).where(ModelVersion.model_name == name, ModelVersion.stage == Stage.PRODUCTION.value)
    ).first()


def open_proposal(session: Session, *, name: str, version: str) -> Proposal | None:
    """The newest proposal for a version that is open or approved (not yet executed)."""
    return session.exec(
        select(Proposal)
        .where(
            Proposal.model_name == name,
            Proposal.version == version,
            col(Proposal.status).in_([ProposalStatus.OPEN.value, ProposalStatus.APPROVED.value]),
        )
        .order_by(col(Proposal.id).desc())
    ).first()


def list_proposals(session: Session, *, name: str) -> Sequence[Proposal]:
    """A model's proposals, newest first."""
    return session.exec(select(Proposal).where(Proposal.model_name == name).order_by(col(Proposal.id).desc())).all()


def latest_comparison(session: Session, *, name: str, version: str) -> ComparisonRecord | None:
    """The newest comparison of a candidate (by the time shadow made it)."""
    return session.exec(
        select(ComparisonRecord)
        .where(ComparisonRecord.model_name == name, ComparisonRecord.candidate_version == version)
        .order_by(col(ComparisonRecord.occurred_at).desc(), col(ComparisonRecord.id).desc())
    ).first()


def open_critical_alerts(session: Session, *, name: str, version: str) -> list[str]:
    """Keys of critical alerts whose newest state is open, raised on this version."""
    rows = session.exec(
        select(AlertRecord)
        .where(AlertRecord.model_name == name, AlertRecord.model_version == version)
        .order_by(col(AlertRecord.occurred_at), col(AlertRecord.id))
    ).all()
    latest: dict[str, AlertRecord] = {}
    for row in rows:
        latest[row.alert_key] = row
    return sorted(k for k, r in latest.items() if r.state == "open" and r.severity == "critical")


def audit_entries(
    session: Session, *, name: str | None = None, version: str | None = None, limit: int | None = None
) -> Sequence[AuditEntry]:
    """Audit entries in chain order, optionally for one model (and version)."""
    query = select(AuditEntry).order_by(col(AuditEntry.seq))
    if name is not None:
        query = query.where(AuditEntry.model_name == name)
    if version is not None:
        query = query.where(AuditEntry.version == version)
    if limit is not None:
        query = query.limit(limit)
    return session.exec(query).all()


def pending_outbox(session: Session, *, limit: int) -> Sequence[OutboxEvent]:
    """Unpublished lifecycle events in decision order."""
    return session.exec(
        select(OutboxEvent).where(col(OutboxEvent.published_at).is_(None)).order_by(col(OutboxEvent.id)).limit(limit)
    ).all()
