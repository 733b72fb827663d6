"""The registry's core, usable without Kafka or HTTP: four parts, each with one job.

- :class:`~vigil_registry.queries.Queries`: reads (models, versions, history, audit, policy reports);
- :class:`~vigil_registry.lifecycle.Lifecycle`: commands (register, stage, propose, approve, promote, rollback,
  retire, policy), the state machine and the one four-eyes function;
- :class:`~vigil_registry.evidence.Evidence`: handlers of comparisons, alerts and outcomes (the policy's decisions);
- :class:`~vigil_registry.outbox.Outbox`: the lifecycle events decisions leave for the relay to sign and publish.

:class:`Registry` only wires them over one database and one artifact store.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import Session

from vigil_registry.artifacts import ArtifactStore
from vigil_registry.evidence import Evidence
from vigil_registry.lifecycle import TRANSITIONS, Decision, Lifecycle, check_transition, four_eyes
from vigil_registry.outbox import Outbox
from vigil_registry.queries import Queries

__all__ = ["TRANSITIONS", "Decision", "Registry", "check_transition", "four_eyes"]


class Registry:
    """The registry's parts over one database (``notify`` wakes the outbox relay after commits)."""

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
        self.max_upload_bytes = max_upload_bytes
        self.queries = Queries(engine, store, artifact_url=artifact_url)
        self.outbox = Outbox(engine)
        self.lifecycle = Lifecycle(
            self.queries,
            self.outbox,
            store,
            artifact_url=artifact_url,
            notify=notify,
            max_upload_bytes=max_upload_bytes,
        )
        self.evidence = Evidence(self.queries, self.lifecycle, notify=notify)

    def session(self) -> Session:
        """A session whose objects stay readable after commit."""
        return self.queries.session()
