"""Partition assignment for a consumer group whose state is one piece: every partition to one member.

Drift's detectors judge the readings of every partition together (a window per feature over the whole stream,
:mod:`vigil_drift.core`), so its state cannot be split by partition without changing which alerts open. Two or
more drift instances in one group therefore run active/standby: this assignor gives every partition of every
subscribed topic to one member, the others hold none and take over (restoring the state from the changelog) when
it leaves. Kafka's own assignors would split the partitions, and with them the data one state must see: two
instances would each judge half the stream and overwrite each other's snapshot.

The member that held the partitions keeps them when another joins (its metadata says it held them), so a standby
joining costs the active one a checkpoint and a restore (aiokafka rebalances eagerly: every member gives up its
partitions before any assignment), not a move.

aiokafka 0.14 implements the eager rebalance protocol only (RoundRobin, Range and Sticky assignors; no
cooperative-sticky, no incremental rebalancing, no KIP-848 consumer protocol): with it, every rebalance revokes
every partition, and the changelogs checkpoint on revocation and restore on assignment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

HELD = b"held"
"""A member's userdata when it held the partitions before this rebalance."""


class OneOwnerAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """Every partition to one member; the member that held them keeps them.

    aiokafka calls assignors as classes: :func:`one_owner_assignor` makes one class per consumer, so what a member
    held is its own.
    """

    name = "vigil-one-owner"
    version = 0
    holding = False
    """Whether this member was given the partitions at the last assignment."""

    @classmethod
    def assign(
        cls, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        """The holder (or, with none, the first member by id) gets every partition; the others none."""
        holders = sorted(m for m, meta in members.items() if meta.user_data == HELD)
        owner = holders[0] if holders else min(members)
        topics: set[str] = set()
        for meta in members.values():
            topics.update(meta.subscription)
        owned = [
            (topic, sorted(cluster.partitions_for_topic(topic) or ()))
            for topic in sorted(topics & set(members[owner].subscription))
        ]
        return {
            member: ConsumerProtocolMemberAssignment(cls.version, owned if member == owner else [], b"")
            for member in members
        }

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        """The subscription, and whether this member held the partitions."""
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), HELD if cls.holding else b"")

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Remember whether this member holds the partitions now."""
        cls.holding = any(partitions for _, partitions in assignment.assignment)


def one_owner_assignor() -> type[OneOwnerAssignor]:
    """A :class:`OneOwnerAssignor` of one consumer's own (its ``holding`` flag is per member)."""
    return type("OneOwnerAssignor", (OneOwnerAssignor,), {"holding": False})
