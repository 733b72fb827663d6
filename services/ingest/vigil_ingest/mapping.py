"""The mapping core: FHIR R4 JSON in, canonical events out. No Kafka, no HTTP, no I/O.

:class:`Mapper` reads a resource or a Bundle (already parsed JSON) and returns a :class:`MapResult`: the canonical
events (ObservationRecorded, ObservationRetracted, EncounterRecorded), one :class:`Rejection` per problem with a
reason that names it, one :class:`EntryOutcome` per input resource (for FHIR bundle responses) and counters.

Validation is structural and fast: only the fields the mapping reads are checked, and a wrong shape there is a
rejection that names the field. A full pydantic FHIR model per resource (fhir.resources) costs far more than the
whole mapping (see bench/bench_ingest.py) and refuses a whole Bundle for one bad entry.

The rules (docs/ingest.md has the full list):

- a reading is a numeric value (valueQuantity, valueInteger, valueString such as "<0.01") of a code in the
  vocabulary (LOINC, any of its system spellings; SNOMED CT where unambiguous), on the resource or its
  components (BP panels 85354-9 / 55284-4 give sbp, dbp, map);
- a value absent with dataAbsentReason is no reading (counted, not an error);
- entered-in-error / cancelled give an ObservationRetracted of the resource; amended / corrected give an
  ObservationRetracted (reason "amended"/"corrected") followed by the replacement readings, in order, on the
  same key;
- time: effectiveDateTime / effectiveInstant, else effectivePeriod.end (else .start), else the time of a
  DiagnosticReport in the same bundle that lists the Observation as a result, else ``issued``; a date with no
  time of day is replaced by ``issued`` on the same day, else rejected; times without an offset are read as UTC;
- averages over a period (96607-7 and its parts) are rejected as not point readings;
- comparators < <= > >= are kept on the event (the value is the bound); "ad" is rejected;
- values are converted to the canonical unit and must lie in the vocabulary's plausible range.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote

import orjson

from vigil_contracts.events import (
    VIGIL_NAMESPACE,
    EncounterRecorded,
    ObservationRecorded,
    ObservationRetracted,
    SourceRef,
    deterministic_id,
    utcnow,
)
from vigil_contracts.vocabulary import SYSTEMIC_PRESSURE_FEATURES, VOCABULARY, Measurement
from vigil_ingest.local_codes import LOCAL_CODES
from vigil_ingest.pressure import PressureSites
from vigil_ingest.units import UCUM_SYSTEMS, UnitConverter, UnitError

log = logging.getLogger(__name__)

LOINC_SYSTEMS = frozenset(
    {"http://loinc.org", "https://loinc.org", "http://loinc.org/", "loinc", "urn:oid:2.16.840.1.113883.6.1", "LN"}
)
SNOMED_SYSTEMS = frozenset(
    {"http://snomed.info/sct", "https://snomed.info/sct", "snomed", "sct", "urn:oid:2.16.840.1.113883.6.96"}
)
AVERAGE_CODES = frozenset({"96607-7", "96608-5", "96609-3"})
"""Averages over a period (US Core average blood pressure): not point readings."""
LAB_ONLY_SAO2 = "2708-6"
READING_STATUSES = frozenset({"final", "amended", "corrected", "preliminary", "registered"})
RETRACTING_STATUSES = frozenset({"entered-in-error", "cancelled"})
OPEN_ENCOUNTER = frozenset({"planned", "arrived", "triaged", "in-progress", "onleave"})
_LOINC_SHAPE = re.compile(r"^\d{1,7}-\d$")
_NUMBER = re.compile(r"^\s*(<=|>=|<|>|≤|≥)?\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")
_UNIT_NAME = re.compile(r"\b(MICU|SICU)\b|(medical)\s+intensive\s+care|(surgical)\s+intensive\s+care", re.IGNORECASE)
_COMPARATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "≤": "<=", "≥": ">="}
UNLINKED_KEY = "unlinked"

Canonical: TypeAlias = ObservationRecorded | ObservationRetracted | EncounterRecorded
"""The events ingest publishes."""

Outcome = Literal["mapped", "partial", "retracted", "ignored", "absent", "rejected", "recorded"]


@dataclass(slots=True)
class Rejection:
    """One problem with the input, named; no values of the input, only field names, codes and units."""

    reason: str
    resource_type: str | None = None
    resource_id: str | None = None
    issue: str = "processing"
    """FHIR IssueType for the OperationOutcome: invalid, required, value, not-supported, processing."""

    def as_json(self) -> dict[str, Any]:
        """The dry run's rejection line."""
        return {
            "rejected": self.reason,
            "source": {"resource_type": self.resource_type, "resource_id": self.resource_id},
        }


@dataclass(slots=True)
class EntryOutcome:
    """What became of one input resource (one bundle entry)."""

    index: int | None
    resource_type: str | None
    resource_id: str | None
    outcome: Outcome
    events: list[Canonical] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    note: str | None = None
    content: tuple[str, int, str | None] | None = None
    """(resource id, hash of its content, version) of a mapped Observation, remembered once published."""
    correction: bool = False
    """A known id sent again with different content: published as an amendment with a new version."""


@dataclass(slots=True)
class MapResult:
    """Everything one payload gave."""

    events: list[Canonical] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    entries: list[EntryOutcome] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    bundle_type: str | None = None
    is_bundle: bool = False

    def extend(self, other: MapResult) -> None:
        """Merge another result into this one."""
        self.events.extend(other.events)
        self.rejections.extend(other.rejections)
        self.entries.extend(other.entries)
        self.counts.update(other.counts)


_NAMESPACE = VIGIL_NAMESPACE.bytes


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
"""The RFC 4122 variant's hex digit for each first digit of byte 8 (its top two bits set to 10)."""


def _uuid5_of(name: str) -> str:
    # The version and variant are set on the hex digits, not on a bytearray: one hexdigest, no byte edits.
    h = hashlib.sha1(_NAMESPACE + name.encode(), usedforsecurity=False).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def fast_id(*parts: object) -> str:
    """``vigil_contracts.events.deterministic_id`` without building a UUID object (the hot path makes one a reading).

    Same bytes as ``uuid.uuid5(VIGIL_NAMESPACE, name)``; a unit test holds the two equal.
    """
    return _uuid5_of("\x1f".join("" if p is None else str(p) for p in parts))


_iso_cache: dict[datetime, str] = {}


def observation_id(source: SourceRef, feature: str, observed_at: datetime) -> str:
    """``ObservationRecorded.make_id``, fast (same parts, same separator)."""
    iso = _iso_cache.get(observed_at)
    if iso is None:
        if len(_iso_cache) > 50_000:
            _iso_cache.clear()
        iso = _iso_cache[observed_at] = observed_at.isoformat()
    version = source.version_id if source.version_id is not None else ""
    return _uuid5_of(f"obs\x1f{source.resource_type}\x1f{source.resource_id}\x1f{version}\x1f{feature}\x1f{iso}")


