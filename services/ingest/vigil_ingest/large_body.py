"""Parsing a large FHIR body without stalling the event loop (liveness under load, issue 15 item 2).

Two things held the interpreter lock for hundreds of milliseconds while a 15 MB Bundle was handled, so ``/health``
stalled even with mapping in a worker thread:

- ``orjson.loads`` of the whole body is one C call that never lets go of the lock (about 0.3-0.6 s for 15 MB on
  this project's 2-core machine). A large body is therefore parsed in a worker thread by ijson (yajl2 C backend)
  reading through :class:`_Chunks`, whose ``read`` is Python code: between two 16 KB chunks the interpreter may
  switch threads, so the event loop runs every few milliseconds. The body's pieces are read where they are: one
  ``b"".join`` of 15 MB on the loop was itself a stall.
- The cyclic garbage collector: a parse allocates about a million containers, which triggers full collections
  that walk every live object with the lock held (0.28 s measured with one such Bundle alive). A mapped FHIR
  document holds no reference cycles (reference counting frees it), so collection is paused while a large body is
  in flight (:func:`gc_paused`, counted across overlapping requests) and resumes when the last one ends.

- Freeing: dropping the last reference to a parsed 15 MB document (or to the mapping result of its 34,000
  readings) frees a million objects in one cascade, again with the lock held (about 0.24 s on the event loop,
  measured with py-spy). :func:`release` empties such containers piece by piece in a worker thread instead.

Small bodies keep the fast path (``orjson`` on the loop): below :data:`LARGE_BODY_BYTES` the call is short.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ijson

from vigil_ingest.mapping import UTF8_BOM

LARGE_BODY_BYTES = 1 << 20
"""From this size on, a body is parsed off the loop in chunks and the collector paused while it is handled."""
CHUNK_BYTES = 16 * 1024
"""What ijson's C parser is handed per call: it holds the interpreter lock while it parses one, so this bounds how
long the loop may wait for the lock (64 KB chunks of a 15 MB Bundle took several milliseconds each, more on a busy
machine, and a ``/health`` answer waits for the lock several times)."""

_lock = threading.Lock()
_in_flight = 0


class _Chunks:
    """A file-like over the body's pieces as received, its ``read`` Python code: where the interpreter may switch.

    Reads the pieces in place (no 15 MB ``b"".join`` on the loop) and drops a leading UTF-8 BOM, as
    :func:`~vigil_ingest.mapping.strip_bom` does for a joined body.
    """

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self._pieces = pieces
        self._index = 0
        self._at = 0
        prefix = b""
        for piece in pieces:
            prefix += piece[: len(UTF8_BOM) - len(prefix)]
            if len(prefix) == len(UTF8_BOM):
                break
        skip = len(UTF8_BOM) if prefix == UTF8_BOM else 0
        while skip:
            skip -= len(self.read(skip))

    def read(self, size: int = -1) -> bytes:
        limit = CHUNK_BYTES if size < 0 else min(size, CHUNK_BYTES)
        while self._index < len(self._pieces):
            piece = self._pieces[self._index]
            if self._at < len(piece):
                chunk = piece[self._at : self._at + limit]
                self._at += len(chunk)
                return chunk
            self._index += 1
            self._at = 0
        return b""


def _parse_chunked(pieces: Sequence[bytes]) -> Any:
    # use_float: numbers as floats, as orjson gives them (ijson's default is Decimal).
    return next(ijson.items(_Chunks(pieces), "", use_float=True, buf_size=CHUNK_BYTES))


async def parse_large(data: bytes | Sequence[bytes]) -> Any:
    """The JSON document in ``data`` (a body, or its pieces in order), parsed in a worker thread in chunks.

    ``ValueError`` when it is not JSON. A leading UTF-8 BOM is dropped.
    """
    pieces = [data] if isinstance(data, bytes) else data
    try:
        return await asyncio.to_thread(_parse_chunked, pieces)
    except (ijson.JSONError, StopIteration) as error:
        raise ValueError(str(error) or "no JSON document") from error


def _drain(containers: tuple[list[Any] | dict[str, Any], ...]) -> None:
    for container in containers:
        if isinstance(container, dict):
            entries = container.get("entry")
            if isinstance(entries, list):
                _drain((entries,))
            container.clear()
        else:
            while container:
                container.pop()  # one entry's objects at a time: a point where the interpreter may switch


async def release(*containers: list[Any] | dict[str, Any]) -> None:
    """Empty large containers (a parsed Bundle, a result's lists) piece by piece in a worker thread.

    Only for containers nothing else will read: they are left empty.
    """
    await asyncio.to_thread(_drain, containers)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic collector while at least one large body is handled (reference counting still frees)."""
    global _in_flight
    with _lock:
        _in_flight += 1
        if _in_flight == 1:
            gc.disable()
    try:
        yield
    finally:
        with _lock:
            _in_flight -= 1
            if _in_flight == 0:
                gc.enable()
