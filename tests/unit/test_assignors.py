"""The one-owner assignor without a broker: every partition to one member, the holder keeping them."""

from __future__ import annotations

from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

from vigil_runtime.assignors import one_owner_assignor

TOPICS = ["obs", "scores", "outcomes"]


class Cluster:
    """What an assignor reads of the cluster's metadata."""

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2} if topic == "obs" else {0}


def _decode(assignment: ConsumerProtocolMemberAssignment) -> ConsumerProtocolMemberAssignment:
    # What goes over the wire and back, as the coordinator hands it to members.
    return ConsumerProtocolMemberAssignment.decode(assignment.encode())


def test_every_partition_goes_to_one_member_and_the_holder_keeps_them() -> None:
    a, b, c = one_owner_assignor(), one_owner_assignor(), one_owner_assignor()
    members = {"m-b": b.metadata(TOPICS), "m-a": a.metadata(TOPICS)}
    first = a.assign(Cluster(), members)
    assert first["m-a"].partitions() and not first["m-b"].partitions()  # nobody held them: the first by id
    assert sorted(first["m-a"].partitions()) == sorted(
        [("obs", 0), ("obs", 1), ("obs", 2), ("scores", 0), ("outcomes", 0)]
    )
    a.on_assignment(_decode(first["m-a"]))
    b.on_assignment(_decode(first["m-b"]))
    assert a.holding and not b.holding

    # A member sorting first joins: the holder keeps the partitions (no move of the state).
    joined = {
        "m-0": c.metadata(TOPICS),
        "m-a": ConsumerProtocolMemberMetadata.decode(a.metadata(TOPICS).encode()),
        "m-b": b.metadata(TOPICS),
    }
    again = c.assign(Cluster(), joined)
    assert len(again["m-a"].partitions()) == 5
    assert not again["m-0"].partitions() and not again["m-b"].partitions()

    # The holder leaves: a standby takes everything.
    left = b.assign(Cluster(), {"m-0": c.metadata(TOPICS), "m-b": b.metadata(TOPICS)})
    assert len(left["m-0"].partitions()) == 5 and not left["m-b"].partitions()


def test_each_consumer_remembers_only_its_own_holding() -> None:
    a, b = one_owner_assignor(), one_owner_assignor()
    a.on_assignment(ConsumerProtocolMemberAssignment(0, [("obs", [0])], b""))
    assert a.holding and not b.holding
    assert a.name == b.name  # one protocol name: the members of a group agree on it
