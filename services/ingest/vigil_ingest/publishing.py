"""Publishing-side memory: which canonical events were durably published (ids), so a repeat publishes once."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TypeVar

from vigil_contracts.events import Event

E = TypeVar("E", bound=Event)


class Deduper:
    """Bounded memory of published event ids (an LRU): the same resource version delivered twice publishes once.

    Ids are remembered only once their events are durably published (``remember``), so a failed publish is
    retried rather than suppressed. After a restart the memory is empty: event ids are deterministic, so
    downstream consumers dedupe what a redelivery republishes.
    """

    def __init__(self, maxsize: int = 200_000) -> None:
        self.maxsize = maxsize
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def fresh(self, events: Iterable[E]) -> tuple[list[E], int]:
        """The events not yet published (first occurrence kept), and how many were duplicates."""
        out: list[E] = []
        batch: set[str] = set()
        dupes = 0
        for event in events:
            eid = event.event_id
            if eid in self._seen or eid in batch:
                dupes += 1
                continue
            batch.add(eid)
            out.append(event)
        return out, dupes

    def remember(self, events: Iterable[Event]) -> None:
        """Record events as durably published."""
        seen = self._seen
        for event in events:
            seen[event.event_id] = None
            seen.move_to_end(event.event_id)
        while len(seen) > self.maxsize:
            seen.popitem(last=False)
