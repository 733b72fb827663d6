"""The registry's reads: models, versions, proposals, evidence history, the audit trail, policy reports.

Nothing here changes state; every method opens its own session (the lifecycle and evidence parts use
:meth:`Queries.evaluate` and :meth:`Queries.version_public` inside their own transactions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from vigil_contracts.events import Stage
from vigil_registry import audit, crud
from vigil_registry.artifacts import ArtifactStore
from vigil_registry.errors import NotFound
from vigil_registry.models import (
    AlertRecord,
    AuditEntry,
    ComparisonRecord,
    ModelPublic,
    ModelVersion,
    ModelVersionPublic,
    ProposalPublic,
    RegisteredModel,
    SeenOutcome,
)
from vigil_registry.policy import PolicyReport, PromotionPolicy
from vigil_registry.policy import evaluate as evaluate_policy

ADAPTED_TAG = "site-adapted"
"""Tag of versions registered by site adaptation (``vigil adapt-loop``); the adaptation policy counts from them."""


def policy_of(model: RegisteredModel) -> PromotionPolicy:
    """A model's effective policy (its overrides over the defaults)."""
    return PromotionPolicy.model_validate(model.policy or {})


class Queries:
    """Reads of the registry's state."""

    def __init__(self, engine: Engine, store: ArtifactStore, *, artifact_url: Callable[[str, str], str]) -> None:
        self.engine = engine
        self.store = store
        self.artifact_url = artifact_url

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
            policy=policy_of(model).model_dump(mode="json"),
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
            return self.evaluate(session, model, row)

    def policy(self, name: str) -> PromotionPolicy:
        """A model's effective policy."""
        with self.session() as session:
            return policy_of(crud.get_model(session, name=name))

    def adaptation(self, name: str) -> dict[str, Any]:
        """Whether site adaptation is due for a model by its policy, and why; no stay or patient is named.

        The registry decides; it does not train: ``vigil adapt-loop`` asks here and does the work.
        """
        with self.session() as session:
            model = crud.get_model(session, name=name)
            policy = policy_of(model)
            versions = session.exec(select(ModelVersion).where(ModelVersion.model_name == name)).all()
            adapted = [v.created_at for v in versions if ADAPTED_TAG in (v.tags or [])]
            production = crud.production_version(session, name=name)
            since = max(adapted) if adapted else (production.created_at if production is not None else None)
            query = select(SeenOutcome.event_id)
            if since is not None:
                query = query.where(col(SeenOutcome.received_at) > since)
            new_stays = len(session.exec(query).all())
            open_alerts: list[str] = []
            if production is not None:
                rows = session.exec(
                    select(AlertRecord)
                    .where(AlertRecord.model_name == name, AlertRecord.model_version == production.version)
                    .order_by(col(AlertRecord.occurred_at), col(AlertRecord.id))
                ).all()
                latest = {r.alert_key: r for r in rows}
                open_alerts = sorted(
                    k for k, r in latest.items() if r.state == "open" and r.kind in policy.adapt_on_alert_kinds
                )
        reasons = []
        if new_stays >= policy.adapt_min_new_stays:
            reasons.append(f"{new_stays} new labelled stays (policy: {policy.adapt_min_new_stays})")
        if open_alerts:
            reasons.append(f"open alerts on the production version: {', '.join(open_alerts)}")
        return {
            "model": name,
            "due": bool(reasons),
            "reasons": reasons,
            "new_labelled_stays": new_stays,
            "since": None if since is None else since.isoformat(),
            "production_version": None if production is None else production.version,
            "open_alerts": open_alerts,
            # The adaptation job builds no candidate this policy would hold in shadow for its alarm burden.
            "max_alert_rate_ratio": policy.max_alert_rate_ratio,
        }

    def evaluate(self, session: Session, model: RegisteredModel, row: ModelVersion) -> PolicyReport:
        """The policy's report on a candidate, inside the caller's transaction."""
        live = crud.production_version(session, name=model.name)
        comparison = crud.latest_comparison(session, name=model.name, version=row.version)
        return evaluate_policy(
            policy_of(model),
            model_name=model.name,
            version=row.version,
            comparison=comparison.payload if comparison else None,
            live_version=live.version if live and live.version != row.version else None,
            registry_outcomes=row.outcomes_labelled,
            open_critical_alerts=crud.open_critical_alerts(session, name=model.name, version=row.version),
        )
