"""A large FHIR body is parsed off the loop in chunks, to the same document, with the collector paused meanwhile."""

from __future__ import annotations

import gc

import orjson
import pytest

from tests.factories import fhir_bundle
from vigil_ingest.large_body import LARGE_BODY_BYTES, gc_paused, parse_large

pytestmark = pytest.mark.unit


async def test_the_chunked_parse_gives_what_orjson_gives() -> None:
    body = orjson.dumps(fhir_bundle(3_000, prefix="lb"))
    assert len(body) > LARGE_BODY_BYTES
    assert await parse_large(body) == orjson.loads(body)


async def test_a_large_body_that_is_not_json_is_a_value_error() -> None:
    body = orjson.dumps(fhir_bundle(3_000, prefix="lb"))[:-5]
    with pytest.raises(ValueError):
        await parse_large(body)


def test_the_collector_is_paused_while_any_large_body_is_in_flight_and_resumes_after_the_last() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer request is still in flight
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a failed request resumes the collector too")
    assert gc.isenabled()
