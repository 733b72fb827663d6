"""Small payloads are mapped on the loop only while the mapping thread is idle; everything else in the thread."""

from __future__ import annotations

import asyncio
import copy
import threading
from typing import Any

import pytest

from tests.factories import fhir_bundle
from tests.unit.test_ingest_http import FakePublisher
from vigil_ingest.core import INLINE_ENTRIES, IngestCore
from vigil_ingest.settings import Settings
from vigil_runtime.metrics import ServiceMetrics

pytestmark = pytest.mark.unit


def _core() -> tuple[IngestCore, list[str]]:
    core = IngestCore(Settings(topic_prefix="unit."), FakePublisher(), ServiceMetrics("ingest"))  # type: ignore[arg-type]
    threads: list[str] = []
    real = core.mapper.map_payload

    def spy(payload: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(payload)

    core.mapper.map_payload = spy  # type: ignore[method-assign,assignment]
    return core, threads


def _with_components(n: int) -> dict[str, Any]:
    obs = copy.deepcopy(fhir_bundle(1, prefix="c")["entry"][0]["resource"])
    quantity = obs.pop("valueQuantity")
    obs["code"] = {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}
    obs["component"] = [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": quantity}
    ] * n
    return obs


async def test_a_small_payload_is_mapped_on_the_loop_and_a_large_one_in_the_thread() -> None:
    core, threads = _core()
    loop_thread = threading.current_thread().name
    small, _ = await core.map_request(fhir_bundle(INLINE_ENTRIES, prefix="s"))
    large, _ = await core.map_request(fhir_bundle(INLINE_ENTRIES + 1, prefix="l"))
    many_components, _ = await core.map_request(_with_components(INLINE_ENTRIES + 1))
    half = INLINE_ENTRIES // 2 + 1  # two inner Bundles: few entries at the top, too many in all
    nested = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": fhir_bundle(half, prefix=f"n{i}")} for i in range(2)],
    }
    await core.map_request(nested)
    assert threads == [loop_thread, "ingest-mapping_0", "ingest-mapping_0", "ingest-mapping_0"]
    assert len(small.events) == INLINE_ENTRIES and len(large.events) == INLINE_ENTRIES + 1
    assert many_components.rejections or many_components.events  # mapped (whatever it says), in the thread
    await core.close()


async def test_while_the_thread_has_work_a_small_payload_waits_its_turn_there() -> None:
    core, threads = _core()
    release = threading.Event()
    busy = asyncio.ensure_future(core.in_worker(release.wait, 10))
    await asyncio.sleep(0)
    mapping = asyncio.ensure_future(core.map_request(fhir_bundle(2, prefix="q")))
    await asyncio.sleep(0.05)
    assert not mapping.done()  # queued behind the thread's job, not mapped beside it on the loop
    release.set()
    await busy
    result, _ = await mapping
    assert threads == ["ingest-mapping_0"] and len(result.events) == 2
    again, _ = await core.map_request(fhir_bundle(2, prefix="r"))  # the thread is idle again: on the loop
    assert threads[-1] == threading.current_thread().name and len(again.events) == 2
    await core.close()


async def test_on_the_loop_or_in_the_thread_the_same_payload_maps_to_the_same_events() -> None:
    payload = fhir_bundle(INLINE_ENTRIES, prefix="same")
    inline_core, inline_threads = _core()
    inline, _ = await inline_core.map_request(copy.deepcopy(payload))
    threaded_core, threaded_threads = _core()
    release = threading.Event()
    blocker = asyncio.ensure_future(threaded_core.in_worker(release.wait, 10))
    await asyncio.sleep(0)
    mapping = asyncio.ensure_future(threaded_core.map_request(copy.deepcopy(payload)))  # queued behind the job
    await asyncio.sleep(0)
    release.set()
    await blocker
    threaded, _ = await mapping
    assert inline_threads != threaded_threads
    assert [e.model_dump() for e in inline.events] == [e.model_dump() for e in threaded.events]
    await inline_core.close()
    await threaded_core.close()
