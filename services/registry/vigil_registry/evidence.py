"""The registry's evidence handlers: comparisons, alerts and outcomes consumed from Kafka, and what follows.

The policy promotes an approved, eligible candidate, and rolls back or flags a version on a critical alert.

The policy acts as the principal ``policy`` and decides through the lifecycle part, so its decisions are audited,
go through the one four-eyes function and reach the outbox like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import update
from sqlmodel import col, select

from vigil_contracts.events import AlertRaised, ComparisonSummarized, OutcomeRecorded, Stage, utcnow
from vigil_registry import audit, crud
from vigil_registry.auth import POLICY
from vigil_registry.lifecycle import Lifecycle, four_eyes_hold
from vigil_registry.models import AlertRecord, ComparisonRecord, ModelVersion, Proposal, ProposalStatus, SeenOutcome
from vigil_registry.queries import Queries, policy_of


class Evidence:
    """Handlers of the consumed evidence topics."""

    def __init__(self, queries: Queries, lifecycle: Lifecycle, *, notify: Callable[[], None] | None = None) -> None:
        self.queries = queries
        self.lifecycle = lifecycle
        self.notify = notify or (lambda: None)

    # --- consumed evidence ----------------------------------------------------------------------

    def handle_comparison(self, event: ComparisonSummarized) -> str:
        """Store a comparison; promote the candidate when approved, eligible and the policy auto-promotes.

        Returns what happened: ``duplicate``, ``recorded`` or ``promoted``. Unknown model or version: NotFound.
        """
        with self.queries.session() as session, session.begin():
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
            if row.stage == Stage.SHADOW.value and policy_of(model).auto_promote:
                proposal = crud.open_proposal(session, name=model.name, version=row.version)
                if proposal is not None and proposal.status == ProposalStatus.APPROVED.value:
                    report = self.queries.evaluate(session, model, row)
                    if report.eligible and four_eyes_hold(proposal.proposed_by, proposal.decided_by):
                        reason = f"policy: eligible on comparison {event.event_id}, approved by {proposal.decided_by}"
                        self.lifecycle.promote_within(session, model, row, proposal, POLICY, report, reason)
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
        with self.queries.session() as session, session.begin():
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
            policy = policy_of(model)
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
                    self.lifecycle.rollback_within(session, model.name, POLICY, reason, evidence)
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
        with self.queries.session() as session, session.begin():
            for event in events:
                if session.get(SeenOutcome, event.event_id) is not None:
                    continue
                session.add(SeenOutcome(event_id=event.event_id, outcome=event.outcome, received_at=utcnow()))
                new += 1
            if new:
                session.flush()
                session.exec(
                    update(ModelVersion)
                    .where(col(ModelVersion.stage).in_([Stage.SHADOW.value, Stage.PRODUCTION.value]))
                    .values(outcomes_labelled=ModelVersion.outcomes_labelled + new)
                )
        if new:
            # The outcomes may be what an approved candidate was waiting for (its comparison came first).
            self.promote_ready_candidates()
        return new

    def promote_ready_candidates(self) -> list[str]:
        """Promote every approved shadow candidate that is now eligible, where its policy auto-promotes."""
        promoted: list[str] = []
        with self.queries.session() as session:
            approved = session.exec(select(Proposal).where(Proposal.status == ProposalStatus.APPROVED.value)).all()
            keys = [(p.model_name, p.version) for p in approved]
        for name, version in keys:
            with self.queries.session() as session, session.begin():
                model = crud.get_model(session, name=name, lock=True)
                row = crud.find_version(session, name=name, version=version)
                proposal = crud.open_proposal(session, name=name, version=version)
                if (
                    row is None
                    or row.stage != Stage.SHADOW.value
                    or proposal is None
                    or proposal.status != ProposalStatus.APPROVED.value
                    or not four_eyes_hold(proposal.proposed_by, proposal.decided_by)
                    or not policy_of(model).auto_promote
                ):
                    continue
                report = self.queries.evaluate(session, model, row)
                if report.eligible:
                    reason = f"policy: eligible once outcomes arrived, approved by {proposal.decided_by}"
                    self.lifecycle.promote_within(session, model, row, proposal, POLICY, report, reason)
                    promoted.append(f"{name}:{version}")
        if promoted:
            self.notify()
        return promoted
