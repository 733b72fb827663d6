"""Replication that survives the loss of a broker, and the start-up check that refuses anything less.

On a cluster of three or more brokers every Vigil topic has three replicas and ``min.insync.replicas=2``, and
every producer waits for ``acks=all``: an acknowledged record is then on two brokers at least, and one broker
can fail (or restart for an upgrade) without losing an acknowledged record or stopping writes. Kafka's own
defaults (replication factor 1, ``min.insync.replicas=1``, ``acks=1`` before clients 3.0) lose acknowledged
records with one disk. The rule, as a pure function over what the cluster reports (:func:`unsafe_replication`),
is run by every service at start (``vigil_runtime.service``'s lifespan): outside
development mode a service refuses to start on an unsafe combination and says which topic is wrong. A
single-broker cluster (a laptop, the compose file, the test broker) cannot replicate and is allowed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vigil_contracts.topics import Topic
from vigil_runtime.settings import VigilSettings

log = logging.getLogger(__name__)

PRODUCER_ACKS = "all"
"""What every Vigil producer waits for (``make_broker``, ``AckedProducer``); the check refuses anything else."""

SAFE_REPLICATION = 3
"""Replicas per partition wherever the cluster has that many brokers."""


def default_replication(brokers: int) -> int:
    """The replication factor Vigil gives its topics on a cluster of ``brokers``: three, or all there are."""
    return max(1, min(SAFE_REPLICATION, brokers))


def min_insync_for(replication_factor: int) -> int:
    """``min.insync.replicas`` for a replication factor: 2 with three replicas or more (one may fail), else 1.

    Two replicas and ``min.insync.replicas=2`` would stop every write when either broker stops, so a topic
    with fewer than three replicas keeps 1 (a two-broker cluster is not a supported production layout).
    """
    return 2 if replication_factor >= SAFE_REPLICATION else 1


@dataclass(frozen=True)
class TopicReplication:
    """What the cluster reports for one topic."""

    name: str
    replication_factor: int
    """The fewest replicas of any of its partitions."""
    min_insync_replicas: int | None
    """The effective ``min.insync.replicas`` (topic override or broker default); None where not read."""


class UnsafeReplication(RuntimeError):
    """The cluster's topics or this service's producers could lose acknowledged records."""


def unsafe_replication(brokers: int, topics: Iterable[TopicReplication], *, acks: str | int) -> list[str]:
    """Every reason the combination is unsafe, one sentence each naming the topic (empty when it is safe)."""
    problems: list[str] = []
    if str(acks) not in ("all", "-1"):
        problems.append(f"producers use acks={acks}: an acknowledged record may exist on one broker only; use acks=all")
    wanted = default_replication(brokers)
    for topic in topics:
        if topic.replication_factor < wanted:
            problems.append(
                f"topic {topic.name} has replication factor {topic.replication_factor} on a cluster of {brokers} "
                f"brokers: one broker lost loses its records; it needs {wanted}"
            )
        if topic.replication_factor < SAFE_REPLICATION or topic.min_insync_replicas is None:
            continue
        needed = min_insync_for(topic.replication_factor)
        if topic.min_insync_replicas < needed:
            problems.append(
                f"topic {topic.name} has min.insync.replicas={topic.min_insync_replicas} with "
                f"{topic.replication_factor} replicas: acks=all is then satisfied by one broker; it needs {needed}"
            )
        elif topic.min_insync_replicas >= topic.replication_factor:
            problems.append(
                f"topic {topic.name} has min.insync.replicas={topic.min_insync_replicas} with "
                f"{topic.replication_factor} replicas: one broker down stops every write; it needs {needed}"
            )
    return problems


def enforce(problems: Sequence[str], *, development: bool, service: str) -> None:
    """Refuse to start on any problem outside development mode; in development mode, warn once per problem."""
    if not problems:
        return
    if development:
        for problem in problems:
            log.warning("unsafe replication allowed in development mode", extra={"service": service, "reason": problem})
        return
    raise UnsafeReplication(
        f"{service} refuses to start: " + "; ".join(problems) + " (development mode allows it: VIGIL_DEVELOPMENT=true)"
    )


# Kafka protocol error codes the check meets on a secured cluster (a principal sees only its own topics).
_UNKNOWN_TOPIC = 3
_TOPIC_AUTHORIZATION_FAILED = 29


async def describe_replication(
    settings: VigilSettings, topics: Iterable[Topic] | None = None
) -> tuple[int, list[TopicReplication]]:
    """The number of brokers and the replication of the stack's topics that this principal may see.

    ``min.insync.replicas`` is read only where it matters (three brokers or more): it needs the
    DescribeConfigs ACL that ``vigil_contracts.access.bindings_for`` grants on each topic a principal uses.
    """
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import for_code

    names = settings.topics
    wanted = [names.name(t) for t in (topics if topics is not None else Topic)]
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs(), client_id="vigil-replication-check")
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        brokers = len(cluster["brokers"])
        described = await admin.describe_topics(wanted)
        replicas: dict[str, int] = {}
        for topic in described:
            if topic["error_code"] in (_UNKNOWN_TOPIC, _TOPIC_AUTHORIZATION_FAILED):
                continue  # not this service's topic, or not created yet (ensure_topics ran before)
            if topic["error_code"]:
                raise for_code(topic["error_code"])(f"describing topic {topic['topic']} failed")
            if not topic["partitions"]:
                # Just created: its partitions are not in the metadata yet. The caller retries (service.py).
                raise RuntimeError(f"topic {topic['topic']} has no partitions in the metadata yet")
            replicas[topic["topic"]] = min(len(p["replicas"]) for p in topic["partitions"])
        min_isr: dict[str, int] = {}
        if brokers >= SAFE_REPLICATION and replicas:
            wanted_config = {"min.insync.replicas": None}
            resources = [ConfigResource(ConfigResourceType.TOPIC, name, wanted_config) for name in replicas]
            for response in await admin.describe_configs(resources):
                for error_code, message, _type, name, entries in response.resources:
                    if error_code:
                        raise for_code(error_code)(f"reading min.insync.replicas of topic {name} failed: {message}")
                    for entry in entries:
                        if entry[0] == "min.insync.replicas":
                            min_isr[name] = int(entry[1])
    finally:
        await admin.close()
    return brokers, [TopicReplication(n, rf, min_isr.get(n)) for n, rf in sorted(replicas.items())]


async def verify_replication(settings: VigilSettings, *, service: str, acks: str | int = PRODUCER_ACKS) -> None:
    """The start-up check: describe the cluster, then refuse an unsafe combination outside development mode."""
    brokers, topics = await describe_replication(settings)
    enforce(unsafe_replication(brokers, topics, acks=acks), development=settings.development, service=service)