# --- events built without a second validation -----------------------------------------------------------------
# A reading's fields are all made by the mapper from values it has already checked (ids it derived, times it
# parsed to aware UTC, floats it converted and range-checked, statuses and comparators from closed tables), so
# pydantic's validation of each SourceRef and ObservationRecorded repeated that work: ~16% of a plain reading's
# time (py-spy on bench/bench_ingest.py's core). ``model_construct`` does not help (its per-field Python loop
# measured slower than validating); these set the instance's state the way ``model_construct`` does, in one step.
# tests/unit/test_ingest_trusted_events.py holds every event so built equal to ``model_validate`` of its fields
# (equality and JSON bytes) over the FHIR corpus, the fuzz cases and the generated ones; a field added to either
# model fails the import below rather than publishing an event without it.
_new_object = object.__new__
_set_state = object.__setattr__
_SOURCE_FIELDS = frozenset(SourceRef.model_fields)
_OBSERVATION_FIELDS = frozenset(ObservationRecorded.model_fields)
_OBSERVATION_SET = _OBSERVATION_FIELDS - {"schema_version", "type"}
"""The fields the validating call passed (the rest were defaults), as ``model_fields_set`` reported them."""
_EXPECTED_SOURCE = {"resource_type", "resource_id", "version_id", "system"}
_EXPECTED_OBSERVATION = {
    "schema_version",
    "event_id",
    "occurred_at",
    "key",
    "type",
    "encounter",
    "patient",
    "feature",
    "value",
    "unit",
    "observed_at",
    "status",
    "comparator",
    "source",
    "original_value",
    "original_unit",
}
if _EXPECTED_SOURCE != _SOURCE_FIELDS or _EXPECTED_OBSERVATION != _OBSERVATION_FIELDS:  # pragma: no cover
    # A contract change must revisit the builders below.
    raise ImportError("SourceRef or ObservationRecorded changed its fields: update vigil_ingest.mapping's builders")


def source_ref(resource_type: str, resource_id: str, version_id: str | None, system: str | None) -> SourceRef:
    """A SourceRef of fields the mapper made (strings or None), without validating them again."""
    ref = _new_object(SourceRef)
    _set_state(
        ref,
        "__dict__",
        {"resource_type": resource_type, "resource_id": resource_id, "version_id": version_id, "system": system},
    )
    _set_state(ref, "__pydantic_fields_set__", set(_SOURCE_FIELDS))
    _set_state(ref, "__pydantic_extra__", None)
    _set_state(ref, "__pydantic_private__", None)
    return ref


def recorded(
    event_id: str,
    occurred_at: datetime,
    encounter: str | None,
    patient: str | None,
    feature: str,
    value: float,
    unit: str,
    observed_at: datetime,
    status: str,
    comparator: str | None,
    source: SourceRef,
    original_value: float | None,
    original_unit: str | None,
) -> ObservationRecorded:
    """An ObservationRecorded of checked fields (see above), without validating them again."""
    event = _new_object(ObservationRecorded)
    _set_state(
        event,
        "__dict__",
        {
            "schema_version": 1,
            "event_id": event_id,
            "occurred_at": occurred_at,
            "key": encounter or UNLINKED_KEY,
            "type": "observation.recorded",
            "encounter": encounter,
            "patient": patient,
            "feature": feature,
            "value": value,
            "unit": unit,
            "observed_at": observed_at,
            "status": status,
            "comparator": comparator,
            "source": source,
            "original_value": original_value,
            "original_unit": original_unit,
        },
    )
    _set_state(event, "__pydantic_fields_set__", set(_OBSERVATION_SET))
    _set_state(event, "__pydantic_extra__", None)
    _set_state(event, "__pydantic_private__", None)
    return event


class InvalidPayload(ValueError):
    """The payload as a whole cannot be read (not JSON, not a FHIR resource)."""

    def __init__(self, reason: str, issue: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.issue = issue


class _Reject(Exception):
    def __init__(self, reason: str, issue: str = "processing") -> None:
        super().__init__(reason)
        self.reason = reason
        self.issue = issue


class _Absent(Exception):
    pass


class BoundedCache(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries beyond ``maxsize`` (bounded memory for linkage state)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def put(self, key: str, value: Any) -> None:
        """Insert or refresh ``key``; evict the oldest entries beyond the bound."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)


@dataclass(slots=True)
class _PatientInfo:
    birth: tuple[int, int | None, int | None] | None
    sex: float | None
    version: str | None
    encounters: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _EncounterInfo:
    patient: str | None
    start: datetime | None


# The per-reading records below are plain slotted dataclasses, not frozen ones: a frozen dataclass sets each
# field through object.__setattr__, about four times the cost of construction, and three are made per
# Observation on ingest's hot path (bench/bench_ingest.py). Nothing changes them after construction.
@dataclass(slots=True)
class _Value:
    """One value read from an Observation (or a demographic): the feature, in its canonical unit."""

    measurement: Measurement
    value: float
    comparator: str | None = None
    original: tuple[float, str | None] | None = None
    """(value, unit) as sent, when converted."""
    unit: str | None = None


@dataclass(slots=True)
class _Where:
    """Whose reading, of which source, when: what every reading of one resource shares."""

    source: SourceRef
    encounter: str | None
    patient: str | None
    observed_at: datetime
    occurred_at: datetime
    status: Any


@dataclass(slots=True)
class _Sites:
    """The features left once pressures of other sites are set aside, with the reasons."""

    feature: str | None
    components: list[tuple[str, dict[str, Any]]]
    notes: list[str]
    refusals: list[str]


@dataclass(slots=True)
class _Identity:
    """The version a resource's readings are published under, its content digest, and whether it corrects."""

    version: str | None
    digest: int
    """:func:`content_hash` of the resource."""
    correction: bool


@dataclass(slots=True)
class _Context:
    """What a resource inside a bundle may need from the rest of the bundle."""

    full_urls: dict[str, tuple[str, str]] = field(default_factory=dict)
    report_times: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)
    system: str | None = None
    depth: int = 0
    digests: dict[int, int] = field(default_factory=dict)
    """Content hashes of the bundle's Observations by ``id()`` (computed once for the repeat check, reused)."""


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    codings = concept.get("coding")
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _is_lab(resource: dict[str, Any]) -> bool:
    categories = resource.get("category")
    if not isinstance(categories, list):
        return False
    for category in categories:
        for coding in _codings(category):
            if coding.get("code") == "laboratory":
                return True
    return False


_dt_cache: dict[str, tuple[datetime, bool]] = {}


def parse_fhir_datetime(text: Any) -> tuple[datetime, bool]:
    """A FHIR date/dateTime/instant as an aware UTC datetime, and whether it has a time of day.

    No offset means UTC (FHIR requires one with a time; senders omit it anyway). Raises ValueError.
    """
    if not isinstance(text, str):
        raise ValueError("not a string")
    hit = _dt_cache.get(text)
    if hit is not None:
        return hit
    if len(text) <= 10:
        parts = text.split("-")
        year = int(parts[0])
        month = int(parts[1]) if len(parts) > 1 else 1
        day = int(parts[2]) if len(parts) > 2 else 1
        result = (datetime(year, month, day, tzinfo=UTC), False)
    else:
        parsed = datetime.fromisoformat(text)
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        result = (parsed, True)
    if len(_dt_cache) > 50_000:
        _dt_cache.clear()
    _dt_cache[text] = result
    return result


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else type(value).__name__


UTF8_BOM = b"\xef\xbb\xbf"


def strip_bom(data: bytes) -> bytes:
    """The one byte-order-mark rule of HTTP and ``vigil ingest map``: a leading UTF-8 BOM is dropped.

    RFC 8259 section 8.1 lets a JSON parser ignore it, and Windows tools (Notepad, PowerShell's UTF8 encoding)
    write one; refusing it on one path and accepting it on the other gave the same file two answers.
    """
    return data[3:] if data.startswith(UTF8_BOM) else data


def content_bytes(resource: dict[str, Any]) -> bytes:
    """What a resource says, without its bookkeeping (meta, narrative), as canonical JSON (keys sorted)."""
    if "meta" in resource or "text" in resource:
        # A shallow copy without them: a C-level copy and two pops cost half a filtering dict comprehension.
        resource = dict(resource)
        resource.pop("meta", None)
        resource.pop("text", None)
    return orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)


def content_digest(resource: dict[str, Any]) -> str:
    """A stable digest of :func:`content_bytes` (the version a correction without one is published under)."""
    return hashlib.sha256(content_bytes(resource)).hexdigest()[:16]


