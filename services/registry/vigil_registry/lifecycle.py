"""The registry's commands: registration, stages, proposals, approvals, promotion, rollback, retirement, policy.

Every command runs one database transaction. A decision (a stage change) writes, in that one transaction, the
version's new stage, an audit entry (with its evidence) and the ModelLifecycleChanged event in the outbox
(:class:`~vigil_registry.outbox.Outbox`); the outbox relay signs and publishes it afterwards. So the database
stays the source of truth and a crash between commit and publish loses nothing (the relay publishes it on
restart); a crash after publish but before marking it published republishes it with the same event id, which
consumers dedupe.

State machine (``via`` names the only call that may make the move)::

    registered -> shadow (stage), archived (stage), retired (retire)
    shadow     -> production (promote), archived (stage), retired (retire)
    production -> archived (promote of another version, rollback)
    archived   -> shadow (stage), production (rollback), retired (retire)
    retired    -> nothing: a retired version stays archived with its card, metrics and audit trail

The four-eyes rule is :func:`four_eyes`, the one place it is written.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from vigil_contracts.events import LifecycleAction, ModelLifecycleChanged, Stage, deterministic_id, utcnow
from vigil_registry import audit, crud
from vigil_registry.artifacts import ArtifactStore, PackageInfo, read_package, unpack_archive
from vigil_registry.auth import Principal, require
from vigil_registry.errors import Conflict, Forbidden, InvalidInput, NotEligible
from vigil_registry.models import (
    AuditEntry,
    ModelVersion,
    ModelVersionPublic,
    Proposal,
    ProposalPublic,
    ProposalStatus,
    RegisteredModel,
)
from vigil_registry.outbox import Outbox
from vigil_registry.policy import PolicyReport, PromotionPolicy
from vigil_registry.queries import Queries, policy_of
from vigil_runtime.auth import same_person
from vigil_runtime.kafka import describe_error

log = logging.getLogger(__name__)


TRANSITIONS: dict[tuple[Stage, Stage], str] = {
    (Stage.REGISTERED, Stage.SHADOW): "stage",
    (Stage.REGISTERED, Stage.ARCHIVED): "stage",
    (Stage.REGISTERED, Stage.RETIRED): "retire",
    (Stage.SHADOW, Stage.PRODUCTION): "promote",
    (Stage.SHADOW, Stage.ARCHIVED): "stage",
    (Stage.SHADOW, Stage.RETIRED): "retire",
    (Stage.PRODUCTION, Stage.ARCHIVED): "replace",
    (Stage.ARCHIVED, Stage.SHADOW): "stage",
    (Stage.ARCHIVED, Stage.PRODUCTION): "rollback",
    (Stage.ARCHIVED, Stage.RETIRED): "retire",
}
"""Allowed moves and the only operation that may make each ("replace": a promotion or rollback of another)."""


def check_transition(current: Stage, target: Stage, via: str) -> None:
    """Raise Conflict (409, with the reason) unless ``via`` may move a version from ``current`` to ``target``."""
    if current == Stage.RETIRED:
        raise Conflict("a retired version can no longer be staged")
    allowed = TRANSITIONS.get((current, target))
    if allowed is None:
        hint = ""
        if current == Stage.PRODUCTION and target == Stage.RETIRED:
            hint = ": promote another version or roll back first, then retire it"
        raise Conflict(f"a {current.value} version cannot move to {target.value}{hint}")
    if allowed != via:
        raise Conflict(f"{current.value} -> {target.value} is made by '{allowed}', not by '{via}'")


def four_eyes(proposer: str, approver: str | None, *, approving: bool = False) -> None:
    """The four-eyes rule, the one place it is written: the approver must be someone other than the proposer.

    Ids are compared normalised (NFKC, case-folded, trimmed): "Mallory " and "mallory" are one person. Raises
    Forbidden with the reason; ``approving`` words it for the approval itself rather than a later promotion.
    """
    if approver is None:
        raise Forbidden("four-eyes rule: the proposal has no approval")
    if same_person(proposer, approver):
        if approving:
            raise Forbidden("four-eyes rule: the approver must not be the proposer")
        raise Forbidden("four-eyes rule: the approval was given by the proposer")


def four_eyes_hold(proposer: str, approver: str | None) -> bool:
    """Whether the four-eyes rule holds (for the policy's automatic promotions, which skip rather than refuse)."""
    try:
        four_eyes(proposer, approver)
    except Forbidden:
        return False
    return True


@dataclass
class Decision:
    """A stage decision made within a transaction, for the caller's response."""

    entry: AuditEntry
    event: ModelLifecycleChanged


class Lifecycle:
    """The commands that change a model's stages (``notify`` wakes the outbox relay after commits)."""

    def __init__(
        self,
        queries: Queries,
        outbox: Outbox,
        store: ArtifactStore,
        *,
        artifact_url: Callable[[str, str], str],
        notify: Callable[[], None] | None = None,
        max_upload_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.queries = queries
        self.outbox = outbox
        self.store = store
        self.artifact_url = artifact_url
        self.notify = notify or (lambda: None)
        self.max_upload_bytes = max_upload_bytes

    # --- registration and stages ---------------------------------------------------------------

    def register_archive(
        self, actor: Principal, data: bytes, *, expected_name: str | None = None, tags: Iterable[str] = ()
    ) -> ModelVersionPublic:
        """Register a package uploaded as a tar.gz, tar or zip archive."""
        require(actor, "register")
        with tempfile.TemporaryDirectory(prefix="vigil-upload-") as tmp:
            folder = unpack_archive(data, Path(tmp), max_bytes=self.max_upload_bytes)
            return self.register_folder(actor, folder, expected_name=expected_name, tags=tags)

    def register_folder(
        self, actor: Principal, folder: Path, *, expected_name: str | None = None, tags: Iterable[str] = ()
    ) -> ModelVersionPublic:
        """Validate a package folder, store it under its digest and record the version as ``registered``.

        Registering the same package again is idempotent; another package under an existing version is a 409.
        """
        require(actor, "register")
        info = read_package(folder)
        if expected_name is not None and info.name != expected_name:
            raise Conflict(f"the package is named {info.name!r}, not {expected_name!r}")
        self.store.put(info)
        try:
            with self.queries.session() as session, session.begin():
                return self._register(session, actor, info, list(tags))
        except IntegrityError as error:
            # A concurrent upload of the same name/version won: report it as the conflict it is.
            raise Conflict(f"{info.name} {info.version} was registered concurrently") from error
        finally:
            self.notify()

    def _register(self, session: Session, actor: Principal, info: PackageInfo, tags: list[str]) -> ModelVersionPublic:
        now = utcnow()
        model = crud.find_model(session, name=info.name)
        if model is None:
            model = RegisteredModel(
                name=info.name,
                description=str(info.card.get("description", "") or info.card.get("intended_use", ""))[:2000],
                created_by=actor.user,
                created_at=now,
                policy={},
            )
            session.add(model)
            session.flush()
        model = crud.get_model(session, name=info.name, lock=True)
        existing = crud.find_version(session, name=info.name, version=info.version)
        if existing is not None:
            if existing.package_sha256 == info.package_sha256:
                return self.queries.version_public(existing)
            raise Conflict(f"{info.name} version {info.version} already exists with different content")
        row = ModelVersion(
            model_name=info.name,
            version=info.version,
            stage=Stage.REGISTERED.value,
            artifact_sha256=info.artifact_sha256,
            package_sha256=info.package_sha256,
            feature_set_version=info.feature_set_version,
            input_schema=info.input_schema,
            thresholds=info.thresholds,
            card=info.card,
            lineage=info.lineage,
            metrics=info.metrics,
            tags=sorted(set(info.tags) | set(tags)),
            created_by=actor.user,
            created_at=now,
            stage_changed_at=now,
        )
        session.add(row)
        session.flush()
        self._decide(
            session,
            row,
            LifecycleAction.REGISTERED,
            None,
            Stage.REGISTERED,
            actor,
            reason="uploaded",
            evidence={"package_sha256": info.package_sha256, "lineage": info.lineage, "tags": row.tags},
            at=now,
        )
        return self.queries.version_public(row)

    def set_stage(self, actor: Principal, name: str, version: str, to: Stage, reason: str = "") -> ModelVersionPublic:
        """Move a version to ``shadow`` or ``archived`` (production and retirement have their own calls)."""
        require(actor, "stage")
        if to not in (Stage.SHADOW, Stage.ARCHIVED):
            via = {Stage.PRODUCTION: "promote or rollback", Stage.RETIRED: "retire"}.get(to, "nothing")
            raise Conflict(f"a version is moved to {to.value} by {via}, not by a stage change")
        with self.queries.session() as session, session.begin():
            crud.get_model(session, name=name, lock=True)
            row = crud.get_version(session, name=name, version=version)
            current = Stage(row.stage)
            check_transition(current, to, "stage")
            now = utcnow()
            if to == Stage.SHADOW:
                row.shadow_since = now
                row.outcomes_labelled = 0  # the count restarts with each shadow period
            self._move(row, to, reason, now)
            self._decide(session, row, LifecycleAction.STAGE_CHANGED, current, to, actor, reason=reason, at=now)
            if to == Stage.ARCHIVED:
                self._withdraw_proposals(session, name, version, "version archived")
            result = self.queries.version_public(row)
        self.notify()
        return result

    def retire(self, actor: Principal, name: str, version: str, reason: str) -> ModelVersionPublic:
        """Retire a version for good, with its reason; its card, metrics and audit trail stay."""
        require(actor, "retire")
        if not reason.strip():
            raise Conflict("retirement needs a reason")
        with self.queries.session() as session, session.begin():
            crud.get_model(session, name=name, lock=True)
            row = crud.get_version(session, name=name, version=version)
            current = Stage(row.stage)
            check_transition(current, Stage.RETIRED, "retire")
            now = utcnow()
            row.retired_reason = reason
            self._move(row, Stage.RETIRED, reason, now)
            self._decide(session, row, LifecycleAction.RETIRED, current, Stage.RETIRED, actor, reason=reason, at=now)
            self._withdraw_proposals(session, name, version, "version retired")
            result = self.queries.version_public(row)
        self.notify()
        return result

    # --- proposals, approvals, promotion, rollback ---------------------------------------------

    def propose(self, actor: Principal, name: str, version: str, reason: str = "") -> ProposalPublic:
        """A data scientist proposes a shadow version for production."""
        require(actor, "propose")
        with self.queries.session() as session, session.begin():
            crud.get_model(session, name=name, lock=True)
            row = crud.get_version(session, name=name, version=version)
            if row.stage != Stage.SHADOW.value:
                raise Conflict(f"only a shadow version can be proposed for production; {version} is {row.stage}")
            if crud.open_proposal(session, name=name, version=version) is not None:
                raise Conflict(f"{name} {version} already has an open proposal")
            now = utcnow()
            proposal = Proposal(
                model_name=name,
                version=version,
                status=ProposalStatus.OPEN.value,
                proposed_by=actor.user,
                proposed_at=now,
                reason=reason,
            )
            session.add(proposal)
            session.flush()
            evidence = {"proposal_id": proposal.id}
            _audit_proposal(session, now, actor, row, "proposed", reason, evidence)
            return ProposalPublic.model_validate(proposal.model_dump())

    def approve(self, actor: Principal, name: str, version: str, reason: str = "") -> ProposalPublic:
        """A clinical approver other than the proposer approves the open proposal.

        With the policy's ``auto_promote`` an eligible candidate is promoted at once.
        """
        require(actor, "approve")
        with self.queries.session() as session, session.begin():
            model = crud.get_model(session, name=name, lock=True)
            row = crud.get_version(session, name=name, version=version)
            proposal = crud.open_proposal(session, name=name, version=version)
            if proposal is None or proposal.status != ProposalStatus.OPEN.value:
                raise Conflict(f"{name} {version} has no open proposal to approve")
            four_eyes(proposal.proposed_by, actor.user, approving=True)
            now = utcnow()
            proposal.status = ProposalStatus.APPROVED.value
            proposal.decided_by = actor.user
            proposal.decided_at = now
            proposal.decision_reason = reason
            session.add(proposal)
            report = self.queries.evaluate(session, model, row)
            evidence = {"proposal_id": proposal.id, "proposed_by": proposal.proposed_by, "policy": report.as_dict()}
            _audit_proposal(session, now, actor, row, "approved", reason, evidence)
            if policy_of(model).auto_promote and report.eligible:
                self.promote_within(session, model, row, proposal, actor, report, f"approved by {actor.user}; eligible")
            result = ProposalPublic.model_validate(proposal.model_dump())
        self.notify()
        return result

    def reject(self, actor: Principal, name: str, version: str, reason: str) -> ProposalPublic:
        """A clinical approver refuses the proposal (the version stays in shadow)."""
        require(actor, "reject")
        with self.queries.session() as session, session.begin():
            crud.get_model(session, name=name, lock=True)
            row = crud.get_version(session, name=name, version=version)
            proposal = crud.open_proposal(session, name=name, version=version)
            if proposal is None:
                raise Conflict(f"{name} {version} has no proposal to reject")
            now = utcnow()
            proposal.status = ProposalStatus.REJECTED.value
            proposal.decided_by = actor.user
            proposal.decided_at = now
            proposal.decision_reason = reason
            session.add(proposal)
            evidence = {"proposal_id": proposal.id}
            _audit_proposal(session, now, actor, row, "rejected", reason, evidence, to_stage=row.stage)
            return ProposalPublic.model_validate(proposal.model_dump())

    def promote(self, actor: Principal, name: str, version: str, reason: str = "") -> ModelVersionPublic:
        """Promote an approved, eligible shadow version to production (the previous one is archived)."""
        require(actor, "promote")
        with self.queries.session() as session, session.begin():
            model = crud.get_model(session, name=name, lock=True)
            row = crud.get_version(session, name=name, version=version)
            check_transition(Stage(row.stage), Stage.PRODUCTION, "promote")
            proposal = crud.open_proposal(session, name=name, version=version)
            if proposal is None or proposal.status != ProposalStatus.APPROVED.value:
                raise Forbidden("promotion to production needs a proposal approved by a clinical approver")
            four_eyes(proposal.proposed_by, proposal.decided_by)
            report = self.queries.evaluate(session, model, row)
            if not report.eligible:
                raise NotEligible(f"not eligible: {', '.join(report.failed)}", report.as_dict())
            self.promote_within(session, model, row, proposal, actor, report, reason)
            result = self.queries.version_public(row)
        self.notify()
        return result

    def rollback(
        self, actor: Principal, name: str, reason: str, *, evidence: dict[str, Any] | None = None
    ) -> ModelVersionPublic:
        """Put the version the current production one replaced back into production, in one call."""
        require(actor, "rollback")
        with self.queries.session() as session, session.begin():
            crud.get_model(session, name=name, lock=True)
            result = self.rollback_within(session, name, actor, reason, evidence or {})
        self.notify()
        return result

    def rollback_within(
        self, session: Session, name: str, actor: Principal, reason: str, evidence: dict[str, Any]
    ) -> ModelVersionPublic:
        current = crud.production_version(session, name=name)
        if current is None:
            raise Conflict(f"model {name!r} has no production version to roll back")
        if current.replaced_version is None:
            raise Conflict(f"{name} {current.version} replaced no earlier production version: nothing to roll back to")
        target = crud.get_version(session, name=name, version=current.replaced_version)
        if target.stage == Stage.RETIRED.value:
            raise Conflict(f"the previous production version {target.version} is retired")
        check_transition(Stage(target.stage), Stage.PRODUCTION, "rollback")
        now = utcnow()
        details = {**evidence, "rolled_back_version": current.version, "restored_version": target.version}
        # Demote first (the database allows one production version per model), then publish the restoration
        # before the demotion so a scorer never sees the model without a production version.
        self._move(current, Stage.ARCHIVED, f"rolled back: {reason}", now)
        session.flush()
        from_stage = Stage(target.stage)
        self._move(target, Stage.PRODUCTION, f"restored by rollback: {reason}", now)
        target.production_since = now
        session.flush()
        self._decide(
            session, target, LifecycleAction.ROLLED_BACK, from_stage, Stage.PRODUCTION, actor, reason, details, now
        )
        self._decide(
            session,
            current,
            LifecycleAction.STAGE_CHANGED,
            Stage.PRODUCTION,
            Stage.ARCHIVED,
            actor,
            f"rolled back: {reason}",
            details,
            now,
        )
        return self.queries.version_public(target)

    def promote_within(
        self,
        session: Session,
        model: RegisteredModel,
        row: ModelVersion,
        proposal: Proposal,
        actor: Principal,
        report: PolicyReport,
        reason: str,
    ) -> None:
        now = utcnow()
        previous = crud.production_version(session, name=model.name)
        evidence = {
            "policy": report.as_dict(),
            "proposal_id": proposal.id,
            "proposed_by": proposal.proposed_by,
            "approved_by": proposal.decided_by,
            "replaces": previous.version if previous else None,
        }
        if previous is not None:
            self._move(previous, Stage.ARCHIVED, f"replaced by {row.version}", now)
            session.flush()
        self._move(row, Stage.PRODUCTION, reason, now)
        row.production_since = now
        row.replaced_version = previous.version if previous else None
        session.flush()
        proposal.status = ProposalStatus.EXECUTED.value
        session.add(proposal)
        self._decide(
            session, row, LifecycleAction.PROMOTED, Stage.SHADOW, Stage.PRODUCTION, actor, reason, evidence, now
        )
        if previous is not None:
            self._decide(
                session,
                previous,
                LifecycleAction.STAGE_CHANGED,
                Stage.PRODUCTION,
                Stage.ARCHIVED,
                actor,
                f"replaced by {row.version}",
                {"replaced_by": row.version},
                now,
            )

    def set_policy(self, actor: Principal, name: str, overrides: dict[str, Any]) -> PromotionPolicy:
        """Replace a model's policy overrides (validated against PromotionPolicy); audited."""
        require(actor, "policy")
        try:
            policy = PromotionPolicy.model_validate(overrides)
        except ValidationError as error:
            raise InvalidInput(f"invalid policy: {describe_error(error)}") from error
        with self.queries.session() as session, session.begin():
            model = crud.get_model(session, name=name, lock=True)
            before = policy_of(model).model_dump(mode="json")
            model.policy = policy.model_dump(mode="json", exclude_unset=True)
            session.add(model)
            audit.append(
                session,
                at=utcnow(),
                model_name=name,
                version=None,
                action="policy_changed",
                actor=actor.user,
                role=actor.role,
                evidence={"before": before, "after": policy.model_dump(mode="json")},
            )
        return policy

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _move(row: ModelVersion, to: Stage, reason: str, now: datetime) -> None:
        row.stage = to.value
        row.stage_reason = reason
        row.stage_changed_at = now

    def _withdraw_proposals(self, session: Session, name: str, version: str, why: str) -> None:
        proposal = crud.open_proposal(session, name=name, version=version)
        if proposal is not None:
            proposal.status = ProposalStatus.WITHDRAWN.value
            proposal.decision_reason = why
            session.add(proposal)

    def _decide(
        self,
        session: Session,
        row: ModelVersion,
        action: LifecycleAction,
        from_stage: Stage | None,
        to_stage: Stage,
        actor: Principal,
        reason: str = "",
        evidence: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> Decision:
        """Record a stage decision: the audit entry and its lifecycle event in the outbox, in this transaction."""
        now = at or utcnow()
        session.add(row)
        entry = audit.append(
            session,
            at=now,
            model_name=row.model_name,
            version=row.version,
            action=action.value,
            actor=actor.user,
            role=actor.role,
            from_stage=from_stage.value if from_stage else None,
            to_stage=to_stage.value,
            reason=reason,
            evidence=evidence,
        )
        event = ModelLifecycleChanged(
            event_id=deterministic_id("lifecycle", row.model_name, row.version, entry.seq, entry.entry_hash),
            occurred_at=now,
            key=row.model_name,
            action=action,
            model_name=row.model_name,
            model_version=row.version,
            from_stage=from_stage,
            to_stage=to_stage,
            actor=actor.user,
            reason=reason,
            artifact_sha256=row.artifact_sha256,
            artifact_url=self.artifact_url(row.model_name, row.version),
            audit_id=entry.seq,
            evidence=evidence or {},
        )
        self.outbox.record(session, event, at=now)
        log.info(
            "lifecycle decision",
            extra={"model_name": row.model_name, "model_version": row.version, "action": action.value},
        )
        return Decision(entry, event)


def _audit_proposal(
    session: Session,
    at: datetime,
    actor: Principal,
    row: ModelVersion,
    action: str,
    reason: str,
    evidence: dict[str, Any],
    *,
    to_stage: str = Stage.PRODUCTION.value,
) -> None:
    """The audit entry of a step on a proposal (proposed, approved, rejected): the version's stage does not move."""
    audit.append(
        session,
        at=at,
        model_name=row.model_name,
        version=row.version,
        action=action,
        actor=actor.user,
        role=actor.role,
        from_stage=row.stage,
        to_stage=to_stage,
        reason=reason,
        evidence=evidence,
    )
