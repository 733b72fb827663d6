"""Which observations partitions this scorer owns, shared by its checkpointer, batch step and rebalance handling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _no_consumer() -> Any:
    return None


@dataclass
class Assignment:
    """The partitions the consumer group gave this process, and the consumer that reads them."""

    owned: set[int] = field(default_factory=set)
    needs_restore: set[int] = field(default_factory=set)
    """Owned partitions whose states must be read back from the changelog before their next record is scored."""
    consumer_of: Callable[[], Any] = _no_consumer
    """The subscriber's aiokafka consumer (lag, commits, rewinds), once the broker has started."""