def content_hash(resource: dict[str, Any]) -> int:
    """Equal hashes mean the same content: what a repeat is told from a correction by, within this process.

    Python's hash of the bytes (SipHash, 64 bits, keyed per process) rather than :func:`content_digest`: it is
    only compared with what this process remembered (the memory of published content does not outlive it), it
    is as wide as the digest's 16 hex digits, and it costs a fraction of a SHA-256 call, which OpenSSL 3 makes
    expensive for short inputs (~1.4 us of a reading's mapping, measured). The digest is computed only for the
    version of a correction sent without one.
    """
    return hash(content_bytes(resource))


@dataclass(slots=True)
class _Known:
    latest: int
    version: str | None


def _id_from_url(url: str) -> str:
    if url.startswith("urn:uuid:") or url.startswith("urn:oid:"):
        return url[9:] if url.startswith("urn:uuid:") else url
    if url.startswith("urn:"):
        return url
    path = url.split("/_history/")[0].rstrip("/")
    return path.rsplit("/", 1)[-1]


def _version(meta: Any) -> str | None:
    """meta.versionId as a string (some senders write a number)."""
    if not isinstance(meta, dict):
        return None
    version = meta.get("versionId")
    if isinstance(version, bool) or not isinstance(version, str | int):
        return None
    return str(version)


def _content_id(resource: dict[str, Any]) -> str:
    """A stable id for a resource sent without one: the same content gives the same id."""
    digest = hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"sha256-{digest[:32]}"


@dataclass(frozen=True, slots=True)
class TimeRules:
    """When a reading's time is not believable (a clock error or a typo in the EHR), with the clock to judge by.

    A reading dated 2099 once kept an encounter in a false alarm for good: the scorer's hour and every window
    followed it. Ingest refuses such readings with their reason; the scorer clamps as a second line of defence.
    """

    future_skew: timedelta = timedelta(minutes=5)
    """How far after ingest's own clock a reading may be dated (senders' clocks drift)."""
    before_encounter: timedelta = timedelta(days=14)
    """How long before its encounter began a reading may be dated (pre-admission readings are legitimate)."""
    clock: Callable[[], datetime] = utcnow

    def latest(self) -> datetime:
        """The latest believable time, by the clock now (read once per request, not once per reading)."""
        return self.clock() + self.future_skew

    def problem(
        self,
        observed_at: datetime,
        birth: datetime | None,
        encounter_start: datetime | None,
        latest: datetime | None = None,
    ) -> str | None:
        """Why ``observed_at`` cannot be believed, or None; ``latest`` is :meth:`latest` read earlier, if given."""
        # The mapper passes the bound it read at the start of the payload: the clock and the datetime sum per
        # reading were a few percent of it (py-spy on bench/bench_ingest.py's core); a Bundle maps in seconds at
        # most, far inside the allowed skew.
        if observed_at > (latest if latest is not None else self.latest()):
            return (
                f"effective time is later than ingest's clock plus the allowed skew "
                f"({int(self.future_skew.total_seconds())} s): a clock error or a typo"
            )
        if birth is not None and observed_at < birth:
            return "effective time is before the patient's birth"
        if encounter_start is not None and observed_at < encounter_start - self.before_encounter:
            days = self.before_encounter.total_seconds() / 86_400
            return f"effective time is more than {days:g} days before the encounter began"
        return None


_ResourceMapper: TypeAlias = Callable[[dict[str, Any], str, int | None, _Context, Counter[str]], EntryOutcome]


