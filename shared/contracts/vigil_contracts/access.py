"""Who may do what on the stack's topics: the Kafka ACL table, as data.

One row per (principal, topic, operation). The native broker's start-up, the compose init service, the
documentation (``docs/security.md``, checked by a unit test) and the security tests all read this table, so
what is documented is what is enforced. Anything not listed is denied: the broker runs with
``allow.everyone.if.no.acl.found=false`` and only the ``admin`` principal is a super user.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from vigil_contracts.topics import Topic, Topics


class Principal(StrEnum):
    """Kafka principals (SCRAM user names) of a Vigil stack."""

    INGEST = "ingest"
    SCORER = "scorer"
    SHADOW = "shadow"
    DRIFT = "drift"
    REGISTRY = "registry"
    EHR = "ehr"
    """The EHR integration feed (and the simulator standing in for it): raw FHIR and delayed outcomes."""
    ANALYST = "analyst"
    """Replay and read-only analysis: reads observations, live scores and outcomes, writes nothing."""
    ADMIN = "admin"
    """The broker's own principal (inter-broker, controller) and the operator's: creates topics and ACLs."""


SERVICE_PRINCIPALS = (Principal.INGEST, Principal.SCORER, Principal.SHADOW, Principal.DRIFT, Principal.REGISTRY)


class Operation(StrEnum):
    """The Kafka operations the table grants (READ and WRITE imply DESCRIBE on the broker)."""

    READ = "Read"
    WRITE = "Write"


@dataclass(frozen=True)
class Grant:
    """``principal`` may ``operation`` the topic ``topic`` (under the stack's prefix)."""

    principal: Principal
    topic: Topic
    operation: Operation


def _grants(principal: Principal, *, reads: tuple[Topic, ...] = (), writes: tuple[Topic, ...] = ()) -> list[Grant]:
    return [Grant(principal, t, Operation.READ) for t in reads] + [Grant(principal, t, Operation.WRITE) for t in writes]


ACL_TABLE: tuple[Grant, ...] = tuple(
    _grants(Principal.EHR, writes=(Topic.FHIR_RAW, Topic.OUTCOMES))
    + _grants(Principal.INGEST, reads=(Topic.FHIR_RAW,), writes=(Topic.OBSERVATIONS, Topic.DEAD_LETTER))
    + _grants(
        Principal.SCORER,
        # The changelog is read back at start to restore feature state.
        reads=(Topic.OBSERVATIONS, Topic.LIFECYCLE, Topic.SCORER_STATE),
        writes=(Topic.SCORES_LIVE, Topic.SCORER_STATE, Topic.DEAD_LETTER),
    )
    + _grants(
        Principal.SHADOW,
        # Shadow reads the live scores to compare against them; it cannot write them. Its changelog is read back
        # on assignment to restore feature state.
        reads=(
            Topic.OBSERVATIONS,
            Topic.SCORES_LIVE,
            Topic.SCORES_SHADOW,
            Topic.OUTCOMES,
            Topic.LIFECYCLE,
            Topic.SHADOW_STATE,
        ),
        writes=(Topic.SCORES_SHADOW, Topic.COMPARISONS, Topic.SHADOW_STATE, Topic.DEAD_LETTER),
    )
    + _grants(
        Principal.DRIFT,
        # Its changelog is read back on assignment to resume the detectors' windows.
        reads=(Topic.OBSERVATIONS, Topic.SCORES_LIVE, Topic.OUTCOMES, Topic.DRIFT_STATE),
        writes=(Topic.ALERTS, Topic.DRIFT_STATE, Topic.DEAD_LETTER),
    )
    + _grants(
        Principal.REGISTRY,
        reads=(Topic.COMPARISONS, Topic.ALERTS, Topic.OUTCOMES),
        writes=(Topic.LIFECYCLE, Topic.DEAD_LETTER),
    )
    + _grants(Principal.ANALYST, reads=(Topic.OBSERVATIONS, Topic.SCORES_LIVE, Topic.OUTCOMES))
)
"""Every grant of a stack; the admin principal is a super user and needs none."""

GROUP_PREFIX = "vigil-"
"""Each service's consumer groups start with ``vigil-<principal>`` (its default ``group_id``)."""

CONSUMER_GROUPS: dict[Principal, str] = {p: f"{GROUP_PREFIX}{p.value}" for p in SERVICE_PRINCIPALS}
"""The consumer-group prefix each service principal may use (and no other)."""


def may(principal: Principal, topic: Topic, operation: Operation) -> bool:
    """Whether the table lets ``principal`` do ``operation`` on ``topic``."""
    return principal is Principal.ADMIN or Grant(principal, topic, operation) in ACL_TABLE


@dataclass(frozen=True)
class AclBinding:
    """One ACL as the broker stores it: ALLOW ``operation`` on a resource for ``User:<principal>`` from any host."""

    principal: str
    resource_type: str
    """``topic``, ``group`` or ``cluster``."""
    resource_name: str
    pattern: str
    """``literal`` or ``prefixed``."""
    operation: str


def bindings_for(topics: Topics) -> list[AclBinding]:
    """The ACLs that enforce :data:`ACL_TABLE` for one stack's topic names, plus each service's consumer group."""
    out = [
        AclBinding(g.principal.value, "topic", topics.name(g.topic), "literal", g.operation.value) for g in ACL_TABLE
    ]
    # Each service reads the configuration (min.insync.replicas) of the topics it uses, for its start-up check of
    # replication (vigil_runtime.replication); reading a configuration changes nothing and reveals no record.
    used = dict.fromkeys((g.principal, g.topic) for g in ACL_TABLE if g.principal in SERVICE_PRINCIPALS)
    out += [AclBinding(p.value, "topic", topics.name(t), "literal", "DescribeConfigs") for p, t in used]
    for principal, group in CONSUMER_GROUPS.items():
        out.append(AclBinding(principal.value, "group", group, "prefixed", "Read"))
    return out


def markdown_table() -> str:
    """The ACL table as Markdown (``docs/security.md`` holds a copy; a unit test keeps them equal)."""
    principals = [p for p in Principal if p is not Principal.ADMIN]
    lines = ["| topic | " + " | ".join(p.value for p in principals) + " |", "|---" * (len(principals) + 1) + "|"]
    for topic in Topic:
        cells = []
        for p in principals:
            ops = [op.value[0] for op in Operation if Grant(p, topic, op) in ACL_TABLE]
            cells.append("/".join(ops) if ops else "-")
        lines.append(f"| `<p>{topic.value}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
