"""The registry's service layer: the state machine, the four-eyes rule, the policy's decisions, the outbox.

Every method runs one database transaction. A decision (a stage change) writes, in that one transaction, the
version's new stage, an audit entry (with its evidence) and the ModelLifecycleChanged event in the outbox
table; the outbox relay publishes it afterwards. So the database stays the source of truth and a crash between
commit and publish loses nothing (the relay publishes it on restart); a crash after publish but before marking
it published republishes it with the same event id, which consumers dedupe.

State machine (``via`` names the only call that may make the move)::

    registered -> shadow (stage), archived (stage), retired (retire)
    shadow     -> production (promote), archived (stage), retired (retire)
    production -> archived (promote of another version, rollback)
    archived   -> shadow (stage), production (rollback), retired (retire)
    retired    -> nothing: a retired version stays archived with its card, metrics and audit trail
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from vigil_contracts.events import (
    AlertRaised,
    ComparisonSummarized,
    LifecycleAction,
    ModelLifecycleChanged,
    OutcomeRecorded,
    Stage,
    deterministic_id,
    utcnow,
)
from vigil_registry import audit, crud
from vigil_registry.artifacts import ArtifactStore, PackageInfo, read_package, unpack_archive
from vigil_registry.auth import POLICY, Principal, require
from vigil_registry.errors import Conflict, Forbidden, InvalidInput, NotEligible, NotFound
from vigil_registry.models import (
    AlertRecord,
    AuditEntry,
    ComparisonRecord,
    ModelPublic,
    ModelVersion,
    ModelVersionPublic,
    OutboxEvent,
    Proposal,
    ProposalPublic,
    ProposalStatus,
    RegisteredModel,
    SeenOutcome,
)
from vigil_registry.policy import PolicyReport, PromotionPolicy, evaluate
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


@dataclass
class Decision:
    """A stage decision made within a transaction, for the caller's response."""

    entry: AuditEntry
    event: ModelLifecycleChanged


