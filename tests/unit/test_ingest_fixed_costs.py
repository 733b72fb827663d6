"""The cheaper paths of ingest answer exactly what the plain ones did (issue 18 item 7, issue 15 item 2)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.factories import fhir_bundle
from vigil_ingest.api.routes.fhir import _bundle_answer, _encoded_answer
from vigil_ingest.mapping import Mapper
from vigil_runtime.producer import ACK_CHUNK, _acknowledged

pytestmark = pytest.mark.unit


def test_an_answer_encoded_entry_by_entry_is_the_same_bytes_as_one_call() -> None:
    result = Mapper().map_payload(fhir_bundle(1_200, prefix="pieces"))
    fresh = {e.event_id for e in result.events[::2]}  # some created, some already published: both answer shapes
    for transaction in (True, False):
        body = _bundle_answer(result, fresh, transaction)
        assert _encoded_answer(result, fresh, transaction) == orjson.dumps(body)
        assert len(body["entry"]) == 1_200


def test_acknowledgements_in_chunks_wait_for_every_one_and_raise_the_first_failure() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[object]] = [loop.create_future() for _ in range(ACK_CHUNK * 2 + 5)]
        waiting = asyncio.ensure_future(_acknowledged(futures))
        for future in futures[:-1]:
            future.set_result(None)
        await asyncio.sleep(0)
        assert not waiting.done()  # the last one is not acknowledged yet
        futures[-1].set_result(None)
        await waiting

        futures = [loop.create_future() for _ in range(ACK_CHUNK * 2)]
        for future in futures[:ACK_CHUNK]:
            future.set_result(None)
        futures[ACK_CHUNK + 1].set_exception(RuntimeError("not acknowledged"))
        with pytest.raises(RuntimeError, match="not acknowledged"):
            await _acknowledged(futures)

        futures = [loop.create_future() for _ in range(ACK_CHUNK * 2)]
        waiting = asyncio.ensure_future(_acknowledged(futures))
        await asyncio.sleep(0)
        waiting.cancel()  # a publish bound ran out: every outstanding acknowledgement is given up, as with one gather
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert all(f.cancelled() for f in futures)

    asyncio.run(run())
