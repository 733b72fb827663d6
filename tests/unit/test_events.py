"""Event contracts: ids are deterministic, every event round-trips through its wire form, bad input is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests import factories
from vigil_contracts import events as ev
from vigil_runtime.kafka import encode


@pytest.mark.parametrize("kind", sorted(factories.ALL))
def test_every_event_round_trips_through_json(kind: str) -> None:
    event = factories.ALL[kind]()
    back = ev.any_event_adapter.validate_json(encode(event))
    assert back == event
    assert type(back) is type(event)
    assert back.schema_version == 1


def test_every_contract_has_a_factory() -> None:
    made = {type(f()) for f in factories.ALL.values()}
    assert made == set(ev.ALL_EVENT_TYPES)


def test_ids_are_deterministic_and_distinct() -> None:
    a = factories.observation()
    b = factories.observation()
    c = factories.observation(feature="spo2", value=97.0, unit="%")
    assert a.event_id == b.event_id
    assert a.event_id != c.event_id
    s1 = factories.score(probability=0.2)
    s2 = factories.score(probability=0.9)
    assert s1.event_id == s2.event_id, "a score's id is its natural key, not its value: redeliveries dedupe"


def test_canonical_topic_carries_a_discriminated_union() -> None:
    for event in (factories.observation(), factories.retraction(), factories.encounter()):
        assert ev.canonical_event_adapter.validate_json(encode(event)) == event
    with pytest.raises(ValidationError):
        ev.canonical_event_adapter.validate_json(encode(factories.score()))


def test_contracts_refuse_unknown_fields_and_bad_values() -> None:
    raw = factories.observation().model_dump(mode="json")
    with pytest.raises(ValidationError):
        ev.ObservationRecorded.model_validate({**raw, "name": "John Doe"})
    with pytest.raises(ValidationError):
        factories.score(probability=1.5)
