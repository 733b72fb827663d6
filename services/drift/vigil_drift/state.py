"""Drift's state written out explicitly, so a restarted service resumes with its windows instead of relearning them.

Never pickle: the changelog is a topic, and a topic write must not become code execution on restore. The state is
JSON built from a fixed set of types (numbers, strings, lists, numpy arrays by dtype, ordered dicts, deques,
datetimes and a whitelist of our own dataclasses and River's binary detectors, whose state is a handful of plain
attributes). River's ADWIN keeps its buckets in Rust with no accessor, so :class:`ReplayableADWIN` keeps the last
``ADWIN_KEEP`` values it was fed and a restore re-feeds them, in order, into a fresh ADWIN: the same values through
the same deterministic code give the same buckets, exactly as long as the detector has seen at most ``ADWIN_KEEP``
values (beyond that the restored window starts ``ADWIN_KEEP`` values back; ADWIN only adds evidence to alerts, the
alerts open on effect sizes over windows that are saved whole).

Bounded on purpose: the dedupe memories (event ids already seen) keep their newest ``DEDUPE_KEEP`` entries in the
snapshot. A redelivered record is recognised either way (its offset is after the checkpoint, so it was never
applied to the restored state); only a producer re-sending an event older than that would count it twice.

The snapshot is zlib-compressed and written in chunks under one key (``<group>/<n>`` plus a manifest ``<group>``
naming the chunks' checkpoint), all to changelog partition 0: drift's detectors are one state per consumer group.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import numpy as np
from river.drift import ADWIN
from river.drift.binary import DDM, FHDDM
from river.stats import Mean

from vigil_contracts.headers import DRIFT_STATE_VERSION
from vigil_drift.alerts import ConditionState

ADWIN_KEEP = 10_000
"""Values an ADWIN remembers for its restore (a restore is exact while the detector has seen at most this many)."""
DEDUPE_KEEP = 20_000
"""Newest event ids of each dedupe memory kept in a snapshot."""
CHUNK_BYTES = 512 * 1024
"""Compressed bytes per changelog record (under the broker's default 1 MB message limit)."""
FORMAT = DRIFT_STATE_VERSION  # the changelog's vigil-schema-version header says this one


class ReplayableADWIN:
    """River's ADWIN plus the values it was fed, so its state can be rebuilt by feeding them again."""

    def __init__(self, delta: float = 0.002, keep: int = ADWIN_KEEP) -> None:
        self.delta = delta
        self.adwin = ADWIN(delta=delta)
        self.fed = 0
        self.values: deque[float] = deque(maxlen=keep)

    def update(self, x: float) -> None:
        """Feed one value (River's ``update``)."""
        self.adwin.update(x)
        self.values.append(float(x))
        self.fed += 1

    @property
    def drift_detected(self) -> bool:
        """Whether the last value made ADWIN drop part of its window."""
        return bool(self.adwin.drift_detected)

    @property
    def width(self) -> float:
        """ADWIN's current window width."""
        return float(self.adwin.width)

    def to_state(self) -> dict[str, Any]:
        """The values fed (newest ``keep``), as float64 bytes."""
        return {
            "delta": self.delta,
            "keep": self.values.maxlen,
            "fed": self.fed,
            "values": base64.b64encode(np.asarray(self.values, dtype="<f8").tobytes()).decode(),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> ReplayableADWIN:
        """A fresh ADWIN fed the saved values again, in order."""
        out = cls(float(d["delta"]), int(d["keep"]))
        for x in np.frombuffer(base64.b64decode(d["values"]), dtype="<f8").tolist():
            out.update(x)
        out.fed = int(d["fed"])
        return out


_DATACLASSES: dict[str, type] = {}
_RIVER: dict[str, Any] = {"DDM": DDM, "FHDDM": FHDDM, "Mean": Mean}


def register(cls: type) -> type:
    """Allow a dataclass of ours in snapshots (by its name; nothing else is ever constructed from one)."""
    _DATACLASSES[cls.__name__] = cls
    return cls


register(ConditionState)


def encode(v: Any) -> Any:
    """``v`` as JSON-able data, tagged with its type where JSON would lose it."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, np.ndarray):
        return {"__nd": "object" if v.dtype == object else v.dtype.str, "v": [encode(x) for x in v.tolist()]}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, ReplayableADWIN):
        return {"__adwin": v.to_state()}
    if isinstance(v, OrderedDict):
        return {"__od": [[encode(k), encode(x)] for k, x in v.items()]}
    if isinstance(v, dict):
        return {"__d": [[encode(k), encode(x)] for k, x in v.items()]}
    if isinstance(v, tuple):
        return {"__t": [encode(x) for x in v]}
    if isinstance(v, list):
        return [encode(x) for x in v]
    if isinstance(v, deque):
        return {"__dq": [encode(x) for x in v], "maxlen": v.maxlen}
    if isinstance(v, datetime):
        return {"__dt": v.isoformat()}
    name = type(v).__name__
    if dataclasses.is_dataclass(v) and _DATACLASSES.get(name) is type(v):
        return {"__dc": name, "f": {f.name: encode(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    if _RIVER.get(name) is type(v):
        return {"__river": name, "d": {k: encode(x) for k, x in vars(v).items()}}
    raise TypeError(f"drift state cannot hold a {name}")


def decode(v: Any) -> Any:
    """The inverse of :func:`encode` (only the types it writes are ever built)."""
    if isinstance(v, list):
        return [decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "__nd" in v:
        values = [decode(x) for x in v["v"]]
        return np.array(values, dtype=object) if v["__nd"] == "object" else np.array(values, dtype=np.dtype(v["__nd"]))
    if "__adwin" in v:
        return ReplayableADWIN.from_state(v["__adwin"])
    if "__od" in v:
        return OrderedDict((decode(k), decode(x)) for k, x in v["__od"])
    if "__d" in v:
        return {decode(k): decode(x) for k, x in v["__d"]}
    if "__t" in v:
        return tuple(decode(x) for x in v["__t"])
    if "__dq" in v:
        return deque((decode(x) for x in v["__dq"]), maxlen=v["maxlen"])
    if "__dt" in v:
        return datetime.fromisoformat(v["__dt"])
    if "__dc" in v:
        return _DATACLASSES[v["__dc"]](**{k: decode(x) for k, x in v["f"].items()})
    if "__river" in v:
        cls = _RIVER[v["__river"]]
        obj = cls.__new__(cls)
        vars(obj).update({k: decode(x) for k, x in v["d"].items()})
        return obj
    raise ValueError(f"unknown tag in drift state: {sorted(v)[:3]}")


def save_attrs(obj: Any, names: Iterable[str]) -> dict[str, Any]:
    """The named attributes of ``obj``, encoded."""
    return {n: encode(getattr(obj, n)) for n in names}


def load_attrs(obj: Any, saved: dict[str, Any], names: Iterable[str]) -> None:
    """Set the named attributes of ``obj`` from :func:`save_attrs` output."""
    for n in names:
        if n in saved:
            setattr(obj, n, decode(saved[n]))


def newest(memory: OrderedDict[str, None], keep: int = DEDUPE_KEEP) -> OrderedDict[str, None]:
    """The newest ``keep`` entries of a dedupe memory."""
    if len(memory) <= keep:
        return memory
    return OrderedDict((k, None) for k in list(memory)[-keep:])


def to_records(group: str, state: dict[str, Any]) -> list[tuple[str, bytes | None]]:
    """The changelog records of one snapshot: the chunks, then the manifest naming them."""
    blob = zlib.compress(json.dumps({"format": FORMAT, "state": state}).encode(), 6)
    checkpoint = uuid.uuid4().hex
    chunks = [blob[i : i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
    out: list[tuple[str, bytes | None]] = [
        (f"{group}/{i}", checkpoint.encode() + b":" + chunk) for i, chunk in enumerate(chunks)
    ]
    manifest = json.dumps({"checkpoint": checkpoint, "chunks": len(chunks), "bytes": len(blob)}).encode()
    out.append((group, manifest))
    return out


def from_records(group: str, records: dict[str, bytes | None]) -> dict[str, Any] | None:
    """The snapshot the manifest names, or None when there is none (or it is incomplete: then nothing is loaded)."""
    manifest = records.get(group)
    if manifest is None:
        return None
    m = json.loads(manifest)
    prefix = m["checkpoint"].encode() + b":"
    parts = []
    for i in range(int(m["chunks"])):
        chunk = records.get(f"{group}/{i}")
        if chunk is None or not chunk.startswith(prefix):
            raise ValueError("drift snapshot incomplete: a chunk of its checkpoint is missing")
        parts.append(chunk[len(prefix) :])
    doc = json.loads(zlib.decompress(b"".join(parts)))
    if doc.get("format") != FORMAT:
        raise ValueError(f"drift snapshot format {doc.get('format')} is not {FORMAT}")
    state: dict[str, Any] = doc["state"]
    return state


class ChangelogState:
    """Drift's core as the common changelog sees it: one key (the group) saved as chunk records on partition 0."""

    def __init__(self, group: str, core_of: Callable[[], Any], reset: Callable[[], None]) -> None:
        self.group = group
        self.core_of = core_of
        """The current :class:`~vigil_drift.core.DriftCore` (replaced by ``reset``)."""
        self.reset = reset
        """Replace the core with a fresh one (and drop what was derived from the old one: unpublished alerts)."""
        self._read: dict[str, bytes | None] = {}

    def snapshot(self, key: str) -> bytes | None:
        """Unused: the state is written as several records (:meth:`records`)."""
        return None

    def records(self, key: str) -> list[tuple[str, bytes | None]]:
        """The core's snapshot as chunk records and a manifest."""
        return to_records(self.group, self.core_of().state())

    def restore(self, key: str, value: bytes | None) -> None:
        """Collect this group's records; :meth:`restored` loads them once all are read."""
        if key == self.group or key.startswith(f"{self.group}/"):
            self._read[key] = value

    def restored(self) -> None:
        """Load the snapshot read (a fresh core when there is none)."""
        read, self._read = self._read, {}
        state = from_records(self.group, read)
        if state is not None:
            self.core_of().load_state(state)

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """One state for all partitions: losing any means starting again from the changelog."""
        if not set(partitions):
            return 0
        self.reset()
        return 1