class Registry:
    """The registry's core, usable without Kafka or HTTP (``notify`` wakes the outbox relay after commits)."""

    def __init__(
        self,
        engine: Engine,
        store: ArtifactStore,
        *,
        artifact_url: Callable[[str, str], str],
        notify: Callable[[], None] | None = None,
        max_upload_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.engine = engine
        self.store = store
        self.artifact_url = artifact_url
        self.notify = notify or (lambda: None)
        self.max_upload_bytes = max_upload_bytes

    # --- reading --------------------------------------------------------------------------------

    def session(self) -> Session:
        """A session whose objects stay readable after commit."""
        return Session(self.engine, expire_on_commit=False)

    def version_public(self, row: ModelVersion) -> ModelVersionPublic:
        """The API shape of a version."""
        data = row.model_dump()
        data["stage"] = Stage(row.stage)
        data["artifact_url"] = self.artifact_url(row.model_name, row.version)
        return ModelVersionPublic.model_validate(data)

    def list_models(self) -> list[ModelPublic]:
        """Every model with its versions' stages."""
        with self.session() as session:
            return [self._model_public(session, m) for m in crud.list_models(session)]

    def show_model(self, name: str) -> ModelPublic:
        """One model with its versions' stages."""
        with self.session() as session:
            return self._model_public(session, crud.get_model(session, name=name))

    def _model_public(self, session: Session, model: RegisteredModel) -> ModelPublic:
        versions = crud.list_versions(session, name=model.name)
        production = next((v.version for v in versions if v.stage == Stage.PRODUCTION.value), None)
        return ModelPublic(
            name=model.name,
            description=model.description,
            created_by=model.created_by,
            created_at=model.created_at,
            production_version=production,
            versions={v.version: Stage(v.stage) for v in versions},
            policy=self._policy(model).model_dump(mode="json"),
        )

    def list_versions(self, name: str) -> list[ModelVersionPublic]:
        """A model's versions."""
        with self.session() as session:
            crud.get_model(session, name=name)
            return [self.version_public(v) for v in crud.list_versions(session, name=name)]

    def get_version(self, name: str, version: str) -> ModelVersionPublic:
        """One version."""
        with self.session() as session:
            return self.version_public(crud.get_version(session, name=name, version=version))

    def production(self, name: str) -> ModelVersionPublic:
        """The model's production version; NotFound when it has none."""
        with self.session() as session:
            crud.get_model(session, name=name)
            row = crud.production_version(session, name=name)
            if row is None:
                raise NotFound(f"model {name!r} has no production version")
            return self.version_public(row)

    def artifact(self, name: str, version: str) -> tuple[bytes, ModelVersionPublic]:
        """A version's package as a tar.gz, and the version (its digests go in response headers)."""
        public = self.get_version(name, version)
        try:
            return self.store.archive(public.package_sha256), public
        except FileNotFoundError as error:
            raise NotFound(f"the artifact of {name} {version} is missing from the store") from error

    def history(self, name: str, version: str) -> dict[str, Any]:
        """A version's evidence over time: every comparison and alert received about it (kept after retirement)."""
        with self.session() as session:
            row = crud.get_version(session, name=name, version=version)
            comparisons = session.exec(
                select(ComparisonRecord)
                .where(ComparisonRecord.model_name == name, ComparisonRecord.candidate_version == version)
                .order_by(col(ComparisonRecord.occurred_at), col(ComparisonRecord.id))
            ).all()
            alerts = session.exec(
                select(AlertRecord)
                .where(AlertRecord.model_name == name, AlertRecord.model_version == version)
                .order_by(col(AlertRecord.occurred_at), col(AlertRecord.id))
            ).all()
            return {
                "model_name": name,
                "version": version,
                "stage": row.stage,
                "registered_metrics": row.metrics,
                "outcomes_labelled": row.outcomes_labelled,
                "comparisons": [c.payload for c in comparisons],
                "alerts": [{**a.payload, "action_taken": a.action_taken} for a in alerts],
            }

    def proposals(self, name: str) -> list[ProposalPublic]:
        """A model's proposals, newest first."""
        with self.session() as session:
            crud.get_model(session, name=name)
            return [ProposalPublic.model_validate(p.model_dump()) for p in crud.list_proposals(session, name=name)]

    def audit_log(self, name: str | None = None, version: str | None = None) -> list[AuditEntry]:
        """Audit entries in chain order."""
        with self.session() as session:
            return list(crud.audit_entries(session, name=name, version=version))

    def verify_audit(self) -> audit.Verification:
        """Walk the whole hash chain."""
        with self.session() as session:
            return audit.verify(session)

    def eligibility(self, name: str, version: str) -> PolicyReport:
        """The policy's report on a candidate now."""
        with self.session() as session:
            model = crud.get_model(session, name=name)
            row = crud.get_version(session, name=name, version=version)
            return self._evaluate(session, model, row)

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
            with self.session() as session, session.begin():
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
                return self.version_public(existing)
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
        return self.version_public(row)

    def set_stage(self, actor: Principal, name: str, version: str, to: Stage, reason: str = "") -> ModelVersionPublic:
        """Move a version to ``shadow`` or ``archived`` (production and retirement have their own calls)."""
        require(actor, "stage")
        if to not in (Stage.SHADOW, Stage.ARCHIVED):
            via = {Stage.PRODUCTION: "promote or rollback", Stage.RETIRED: "retire"}.get(to, "nothing")
            raise Conflict(f"a version is moved to {to.value} by {via}, not by a stage change")
        with self.session() as session, session.begin():
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
            result = self.version_public(row)
        self.notify()
        return result

    def retire(self, actor: Principal, name: str, version: str, reason: str) -> ModelVersionPublic:
        """Retire a version for good, with its reason; its card, metrics and audit trail stay."""
        require(actor, "retire")
        if not reason.strip():
            raise Conflict("retirement needs a reason")
        with self.session() as session, session.begin():
            crud.get_model(session, name=name, lock=True)
            row = crud.get_version(session, name=name, version=version)
            current = Stage(row.stage)
            check_transition(current, Stage.RETIRED, "retire")
            now = utcnow()
            row.retired_reason = reason
            self._move(row, Stage.RETIRED, reason, now)
            self._decide(session, row, LifecycleAction.RETIRED, current, Stage.RETIRED, actor, reason=reason, at=now)
            self._withdraw_proposals(session, name, version, "version retired")
            result = self.version_public(row)
        self.notify()
        return result

    # --- proposals, approvals, promotion, rollback ---------------------------------------------

    def propose(self, actor: Principal, name: str, version: str, reason: str = "") -> ProposalPublic:
        """A data scientist proposes a shadow version for production."""
        require(actor, "propose")
        with self.session() as session, session.begin():
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
            audit.append(
                session,
                at=now,
                model_name=name,
                version=version,
                action="proposed",
                actor=actor.user,
                role=actor.role,
                from_stage=row.stage,
                to_stage=Stage.PRODUCTION.value,
                reason=reason,
                evidence={"proposal_id": proposal.id},
            )
            return ProposalPublic.model_validate(proposal.model_dump())

    def approve(self, actor: Principal, name: str, version: str, reason: str = "") -> ProposalPublic:
        """A clinical approver other than the proposer approves the open proposal.

        With the policy's ``auto_promote`` an eligible candidate is promoted at once.
        """
        require(actor, "approve")
        with self.session() as session, session.begin():
            model = crud.get_model(session, name=name, lock=True)
            row = crud.get_version(session, name=name, version=version)
            proposal = crud.open_proposal(session, name=name, version=version)
            if proposal is None or proposal.status != ProposalStatus.OPEN.value:
                raise Conflict(f"{name} {version} has no open proposal to approve")
            if proposal.proposed_by == actor.user:
                raise Forbidden("four-eyes rule: the approver must not be the proposer")
            now = utcnow()
            proposal.status = ProposalStatus.APPROVED.value
            proposal.decided_by = actor.user
            proposal.decided_at = now
            proposal.decision_reason = reason
            session.add(proposal)
            report = self._evaluate(session, model, row)
            audit.append(
                session,
                at=now,
                model_name=name,
                version=version,
                action="approved",
                actor=actor.user,
                role=actor.role,
                from_stage=row.stage,
                to_stage=Stage.PRODUCTION.value,
                reason=reason,
                evidence={"proposal_id": proposal.id, "proposed_by": proposal.proposed_by, "policy": report.as_dict()},
            )
            if self._policy(model).auto_promote and report.eligible:
                self._promote(session, model, row, proposal, actor, report, f"approved by {actor.user}; eligible")
            result = ProposalPublic.model_validate(proposal.model_dump())
        self.notify()
        return result

    def reject(self, actor: Principal, name: str, version: str, reason: str) -> ProposalPublic:
        """A clinical approver refuses the proposal (the version stays in shadow)."""
        require(actor, "reject")
        with self.session() as session, session.begin():
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
            audit.append(
                session,
                at=now,
                model_name=name,
                version=version,
                action="rejected",
                actor=actor.user,
                role=actor.role,
                from_stage=row.stage,
                to_stage=row.stage,
                reason=reason,
                evidence={"proposal_id": proposal.id},
            )
            return ProposalPublic.model_validate(proposal.model_dump())

    def promote(self, actor: Principal, name: str, version: str, reason: str = "") -> ModelVersionPublic:
        """Promote an approved, eligible shadow version to production (the previous one is archived)."""
        require(actor, "promote")
        with self.session() as session, session.begin():
            model = crud.get_model(session, name=name, lock=True)
            row = crud.get_version(session, name=name, version=version)
            check_transition(Stage(row.stage), Stage.PRODUCTION, "promote")
            proposal = crud.open_proposal(session, name=name, version=version)
            if proposal is None or proposal.status != ProposalStatus.APPROVED.value:
                raise Forbidden("promotion to production needs a proposal approved by a clinical approver")
            if proposal.decided_by == proposal.proposed_by:
                raise Forbidden("four-eyes rule: the approval was given by the proposer")
            report = self._evaluate(session, model, row)
            if not report.eligible:
                raise NotEligible(f"not eligible: {', '.join(report.failed)}", report.as_dict())
            self._promote(session, model, row, proposal, actor, report, reason)
            result = self.version_public(row)
        self.notify()
        return result

    def rollback(
        self, actor: Principal, name: str, reason: str, *, evidence: dict[str, Any] | None = None
    ) -> ModelVersionPublic:
        """Put the version the current production one replaced back into production, in one call."""
        require(actor, "rollback")
        with self.session() as session, session.begin():
            crud.get_model(session, name=name, lock=True)
            result = self._rollback(session, name, actor, reason, evidence or {})
        self.notify()
        return result

    def _rollback(
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
        return self.version_public(target)

    def _promote(
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

    # --- policy ---------------------------------------------------------------------------------

    def policy(self, name: str) -> PromotionPolicy:
        """A model's effective policy."""
        with self.session() as session:
            return self._policy(crud.get_model(session, name=name))

    def set_policy(self, actor: Principal, name: str, overrides: dict[str, Any]) -> PromotionPolicy:
        """Replace a model's policy overrides (validated against PromotionPolicy); audited."""
        require(actor, "policy")
        try:
            policy = PromotionPolicy.model_validate(overrides)
        except ValidationError as error:
            raise InvalidInput(f"invalid policy: {describe_error(error)}") from error
        with self.session() as session, session.begin():
            model = crud.get_model(session, name=name, lock=True)
            before = self._policy(model).model_dump(mode="json")
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

    @staticmethod
    def _policy(model: RegisteredModel) -> PromotionPolicy:
        return PromotionPolicy.model_validate(model.policy or {})

    def _evaluate(self, session: Session, model: RegisteredModel, row: ModelVersion) -> PolicyReport:
        live = crud.production_version(session, name=model.name)
        comparison = crud.latest_comparison(session, name=model.name, version=row.version)
        return evaluate(
            self._policy(model),
            model_name=model.name,
            version=row.version,
            comparison=comparison.payload if comparison else None,
            live_version=live.version if live and live.version != row.version else None,
            registry_outcomes=row.outcomes_labelled,
            open_critical_alerts=crud.open_critical_alerts(session, name=model.name, version=row.version),
        )

    # --- consumed evidence ----------------------------------------------------------------------

    def handle_comparison(self, event: ComparisonSummarized) -> str:
        """Store a comparison; promote the candidate when approved, eligible and the policy auto-promotes.

        Returns what happened: ``duplicate``, ``recorded`` or ``promoted``. Unknown model or version: NotFound.
        """
        with self.session() as session, session.begin():
            model = crud.get_model(session, name=event.model_name, lock=True)
            row = crud.get_version(session, name=event.model_name, version=event.candidate_version)
            if session.exec(select(ComparisonRecord.id).where(ComparisonRecord.event_id == event.event_id)).first():
                return "duplicate"
            session.add(
                ComparisonRecord(
                    event_id=event.event_id,
                    model_name=event.model_name,
                    candidate_version=event.candidate_version,
                    live_version=event.live_version,
                    occurred_at=event.occurred_at,
                    received_at=utcnow(),
                    payload=event.model_dump(mode="json"),
                )
            )
            session.flush()
            outcome = "recorded"
            if row.stage == Stage.SHADOW.value and self._policy(model).auto_promote:
                proposal = crud.open_proposal(session, name=model.name, version=row.version)
                if proposal is not None and proposal.status == ProposalStatus.APPROVED.value:
                    report = self._evaluate(session, model, row)
                    if report.eligible and proposal.decided_by != proposal.proposed_by:
                        reason = f"policy: eligible on comparison {event.event_id}, approved by {proposal.decided_by}"
                        self._promote(session, model, row, proposal, POLICY, report, reason)
                        outcome = "promoted"
        self.notify()
        return outcome

    def handle_alert(self, event: AlertRaised) -> str:
        """Store an alert; act on a critical alert of a rollback kind against the production version.

        With the policy's ``auto_rollback`` the model is rolled back, otherwise the version is flagged.
        Returns ``duplicate``, ``ignored``, ``recorded``, ``rolled_back`` or ``flagged``.
        """
        if event.model_name is None:
            return "ignored"
        with self.session() as session, session.begin():
            model = crud.find_model(session, name=event.model_name)
            if model is None:
                return "ignored"
            model = crud.get_model(session, name=event.model_name, lock=True)
            if session.exec(select(AlertRecord.id).where(AlertRecord.event_id == event.event_id)).first():
                return "duplicate"
            record = AlertRecord(
                event_id=event.event_id,
                alert_key=event.alert_key,
                model_name=event.model_name,
                model_version=event.model_version,
                kind=event.kind,
                severity=event.severity.value,
                state=event.state,
                occurred_at=event.occurred_at,
                received_at=utcnow(),
                payload=event.model_dump(mode="json"),
            )
            session.add(record)
            session.flush()
            policy = self._policy(model)
            production = crud.production_version(session, name=model.name)
            triggers = (
                event.state == "open"
                and event.severity.value == "critical"
                and event.kind in policy.rollback_alert_kinds
                and production is not None
                and event.model_version in (None, production.version)
            )
            outcome = "recorded"
            if triggers and production is not None:
                evidence = {"alert": event.model_dump(mode="json"), "policy": policy.model_dump(mode="json")}
                reason = f"critical {event.kind} alert {event.alert_key}"
                target = (
                    crud.find_version(session, name=model.name, version=production.replaced_version)
                    if production.replaced_version is not None
                    else None
                )
                can_roll_back = target is not None and target.stage != Stage.RETIRED.value
                if policy.auto_rollback and can_roll_back:
                    self._rollback(session, model.name, POLICY, reason, evidence)
                    outcome = "rolled_back"
                else:
                    production.flagged = True
                    production.flag_reason = reason
                    session.add(production)
                    why = "auto_rollback is off" if not policy.auto_rollback else "no earlier version to restore"
                    audit.append(
                        session,
                        at=utcnow(),
                        model_name=model.name,
                        version=production.version,
                        action="flagged",
                        actor=POLICY.user,
                        role=POLICY.role,
                        from_stage=production.stage,
                        to_stage=production.stage,
                        reason=f"{reason}; not rolled back: {why}",
                        evidence=evidence,
                    )
                    outcome = "flagged"
                record.action_taken = outcome
                session.add(record)
        self.notify()
        return outcome

    def handle_outcomes(self, events: Sequence[OutcomeRecorded]) -> int:
        """Count new outcomes (deduplicated by event id) for every version in shadow or production."""
        new = 0
        with self.session() as session, session.begin():
            for event in events:
                if session.get(SeenOutcome, event.event_id) is not None:
                    continue
                session.add(SeenOutcome(event_id=event.event_id, outcome=event.outcome, received_at=utcnow()))
                new += 1
            if new:
                session.flush()
                session.exec(
                    update(ModelVersion)  # type: ignore[call-overload]
                    .where(col(ModelVersion.stage).in_([Stage.SHADOW.value, Stage.PRODUCTION.value]))
                    .values(outcomes_labelled=ModelVersion.outcomes_labelled + new)  # type: ignore[operator]
                )
        if new:
            # The outcomes may be what an approved candidate was waiting for (its comparison came first).
            self._promote_ready_candidates()
        return new

    def _promote_ready_candidates(self) -> list[str]:
        """Promote every approved shadow candidate that is now eligible, where its policy auto-promotes."""
        promoted: list[str] = []
        with self.session() as session:
            approved = session.exec(select(Proposal).where(Proposal.status == ProposalStatus.APPROVED.value)).all()
            keys = [(p.model_name, p.version) for p in approved]
        for name, version in keys:
            with self.session() as session, session.begin():
                model = crud.get_model(session, name=name, lock=True)
                row = crud.find_version(session, name=name, version=version)
                proposal = crud.open_proposal(session, name=name, version=version)
                if (
                    row is None
                    or row.stage != Stage.SHADOW.value
                    or proposal is None
                    or proposal.status != ProposalStatus.APPROVED.value
                    or proposal.decided_by == proposal.proposed_by
                    or not self._policy(model).auto_promote
                ):
                    continue
                report = self._evaluate(session, model, row)
                if report.eligible:
                    reason = f"policy: eligible once outcomes arrived, approved by {proposal.decided_by}"
                    self._promote(session, model, row, proposal, POLICY, report, reason)
                    promoted.append(f"{name}:{version}")
        if promoted:
            self.notify()
        return promoted

    # --- outbox ---------------------------------------------------------------------------------

    def pending_events(self, limit: int = 100) -> list[OutboxEvent]:
        """Unpublished lifecycle events, oldest first."""
        with self.session() as session:
            return list(crud.pending_outbox(session, limit=limit))

    def mark_published(self, ids: Sequence[int]) -> None:
        """Record that the broker acknowledged these outbox events."""
        if not ids:
            return
        with self.session() as session, session.begin():
            session.exec(
                update(OutboxEvent)  # type: ignore[call-overload]
                .where(col(OutboxEvent.id).in_(list(ids)))
                .values(published_at=utcnow())
            )

    def mark_failed(self, ids: Sequence[int], error: str) -> None:
        """Count a failed publish attempt (the relay retries)."""
        if not ids:
            return
        with self.session() as session, session.begin():
            session.exec(
                update(OutboxEvent)  # type: ignore[call-overload]
                .where(col(OutboxEvent.id).in_(list(ids)))
                .values(attempts=OutboxEvent.attempts + 1, last_error=error[:500])  # type: ignore[operator]
            )

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
        session.add(
            OutboxEvent(
                event_id=event.event_id,
                key=event.key,
                payload=event.model_dump_json(),
                created_at=now,
            )
        )
        log.info(
            "lifecycle decision",
            extra={"model_name": row.model_name, "model_version": row.version, "action": action.value},
        )
        return Decision(entry, event)
