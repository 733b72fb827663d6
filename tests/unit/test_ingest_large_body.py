"""A large FHIR body is parsed off the loop in chunks, to the same document, with the collector paused meanwhile."""

from __future__ import annotations

import gc
import itertools

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.factories import fhir_bundle
from tests.unit.test_ingest_http import EHR_TOKEN, FHIR, FakePublisher
from vigil_ingest.api import mount_fhir
from vigil_ingest.core import IngestCore
from vigil_ingest.large_body import LARGE_BODY_BYTES, gc_paused, parse_large
from vigil_ingest.mapping import UTF8_BOM
from vigil_ingest.settings import Settings
from vigil_runtime.auth import Authenticator, Grant, TokenTable
from vigil_runtime.metrics import ServiceMetrics

pytestmark = pytest.mark.unit


async def test_the_chunked_parse_gives_what_orjson_gives() -> None:
    body = orjson.dumps(fhir_bundle(3_000, prefix="lb"))
    assert len(body) > LARGE_BODY_BYTES
    assert await parse_large(body) == orjson.loads(body)


async def test_the_body_is_parsed_from_its_pieces_as_received_a_leading_bom_dropped() -> None:
    body = orjson.dumps(fhir_bundle(3_000, prefix="lb"))
    with_bom = UTF8_BOM + body
    # Uneven pieces, the BOM itself split over the first two, one empty piece, some larger than a parser chunk.
    cuts = [0, 1, 2, 2, 70_000, 70_001, 200_000, len(with_bom) - 3, len(with_bom)]
    pieces = [with_bom[a:b] for a, b in itertools.pairwise(cuts)]
    assert b"".join(pieces) == with_bom
    assert await parse_large(pieces) == orjson.loads(body)
    assert await parse_large(with_bom) == orjson.loads(body)
    # Only a leading BOM is dropped: one after the opening brace is not JSON.
    with pytest.raises(ValueError):
        await parse_large([body[:1], UTF8_BOM, body[1:]])


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


def test_a_large_bundle_over_http_is_mapped_like_a_small_one_and_bad_json_is_not_echoed() -> None:
    settings = Settings(topic_prefix="unit.")  # the default 16 MB body limit
    publisher = FakePublisher()
    app = FastAPI()
    app.state.auth = Authenticator(TokenTable({EHR_TOKEN: Grant(user="ehr", scopes=["system/*.write"])}))
    mount_fhir(app, IngestCore(settings, publisher, ServiceMetrics("ingest")), settings)  # type: ignore[arg-type]
    client = TestClient(app, headers={"Authorization": f"Bearer {EHR_TOKEN}"})
    body = orjson.dumps(fhir_bundle(3_000, prefix="lbhttp"))
    assert len(body) > LARGE_BODY_BYTES
    answer = client.post("/fhir", content=body, headers=FHIR)
    assert answer.status_code == 200, answer.text[:300]
    assert [e["response"]["status"] for e in answer.json()["entry"]] == ["201 Created"] * 3_000
    assert len(publisher.published) >= 3_000
    broken = body[:-200] + b'"secret-marker-4711"'
    refused = client.post("/fhir", content=broken, headers=FHIR)
    assert refused.status_code == 400
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert "secret-marker-4711" not in refused.text  # the parser's snippet of the body is not sent back
    assert gc.isenabled()  # the collector resumed after both requests