class Mapper:
    """Maps FHIR R4 JSON to canonical events; keeps bounded linkage state (patients, encounters, locations).

    Not thread-safe: one per event loop or process. ``system`` names the sender on every SourceRef.
    """

    def __init__(
        self,
        *,
        state_size: int = 100_000,
        units: UnitConverter | None = None,
        time_rules: TimeRules | None = None,
    ) -> None:
        self.units = units or UnitConverter()
        self.time_rules = time_rules or TimeRules()
        self._latest: datetime | None = None
        """The time rules' latest believable time, read once per payload (:meth:`map_payload`)."""
        self.patients = BoundedCache(state_size)
        self.patient_ids = BoundedCache(state_size)
        self.encounters = BoundedCache(state_size)
        self.open_encounter = BoundedCache(state_size)
        self.locations = BoundedCache(10_000)
        self.contents = BoundedCache(state_size)
        """Observation id -> what was last published under it (content digest, version)."""
        self._codes: dict[tuple[str, str], str] = {}
        for m in VOCABULARY.values():
            for code in m.loinc:
                self._codes.setdefault(("loinc", code), m.name)
            for code in m.snomed:
                self._codes.setdefault(("snomed", code), m.name)
        self._codes[("loinc", LAB_ONLY_SAO2)] = "spo2"
        # One mapper per resource type, chosen from this table; a type not in it is ignored (named in the answer).
        self._mappers: dict[str, _ResourceMapper] = {
            "Observation": self._observation,
            "Patient": self._patient,
            "Encounter": self._encounter,
            "Location": self._location,
            "DiagnosticReport": self._report,
            "Bundle": self._inner_bundle,
        }

    # --- entry points ---------------------------------------------------------------------------------

    def map_bytes(self, data: bytes | str, *, system: str | None = None) -> MapResult:
        """Parse and map one payload; a payload that is not JSON gives one rejection (never raises)."""
        if isinstance(data, bytes):
            data = strip_bom(data)
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            result = MapResult()
            reason = f"invalid JSON: {error.msg} at line {error.lineno} column {error.colno}"
            if data.lstrip()[:1] in (b"<", "<"):
                reason = "FHIR XML is not accepted: send FHIR JSON"
            result.rejections.append(Rejection(reason, issue="invalid"))
            result.entries.append(EntryOutcome(None, None, None, "rejected", rejections=list(result.rejections)))
            result.counts["rejected_payload"] += 1
            return result
        return self.map_payload(payload, system=system)

    def map_payload(self, payload: Any, *, system: str | None = None) -> MapResult:
        """Map a parsed resource or Bundle (never raises on bad input: problems become rejections)."""
        self._latest = self.time_rules.latest()
        try:
            return self._map(payload, system)
        except (TypeError, AttributeError, KeyError, ValueError, IndexError, RecursionError) as error:
            # A shape the structural checks missed must not crash a consumer (a poison record would be redelivered
            # for ever): the payload is rejected, named by the error type only, and logged for a fix.
            if isinstance(error, InvalidPayload):
                return self._invalid(payload, error)
            log.error("unexpected structure", extra={"error_type": type(error).__name__})
            return self._invalid(payload, InvalidPayload(f"unexpected structure ({type(error).__name__})", "exception"))

    def remember(self, result: MapResult) -> list[tuple[str, Any]]:
        """Record the content of the Observations of ``result`` as published; returns what :meth:`forget` undoes.

        A publish that fails must be forgotten, so its retry is the same change (with its retraction), not a repeat.
        """
        undo: list[tuple[str, Any]] = []
        for entry in result.entries:
            if entry.content is None or entry.outcome == "rejected":
                continue
            rid, digest, version = entry.content
            undo.append((rid, self.contents.get(rid)))
            self.contents.put(rid, _Known(digest, version))
        return undo

    def forget(self, undo: list[tuple[str, Any]]) -> None:
        """Undo :meth:`remember` (the events were not acknowledged)."""
        for rid, previous in reversed(undo):
            if previous is None:
                self.contents.pop(rid, None)
            else:
                self.contents.put(rid, previous)

    @staticmethod
    def _invalid(payload: Any, error: InvalidPayload) -> MapResult:
        result = MapResult()
        rtype = payload.get("resourceType") if isinstance(payload, dict) else None
        rid = payload.get("id") if isinstance(payload, dict) and isinstance(payload.get("id"), str) else None
        rej = Rejection(error.reason, rtype if isinstance(rtype, str) else None, rid, issue=error.issue)
        result.rejections.append(rej)
        result.entries.append(EntryOutcome(None, rej.resource_type, rid, "rejected", rejections=[rej]))
        result.counts["rejected_payload"] += 1
        return result

    # --- payload and bundle ---------------------------------------------------------------------------

    def _map(self, payload: Any, system: str | None, depth: int = 0) -> MapResult:  # noqa: C901 - the per-resource hot path of ingest; a split waits for bench_ingest figures before and after it
        if not isinstance(payload, dict):
            raise InvalidPayload("payload is not a JSON object (a FHIR resource or Bundle)")
        rtype = payload.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            raise InvalidPayload("missing resourceType", issue="required")
        result = MapResult()
        ctx = _Context(system=system, depth=depth)
        if rtype != "Bundle" and "contained" not in payload:
            # One resource: no bundle index to build (the hot path of the raw topic and of POST <type>).
            rid = self._resource_id(payload, None, None)
            outcome = self._map_resource(payload, rtype, rid, None, ctx, result.counts)
            result.events.extend(outcome.events)
            result.rejections.extend(outcome.rejections)
            result.entries.append(outcome)
            return result
        items: list[tuple[int | None, dict[str, Any], str | None, Any]] = []
        if rtype == "Bundle":
            result.is_bundle = True
            btype = payload.get("type")
            result.bundle_type = btype if isinstance(btype, str) else None
            if ctx.system is None and isinstance(payload.get("id"), str):
                ctx.system = f"Bundle/{payload['id']}"
            entries = payload.get("entry", [])
            if not isinstance(entries, list):
                raise InvalidPayload("Bundle.entry is not an array")
            for index, entry in enumerate(entries):
                if not isinstance(entry, dict):
                    rej = Rejection(f"Bundle.entry[{index}] is not an object", issue="invalid")
                    result.entries.append(EntryOutcome(index, None, None, "rejected", rejections=[rej]))
                    result.rejections.append(rej)
                    continue
                resource = entry.get("resource")
                full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
                request = entry.get("request") if isinstance(entry.get("request"), dict) else None
                if not isinstance(resource, dict):
                    note = "entry without a resource"
                    if request and request.get("method") == "DELETE":
                        note = "DELETE is not mapped (no canonical event)"
                    result.entries.append(EntryOutcome(index, None, None, "ignored", note=note))
                    result.counts["ignored_entry"] += 1
                    continue
                items.append((index, resource, full_url, request))
        else:
            items.append((None, payload, None, None))

        # Index the bundle's resources so references (urn:uuid, absolute URLs) resolve whatever the order.
        prepared: list[tuple[int | None, dict[str, Any], str, str]] = []
        for item_index, resource, full_url, request in items:
            r_type = resource.get("resourceType")
            if not isinstance(r_type, str):
                rej = Rejection("resource without resourceType", issue="required")
                if item_index is None:
                    raise InvalidPayload(rej.reason, issue="required")
                result.entries.append(EntryOutcome(item_index, None, None, "rejected", rejections=[rej]))
                result.rejections.append(rej)
                continue
            rid = self._resource_id(resource, full_url, request)
            if full_url:
                ctx.full_urls[full_url] = (r_type, rid)
            ctx.full_urls[f"{r_type}/{rid}"] = (r_type, rid)
            if r_type == "DiagnosticReport" or (r_type == "Observation" and "hasMember" in resource):
                self._index_report(resource, ctx)
            prepared.append((item_index, resource, r_type, rid))

        # The same Observation twice in one request: a repeat is answered once; a conflicting one (same id and
        # version, different content) is refused, since which of the two is true cannot be told.
        first_of: dict[tuple[str, str | None], tuple[int, int | None]] = {}
        repeats: dict[int | None, EntryOutcome] = {}
        for position, resource, r_type, rid in prepared:
            if r_type != "Observation":
                continue
            key = (rid, _version(resource.get("meta")))
            digest = ctx.digests[id(resource)] = content_hash(resource)
            seen = first_of.get(key)
            if seen is None:
                first_of[key] = (digest, position)
                continue
            where = f"entry {seen[1]}" if seen[1] is not None else "another entry"
            if seen[0] == digest:
                result.counts["repeated_in_request"] += 1
                repeats[position] = EntryOutcome(
                    position, r_type, rid, "ignored", note=f"repeats {where} of this request"
                )
            else:
                result.counts["rejected"] += 1
                reason = (
                    f"same id and version as {where} of this request with different content: the later entry is refused"
                )
                rej = Rejection(reason, r_type, rid, issue="conflict")
                repeats[position] = EntryOutcome(position, r_type, rid, "rejected", rejections=[rej])

        # Linkage first (patients, locations, encounters), then readings: entry order does not matter.
        order = {"Patient": 0, "Location": 1, "Encounter": 2}
        outcomes: list[EntryOutcome] = []
        for position, resource, r_type, rid in sorted(prepared, key=lambda p: order.get(p[2], 3)):
            repeat = repeats.get(position) if position is not None else None
            if repeat is not None:
                outcomes.append(repeat)
                continue
            outcome = self._map_resource(resource, r_type, rid, position, ctx, result.counts)
            outcomes.append(outcome)
        outcomes.sort(key=lambda o: -1 if o.index is None else o.index)
        # Events in entry order (retractions before their replacements stay in order within an entry).
        for outcome in outcomes:
            result.events.extend(outcome.events)
            result.rejections.extend(outcome.rejections)
        result.entries.extend(outcomes)
        result.entries.sort(key=lambda o: -1 if o.index is None else o.index)
        return result

    @staticmethod
    def _resource_id(resource: dict[str, Any], full_url: str | None, request: dict[str, Any] | None) -> str:
        rid = resource.get("id")
        if isinstance(rid, str) and rid.strip():
            return rid.strip()
        if isinstance(rid, int) and not isinstance(rid, bool):
            return str(rid)
        if full_url:
            return _id_from_url(full_url)
        if request and isinstance(request.get("url"), str) and request.get("method") == "PUT":
            return _id_from_url(request["url"].split("?")[0])
        identifiers = resource.get("identifier")
        if isinstance(identifiers, list) and identifiers and isinstance(identifiers[0], dict):
            first = identifiers[0]
            if isinstance(first.get("value"), str):
                return f"{first.get('system') or ''}|{first['value']}"
        return _content_id(resource)

    def _index_report(self, report: dict[str, Any], ctx: _Context) -> None:
        """Results of a report and members of a panel take its time when they carry none."""
        times = (report.get("effectiveDateTime"), report.get("effectivePeriod"), report.get("issued"))
        results = report.get("result") if report.get("resourceType") == "DiagnosticReport" else report.get("hasMember")
        if not isinstance(results, list):
            return
        for ref in results:
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                target = ref["reference"]
                ctx.report_times[target] = times
                resolved = ctx.full_urls.get(target)
                if resolved:
                    ctx.report_times[f"{resolved[0]}/{resolved[1]}"] = times
                else:
                    ctx.report_times[f"Observation/{_id_from_url(target)}"] = times

    def _map_resource(
        self,
        resource: dict[str, Any],
        r_type: str,
        rid: str,
        index: int | None,
        ctx: _Context,
        counts: Counter[str],
    ) -> EntryOutcome:
        mapper = self._mappers.get(r_type)
        try:
            if mapper is not None and (r_type != "Bundle" or ctx.depth < 3):
                return mapper(resource, rid, index, ctx, counts)
        except _Reject as error:
            counts["rejected"] += 1
            rej = Rejection(error.reason, r_type, rid, issue=error.issue)
            return EntryOutcome(index, r_type, rid, "rejected", rejections=[rej])
        except (TypeError, AttributeError, KeyError, ValueError, IndexError) as error:
            # One entry of a shape the structural checks missed: reject it, keep the rest of the bundle.
            log.error(
                "unexpected structure",
                extra={"error_type": type(error).__name__, "resource_type": r_type},
                exc_info=True,
            )
            counts["rejected"] += 1
            rej = Rejection(f"unexpected structure ({type(error).__name__})", r_type, rid, issue="exception")
            return EntryOutcome(index, r_type, rid, "rejected", rejections=[rej])
        counts[f"ignored_resource_type:{r_type}"] += 1
        return EntryOutcome(index, r_type, rid, "ignored", note=f"{r_type} is not used by ingest")

    def _location(
        self, res: dict[str, Any], rid: str, index: int | None, ctx: _Context, counts: Counter[str]
    ) -> EntryOutcome:
        if isinstance(res.get("name"), str):
            self.locations.put(rid, res["name"])
        counts["location_cached"] += 1
        return EntryOutcome(index, "Location", rid, "recorded", note="location cached for ICU unit names")

    def _inner_bundle(
        self, res: dict[str, Any], rid: str, index: int | None, ctx: _Context, counts: Counter[str]
    ) -> EntryOutcome:
        """A Bundle inside a Bundle (a message or document carrying a searchset, say): map its entries."""
        try:
            inner = self._map(res, ctx.system, depth=ctx.depth + 1)
        except InvalidPayload as error:
            raise _Reject(error.reason, error.issue) from error
        counts.update(inner.counts)
        outcome: Outcome = "mapped" if inner.events else ("rejected" if inner.rejections else "ignored")
        return EntryOutcome(index, "Bundle", rid, outcome, events=inner.events, rejections=inner.rejections)

    # --- references -----------------------------------------------------------------------------------

    def _ref(self, ref: Any, r_type: str, ctx: _Context, contained: dict[str, dict[str, Any]]) -> str | None:
        if not isinstance(ref, dict):
            return None
        target = ref.get("reference")
        if isinstance(target, str) and target:
            resolved = ctx.full_urls.get(target)
            if resolved is None and target.count("/") == 1 and ":" not in target:
                kind, _, ident = target.partition("/")  # the common "Patient/123": no more parsing needed
                return ident if kind == r_type and ident else None
            if "?" in target:
                # A conditional reference of a transaction: "Patient?identifier=system|value".
                kind, _, query = target.partition("?")
                for part in query.split("&"):
                    name, _, token = part.partition("=")
                    if kind == r_type and name == "identifier" and token:
                        system, bar, value = unquote(token).rpartition("|")
                        return self._by_identifier({"system": system if bar else None, "value": value}, r_type)
                return None
            if target.startswith("#"):
                inner = contained.get(target[1:])
                if inner is not None and inner.get("resourceType") == r_type:
                    identifiers = inner.get("identifier")
                    if isinstance(identifiers, list) and identifiers and isinstance(identifiers[0], dict):
                        return self._by_identifier(identifiers[0], r_type)
                return None
            if resolved is not None:
                return resolved[1] if resolved[0] == r_type else None
            if target.startswith("urn:"):
                return _id_from_url(target)
            parts = target.split("/_history/")[0].rstrip("/").split("/")
            if len(parts) >= 2:
                return parts[-1] if parts[-2] == r_type else None
            return parts[-1]
        identifier = ref.get("identifier")
        if isinstance(identifier, dict):
            return self._by_identifier(identifier, r_type)
        return None

    def _by_identifier(self, identifier: dict[str, Any], r_type: str) -> str | None:
        value = identifier.get("value")
        if not isinstance(value, str):
            return None
        token = f"{identifier.get('system') or ''}|{value}"
        if r_type == "Patient":
            known = self.patient_ids.get(token)
            if known is not None:
                return str(known)
        return token

    # --- Patient, Encounter, DiagnosticReport ---------------------------------------------------------

    def _patient(
        self, res: dict[str, Any], rid: str, index: int | None, ctx: _Context, counts: Counter[str]
    ) -> EntryOutcome:
        birth = None
        birth_date = res.get("birthDate")
        if isinstance(birth_date, str):
            try:
                parts = birth_date.split("-")
                birth = (
                    int(parts[0]),
                    int(parts[1]) if len(parts) > 1 else None,
                    int(parts[2][:2]) if len(parts) > 2 else None,
                )
            except ValueError:
                birth = None
        gender = res.get("gender")
        gender = gender.strip().lower() if isinstance(gender, str) else None
        sex = 1.0 if gender in ("male", "m") else 0.0 if gender in ("female", "f") else None
        meta = res.get("meta")
        version = _version(meta)
        known = self.patients.get(rid)
        info = _PatientInfo(birth, sex, version)
        if known is not None:
            info.encounters = known.encounters
        self.patients.put(rid, info)
        identifiers = res.get("identifier")
        if isinstance(identifiers, list):
            for ident in identifiers[:5]:
                if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                    self.patient_ids.put(f"{ident.get('system') or ''}|{ident['value']}", rid)
        events: list[Canonical] = []
        rejections: list[Rejection] = []
        for enc_id in info.encounters:
            enc = self.encounters.get(enc_id)
            if enc is not None:
                self._demographics(rid, info, enc_id, enc.start, events, rejections, counts)
        counts["patients"] += 1
        outcome: Outcome = "mapped" if events else "recorded"
        note = None if events else "patient cached; age and sex are published with its encounters"
        return EntryOutcome(index, "Patient", rid, outcome, events=events, rejections=rejections, note=note)

    def _demographics(
        self,
        patient: str,
        info: _PatientInfo,
        encounter: str,
        start: datetime | None,
        events: list[Canonical],
        rejections: list[Rejection],
        counts: Counter[str],
    ) -> None:
        if start is None:
            counts["demographics_without_encounter_start"] += 1
            return
        source = source_ref("Patient", patient, info.version, None)
        if info.birth is not None:
            year, month, day = info.birth
            age = start.year - year
            if month is not None and (start.month, start.day) < (month, day or 1):
                age -= 1
            m = VOCABULARY["age"]
            if m.low <= age <= m.high:
                where = _Where(source, encounter, patient, start, start, "final")
                events.append(self._reading(where, _Value(m, float(age)), per_encounter=True))
                counts["demographics"] += 1
            else:
                rejections.append(
                    Rejection(f"age outside plausible range [{m.low:g}, {m.high:g}] a", "Patient", patient, "value")
                )
        if info.sex is not None:
            m = VOCABULARY["sex"]
            where = _Where(source, encounter, patient, start, start, "final")
            events.append(self._reading(where, _Value(m, info.sex), per_encounter=True))
            counts["demographics"] += 1

    def _encounter(
        self, res: dict[str, Any], rid: str, index: int | None, ctx: _Context, counts: Counter[str]
    ) -> EntryOutcome:
        contained = self._contained(res)
        patient = self._ref(res.get("subject") or res.get("patient"), "Patient", ctx, contained)
        status = res.get("status") if isinstance(res.get("status"), str) else "unknown"
        raw_period = res.get("period") or res.get("actualPeriod")  # actualPeriod: R5 senders
        period: dict[str, Any] = raw_period if isinstance(raw_period, dict) else {}
        start = end = None
        try:
            if period.get("start") is not None:
                start = parse_fhir_datetime(period["start"])[0]
            if period.get("end") is not None:
                end = parse_fhir_datetime(period["end"])[0]
        except (ValueError, TypeError) as error:
            raise _Reject("Encounter.period is not a valid dateTime", "invalid") from error
        meta = res.get("meta")
        version = _version(meta)
        source = SourceRef(
            resource_type="Encounter",
            resource_id=rid,
            version_id=version,
            system=ctx.system,
        )
        unit = self._icu_unit(res, ctx, contained)
        hospital = None
        part_of = self._ref(res.get("partOf"), "Encounter", ctx, contained)
        if part_of is not None:
            parent = self.encounters.get(part_of)
            hospital = parent.start if parent is not None else None
        extensions = res.get("extension")
        if hospital is None and isinstance(extensions, list):
            for ext in extensions:
                if isinstance(ext, dict) and str(ext.get("url", "")).endswith("hospital-admission"):
                    try:
                        hospital = parse_fhir_datetime(ext.get("valueDateTime"))[0]
                    except (ValueError, TypeError):
                        hospital = None
        event = EncounterRecorded(
            event_id=deterministic_id("enc", rid, source.version_id, status, start, end, unit),
            occurred_at=end or start or utcnow(),
            key=rid,
            encounter=rid,
            patient=patient,
            status=status,
            icu_admitted_at=start,
            hospital_admitted_at=hospital,
            discharged_at=end,
            unit=unit,
            source=source,
        )
        self.encounters.put(rid, _EncounterInfo(patient, start))
        events: list[Canonical] = [event]
        rejections: list[Rejection] = []
        if patient is not None:
            if status in OPEN_ENCOUNTER or (end is None and status == "unknown"):
                self.open_encounter.put(patient, rid)
            elif self.open_encounter.get(patient) == rid:
                del self.open_encounter[patient]
            info = self.patients.get(patient)
            if info is not None:
                if rid not in info.encounters:
                    info.encounters = [*info.encounters[-4:], rid]
                self._demographics(patient, info, rid, start, events, rejections, counts)
            else:
                self.patients.put(patient, _PatientInfo(None, None, None, [rid]))
        counts["encounters"] += 1
        return EntryOutcome(index, "Encounter", rid, "mapped", events=events, rejections=rejections)

    def _icu_unit(self, res: dict[str, Any], ctx: _Context, contained: dict[str, dict[str, Any]]) -> str | None:
        texts: list[str] = []
        locations = res.get("location")
        if isinstance(locations, list):
            for loc in locations:
                ref = loc.get("location") if isinstance(loc, dict) else None
                if isinstance(ref, dict):
                    if isinstance(ref.get("display"), str):
                        texts.append(ref["display"])
                    lid = self._ref(ref, "Location", ctx, contained)
                    if lid is not None and isinstance(self.locations.get(lid), str):
                        texts.append(self.locations[lid])
        types = res.get("type")
        for concept in (res.get("serviceType"), *(types if isinstance(types, list) else [])):
            if isinstance(concept, dict):
                if isinstance(concept.get("text"), str):
                    texts.append(concept["text"])
                for coding in _codings(concept):
                    texts.extend(str(coding[k]) for k in ("display", "code") if isinstance(coding.get(k), str))
        for text in reversed(texts):  # the latest location wins
            match = _UNIT_NAME.search(text)
            if match:
                if match.group(1):
                    return match.group(1).upper()
                return "MICU" if match.group(2) else "SICU"
        return None

    def _report(
        self, res: dict[str, Any], rid: str, index: int | None, ctx: _Context, counts: Counter[str]
    ) -> EntryOutcome:
        contained = [c for c in res.get("contained") or [] if isinstance(c, dict)]
        events: list[Canonical] = []
        rejections: list[Rejection] = []
        for inner in contained:
            if inner.get("resourceType") == "Observation" and isinstance(inner.get("id"), str):
                merged = {"subject": res.get("subject"), "encounter": res.get("encounter"), **inner}
                for key in ("effectiveDateTime", "effectivePeriod", "issued"):
                    if key not in merged and key in res:
                        merged[key] = res[key]
                sub = self._map_resource(merged, "Observation", f"{rid}#{inner['id']}", index, ctx, counts)
                events.extend(sub.events)
                rejections.extend(sub.rejections)
        counts["reports"] += 1
        outcome: Outcome = "mapped" if events else ("rejected" if rejections else "ignored")
        return EntryOutcome(index, "DiagnosticReport", rid, outcome, events=events, rejections=rejections)

    @staticmethod
    def _contained(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
        contained = res.get("contained")
        if not isinstance(contained, list):
            return {}
        return {c["id"]: c for c in contained if isinstance(c, dict) and isinstance(c.get("id"), str)}

    # --- Observation ----------------------------------------------------------------------------------

    def feature_of(self, concept: Any, resource: dict[str, Any] | None = None) -> tuple[str | None, bool]:
        """The vocabulary feature a CodeableConcept names (first mapped coding wins), and whether it is an average.

        ``resource`` (the Observation) resolves LOINC 2708-6 by its category: laboratory means SaO2.
        """
        if not isinstance(concept, dict):
            return None, False
        codings = concept.get("coding")
        if not isinstance(codings, list):
            return None, False
        found: str | None = None
        codes = self._codes
        for coding in codings:
            if not isinstance(coding, dict):
                continue
            code = coding.get("code")
            if not isinstance(code, str):
                continue
            system = coding.get("system")
            if system is not None and not isinstance(system, str):
                continue
            if system in LOINC_SYSTEMS or (system is None and _LOINC_SHAPE.match(code.strip())):
                code = code.strip()
                if code in AVERAGE_CODES:
                    return None, True
                feature = codes.get(("loinc", code))
            elif system in SNOMED_SYSTEMS:
                feature = codes.get(("snomed", code.strip()))
            elif system in LOCAL_CODES:
                feature = LOCAL_CODES[system].get(code.strip())
            else:
                continue
            if feature is not None and found is None:
                found = "sao2" if (code == LAB_ONLY_SAO2 and resource is not None and _is_lab(resource)) else feature
        return found, False

    def _observation(  # noqa: C901 - the per-resource hot path of ingest; a split waits for bench_ingest figures before and after it
        self, res: dict[str, Any], rid: str, index: int | None, ctx: _Context, counts: Counter[str]
    ) -> EntryOutcome:
        """One Observation: its features (by code and site), its identity (repeat, correction), values, events."""
        feature, components = self._coded_features(res, counts)
        sites = self._site_filter(res, feature, components, counts)
        feature, components = sites.feature, sites.components
        contained_obs = (
            [c for c in res["contained"] if isinstance(c, dict) and c.get("resourceType") == "Observation"]
            if isinstance(res.get("contained"), list)
            else None
        )
        nested = self._nested(res, rid, index, ctx, counts, contained_obs) if contained_obs else None
        if feature is None and not components:
            if nested is not None and (nested.events or nested.rejections):
                return nested
            if sites.refusals:
                counts["rejected"] += len(sites.refusals)
                rejected = [Rejection(r, "Observation", rid, "not-supported") for r in sites.refusals]
                return EntryOutcome(index, "Observation", rid, "rejected", rejections=rejected)
            if sites.notes:
                return EntryOutcome(index, "Observation", rid, "ignored", note="; ".join(sites.notes))
            counts["ignored_code"] += 1
            return EntryOutcome(index, "Observation", rid, "ignored", note="code not in the vocabulary")

        contained = self._contained(res) if contained_obs is not None else {}
        patient, encounter = self._subject_and_encounter(res, ctx, contained, counts)
        raw_status = res.get("status")
        status = raw_status if isinstance(raw_status, str) else None
        identity = self._identity(res, rid, status, ctx.digests.get(id(res)))
        source = source_ref("Observation", rid, identity.version, ctx.system)
        # The features a retraction names; only retractions need them (most readings are not one).
        features = [feature] if feature is not None else []

        if status in RETRACTING_STATUSES:
            counts["retracted"] += 1
            features.extend(f for f, _ in components)
            retraction = self._retraction(source, encounter, patient, features, str(status), res)
            return EntryOutcome(index, "Observation", rid, "retracted", events=[retraction])
        if status not in READING_STATUSES:
            raise _Reject(
                f"Observation.status '{status}' is not a reading" if isinstance(status, str) else "missing status",
                "value" if isinstance(status, str) else "required",
            )
        # Values first: an Observation whose values are all absent is "no reading" whatever its time says.
        values, absent, rejections = self._values(res, rid, feature, components)
        rejections = [Rejection(r, "Observation", rid, "not-supported") for r in sites.refusals] + rejections

        events: list[Canonical] = []
        if values:
            observed_at = self._time(res, ctx, rid)
            self._check_time(observed_at, patient, encounter)
            issued = res.get("issued")
            try:
                occurred_at = parse_fhir_datetime(issued)[0] if issued is not None else observed_at
            except (ValueError, TypeError):
                occurred_at = observed_at
            if status in ("amended", "corrected") or identity.correction:
                reason = "amended" if identity.correction else str(status)
                features.extend(f for f, _ in components)
                events.append(self._retraction(source, encounter, patient, features, reason, res))
            where = _Where(source, encounter, patient, observed_at, occurred_at, status)
            for value in values:
                events.append(self._reading(where, value))
        readings = len(values)
        counts["readings"] += readings
        if absent:
            counts["absent"] += absent
        if rejections:
            counts["rejected"] += len(rejections)
        if nested is not None:
            events.extend(nested.events)
            rejections.extend(nested.rejections)
        if readings and rejections:
            outcome: Outcome = "partial"
        elif readings:
            outcome = "mapped"
        elif rejections:
            outcome = "rejected"
        else:
            outcome = "absent"
        notes = ([f"{absent} value(s) absent (dataAbsentReason)"] if absent else []) + sites.notes
        if identity.correction and readings:
            counts["corrections"] += 1
            notes.append(
                f"a known id with new content: published as a correction (amended, version {identity.version})"
            )
        return EntryOutcome(
            index,
            "Observation",
            rid,
            outcome,
            events=events,
            rejections=rejections,
            note="; ".join(notes) if notes else None,
            content=(rid, identity.digest, identity.version),
            correction=identity.correction and bool(readings),
        )

    def _coded_features(
        self, res: dict[str, Any], counts: Counter[str]
    ) -> tuple[str | None, list[tuple[str, dict[str, Any]]]]:
        """The feature the Observation's code names and the features of its components (averages refused)."""
        feature, average = self.feature_of(res.get("code"), res)
        if average:
            counts["rejected_average"] += 1
            raise _Reject("an average over a period (96607-7 family) is not a point reading", "not-supported")
        components: list[tuple[str, dict[str, Any]]] = []
        raw_components = res.get("component")
        if isinstance(raw_components, list):
            for comp in raw_components:
                if not isinstance(comp, dict):
                    continue
                comp_feature, comp_average = self.feature_of(comp.get("code"), res)
                if comp_average:
                    counts["rejected_average"] += 1
                    raise _Reject("an average over a period (96607-7 family) is not a point reading", "not-supported")
                if comp_feature is not None:
                    components.append((comp_feature, comp))
        return feature, components

    @staticmethod
    def _site_filter(
        res: dict[str, Any],
        feature: str | None,
        components: list[tuple[str, dict[str, Any]]],
        counts: Counter[str],
    ) -> _Sites:
        """Set aside pressures of other sites: what was measured decides the feature.

        Systolic/diastolic/mean codes of a pulmonary, atrial, ventricular or venous panel are not systemic arterial
        pressure (``vigil_ingest.pressure`` has the rule).
        """
        pressures = [comp for f, comp in components if f in SYSTEMIC_PRESSURE_FEATURES]
        if feature not in SYSTEMIC_PRESSURE_FEATURES and not pressures:
            return _Sites(feature, components, [], [])  # no pressure: nothing to judge (most readings)
        notes: list[str] = []
        refusals: list[str] = []
        sites = PressureSites(res)  # the Observation's own concepts, read once for all its components
        if feature in SYSTEMIC_PRESSURE_FEATURES:
            verdict = sites.of(None)
            if verdict.verdict != "systemic":
                notes.append(verdict.reason)
                feature = None
        if pressures:
            kept: list[tuple[str, dict[str, Any]]] = []
            for comp_feature, comp in components:
                if comp_feature in SYSTEMIC_PRESSURE_FEATURES:
                    verdict = sites.of(comp)
                    if verdict.verdict == "other":
                        notes.append(verdict.reason)
                        continue
                    if verdict.verdict == "unknown":
                        refusals.append(verdict.reason)
                        continue
                kept.append((comp_feature, comp))
            components = kept
        if notes:
            notes = list(dict.fromkeys(notes))
            counts["not_systemic_pressure"] += len(notes)
        if refusals:
            refusals = list(dict.fromkeys(refusals))
            counts["pressure_site_unknown"] += len(refusals)
        return _Sites(feature, components, notes, refusals)

    def _subject_and_encounter(
        self, res: dict[str, Any], ctx: _Context, contained: dict[str, dict[str, Any]], counts: Counter[str]
    ) -> tuple[str | None, str | None]:
        """The patient and encounter a reading belongs to (an open encounter of the patient when none is named)."""
        patient = self._ref(res.get("subject"), "Patient", ctx, contained)
        encounter = self._ref(res.get("encounter") or res.get("context"), "Encounter", ctx, contained)
        if patient is None and encounter is not None:
            known = self.encounters.get(encounter)
            patient = known.patient if known is not None else None
        if encounter is None and patient is not None:
            encounter = self.open_encounter.get(patient)
            counts["attached_to_open_encounter" if encounter else "no_encounter"] += 1
        elif encounter is None:
            counts["no_encounter"] += 1
        return patient, encounter

    def _identity(self, res: dict[str, Any], rid: str, status: str | None, digest: int | None = None) -> _Identity:
        """The version to publish under: a repeat keeps its ids, new content for a known id is a correction.

        The same content is a repeat (the same event ids, answered 200); new content is a correction, published as
        an amendment under a new version derived from the content, so the bedside never keeps a value its source
        has replaced. New content under the same explicit version is a conflict.
        """
        version = _version(res.get("meta"))
        if digest is None:
            digest = content_hash(res)
        known = self.contents.get(rid)
        correction = False
        if known is not None and digest != known.latest:
            if version is not None and version == known.version:
                raise _Reject(
                    f"version {version[:20]} was already published with different content: send a new version",
                    "conflict",
                )
            correction = status in READING_STATUSES and status not in ("amended", "corrected")
            if version is None:
                version = f"content-{content_digest(res)}"
        elif known is not None and version is None:
            version = known.version  # a repeat keeps the ids it was published under
        return _Identity(version, digest, correction)

    def _values(
        self, res: dict[str, Any], rid: str, feature: str | None, components: list[tuple[str, dict[str, Any]]]
    ) -> tuple[list[_Value], int, list[Rejection]]:
        """The readable values of the Observation and its components, how many were absent, the refused ones."""
        absent = 0
        rejections: list[Rejection] = []
        values: list[_Value] = []
        holders: list[tuple[str, dict[str, Any], bool]] = []
        if feature is not None:
            holders.append((feature, res, True))
        holders.extend((f, comp, False) for f, comp in components)
        for name, holder, is_main in holders:
            m = VOCABULARY[name]
            try:
                value, comparator, original, unit = self._value(m, holder, is_main and bool(components))
            except _Absent:
                absent += 1
                continue
            except _Reject as error:
                rejections.append(Rejection(error.reason, "Observation", rid, error.issue))
                continue
            values.append(_Value(m, value, comparator, original, unit))
        return values, absent, rejections

    def _check_time(self, observed_at: datetime, patient: str | None, encounter: str | None) -> None:
        birth: datetime | None = None
        info = self.patients.get(patient) if patient is not None else None
        if info is not None and info.birth is not None:
            year, month, day = info.birth
            try:
                birth = datetime(year, month or 1, day or 1, tzinfo=UTC)
            except ValueError:
                birth = None
        enc = self.encounters.get(encounter) if encounter is not None else None
        problem = self.time_rules.problem(observed_at, birth, enc.start if enc is not None else None, self._latest)
        if problem is not None:
            raise _Reject(problem, "value")

    def _nested(
        self,
        res: dict[str, Any],
        rid: str,
        index: int | None,
        ctx: _Context,
        counts: Counter[str],
        contained_obs: list[dict[str, Any]],
    ) -> EntryOutcome:
        """Contained Observations (hasMember '#id' panels) inherit the parent's subject, encounter and time."""
        events: list[Canonical] = []
        rejections: list[Rejection] = []
        for inner in contained_obs:
            if not isinstance(inner.get("id"), str):
                continue
            merged = dict(inner)
            for key in ("subject", "encounter", "effectiveDateTime", "effectivePeriod", "issued", "status"):
                if key not in merged and key in res:
                    merged[key] = res[key]
            sub = self._map_resource(merged, "Observation", f"{rid}#{inner['id']}", index, ctx, counts)
            events.extend(sub.events)
            rejections.extend(sub.rejections)
        outcome: Outcome = "mapped" if events else ("rejected" if rejections else "ignored")
        return EntryOutcome(index, "Observation", rid, outcome, events=events, rejections=rejections)

    def _time(self, res: dict[str, Any], ctx: _Context, rid: str) -> datetime:
        candidates: list[tuple[str, Any]] = []
        if "effectiveDateTime" in res:
            candidates.append(("effectiveDateTime", res["effectiveDateTime"]))
        elif "effectiveInstant" in res:
            candidates.append(("effectiveInstant", res["effectiveInstant"]))
        elif isinstance(res.get("effectivePeriod"), dict):
            period = res["effectivePeriod"]
            end, start = period.get("end"), period.get("start")
            candidates.append(("effectivePeriod.end" if end is not None else "effectivePeriod.start", end or start))
        else:
            report = ctx.report_times.get(f"Observation/{rid}")
            if report is not None:
                report_time, report_period, report_issued = report
                if report_time is not None:
                    candidates.append(("the report's or panel's effectiveDateTime", report_time))
                elif isinstance(report_period, dict):
                    candidates.append(
                        ("the report's or panel's effectivePeriod", report_period.get("end") or report_period["start"])
                    )
                elif report_issued is not None:
                    candidates.append(("the report's or panel's issued", report_issued))
        issued = res.get("issued")
        date_only: datetime | None = None
        for name, text in candidates:
            try:
                when, has_time = parse_fhir_datetime(text)
            except (ValueError, TypeError) as error:
                raise _Reject(f"{name} is not a valid FHIR dateTime", "invalid") from error
            if has_time:
                return when
            date_only = when
        if issued is not None:
            try:
                when, has_time = parse_fhir_datetime(issued)
            except (ValueError, TypeError) as error:
                raise _Reject("issued is not a valid FHIR instant", "invalid") from error
            if has_time and (date_only is None or when.date() == date_only.date()):
                return when
        if date_only is not None:
            raise _Reject("effective time is a date without a time of day (and no issued time that day)", "value")
        raise _Reject("no effective time and no issued time", "required")

    def _value(  # noqa: C901 - the per-resource hot path of ingest; a split waits for bench_ingest figures before and after it
        self, m: Measurement, holder: dict[str, Any], panel: bool
    ) -> tuple[float, str | None, tuple[float, str | None] | None, str]:
        """(value in canonical unit, comparator, (original value, original unit) if converted, unit)."""
        comparator: str | None = None
        code: str | None = None
        text: str | None = None
        ucum = False
        quantity = holder.get("valueQuantity")
        if quantity is not None:
            if not isinstance(quantity, dict):
                raise _Reject(f"{m.name}: valueQuantity is not an object", "invalid")
            raw = quantity.get("value")
            if raw is None:
                if "dataAbsentReason" in holder:
                    raise _Absent
                raise _Reject(f"{m.name}: valueQuantity has no value", "required")
            # FHIR JSON writes a decimal as a JSON number: "88" (a string), true or {...} is a sender's bug whose
            # meaning is a guess, so it is refused with the type named rather than converted.
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise _Reject(
                    f"{m.name}: valueQuantity.value is a JSON {_json_type(raw)}, not a number (FHIR decimal)", "invalid"
                )
            value = float(raw)
            comp = quantity.get("comparator")
            if comp is not None:
                comparator = _COMPARATORS.get(comp) if isinstance(comp, str) else None
                if comparator is None:
                    raise _Reject(f"{m.name}: comparator '{str(comp)[:8]}' is not a usable bound", "not-supported")
            code = quantity.get("code") if isinstance(quantity.get("code"), str) else None
            text = quantity.get("unit") if isinstance(quantity.get("unit"), str) else None
            unit_system = quantity.get("system")
            ucum = isinstance(unit_system, str) and unit_system in UCUM_SYSTEMS
        elif "valueInteger" in holder or "valueDecimal" in holder:
            raw = holder.get("valueInteger", holder.get("valueDecimal"))
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise _Reject(f"{m.name}: valueInteger is not a number", "invalid")
            value = float(raw)
        elif "valueString" in holder:
            match = _NUMBER.match(str(holder["valueString"]))
            if match is None:
                raise _Reject(f"{m.name}: valueString is not a number", "value")
            comparator = _COMPARATORS[match.group(1)] if match.group(1) else None
            value = float(match.group(2))
            text = match.group(3) or None
        elif "dataAbsentReason" in holder:
            raise _Absent
        else:
            other = next((k for k in holder if k.startswith("value")), None)
            if other is not None:
                raise _Reject(f"{m.name}: {other} is not a numeric value", "not-supported")
            if panel:
                raise _Absent  # a panel code whose readings are its components
            raise _Reject(f"{m.name}: no value and no dataAbsentReason", "required")
        if value != value or value in (float("inf"), float("-inf")):
            raise _Reject(f"{m.name}: value is not finite", "value")
        try:
            conversion, recognised = self.units.resolve(m, code, text, ucum=ucum)
        except UnitError as error:
            raise _Reject(str(error), "value") from error
        original = None
        if conversion.factor != 1.0 or conversion.offset != 0.0:
            original = (value, code or text)
            value = round(conversion.apply(value), 6)
        if not m.low <= value <= m.high:
            raise _Reject(f"{m.name} outside plausible range [{m.low:g}, {m.high:g}] {m.unit}", "value")
        return value, comparator, original, recognised

    def _reading(self, where: _Where, reading: _Value, *, per_encounter: bool = False) -> ObservationRecorded:
        # Age and sex come from one Patient resource for each of its encounters: the encounter is part of their
        # natural key (two encounters may start at the same instant).
        m = reading.measurement
        event_id = observation_id(where.source, m.name, where.observed_at)
        if per_encounter:
            event_id = fast_id(event_id, where.encounter)
        original = reading.original
        return recorded(
            event_id,
            where.occurred_at,
            where.encounter,
            where.patient,
            m.name,
            reading.value,
            m.unit,
            where.observed_at,
            where.status,
            reading.comparator,
            where.source,
            original[0] if original else None,
            original[1] if original else None,
        )

    @staticmethod
    def _retraction(
        source: SourceRef,
        encounter: str | None,
        patient: str | None,
        features: list[str],
        reason: str,
        res: dict[str, Any],
    ) -> ObservationRetracted:
        when: datetime | None = None
        for key in ("issued",):
            try:
                when = parse_fhir_datetime(res.get(key))[0]
            except (ValueError, TypeError):
                when = None
        meta = res.get("meta")
        if when is None and isinstance(meta, dict):
            try:
                when = parse_fhir_datetime(meta.get("lastUpdated"))[0]
            except (ValueError, TypeError):
                when = None
        return ObservationRetracted(
            event_id=deterministic_id(
                "retract", source.resource_type, source.resource_id, source.version_id, reason, *features
            ),
            occurred_at=when or utcnow(),
            key=encounter or UNLINKED_KEY,
            encounter=encounter,
            patient=patient,
            feature=features[0] if len(set(features)) == 1 else None,
            retracted_resource=SourceRef(
                resource_type=source.resource_type, resource_id=source.resource_id, system=source.system
            ),
            reason=reason,
        )


def event_line(event: Canonical) -> dict[str, Any]:
    """An event as the dry run prints it: the fields as published."""
    return event.model_dump(mode="json")


__all__ = [
    "EntryOutcome",
    "InvalidPayload",
    "MapResult",
    "Mapper",
    "Rejection",
    "TimeRules",
    "content_bytes",
    "content_digest",
    "content_hash",
    "event_line",
    "parse_fhir_datetime",
    "strip_bom",
]
