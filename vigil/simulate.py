"""An EHR simulator: PhysioNet-format stays sent to ingest as real FHIR R4, outcomes published with a delay.

Each stay becomes a Patient (gender only: the PhysioNet data is de-identified and carries age, not a birth
date), an Encounter (period.start = ICU admission, the ICU unit as serviceType), an Observation for the age
(LOINC 30525-0) and one Observation per measured cell, coded with the vocabulary's preferred LOINC code and the
canonical UCUM unit. Row ``hour = h`` is sent at ``icu_admitted_at + h`` (the convention of
:mod:`vigil_scoring.physionet`), one transaction Bundle per stay-hour, as an EHR interface engine batches them.
The last bundle of a stay finishes its Encounter (period.end = discharge).

Outcomes do not come from the EHR feed but from a later coding step: sepsis onset (the challenge's t_sepsis) or
discharge, published on the outcomes topic ``outcome_delay_hours`` after the fact.

The clock is simulated: ``speed`` simulated hours per wall second (0: as fast as ingest accepts).
Drift knobs change what is sent from a simulated hour on, as an EHR upgrade or a new protocol would.
"""

from __future__ import annotations

import asyncio
import gzip
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import pandas as pd

from vigil_contracts.events import OutcomeRecorded, deterministic_id
from vigil_contracts.vocabulary import BY_COLUMN, VOCABULARY
from vigil_runtime.kafka_security import KafkaConnection
from vigil_runtime.producer import AckedProducer
from vigil_runtime.tracing import new_origin, within
from vigil_scoring.physionet import ICU_EPOCH, MEASUREMENT_COLUMNS, sepsis_onset_hour

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "data" / "sample" / "physionet_sample.parquet"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


@dataclass(frozen=True)
class Drift:
    """One drift knob: what changes, from which simulated hour (counted from the simulation's start)."""

    kind: Literal["degf", "drop", "scale", "population"]
    from_hour: float
    feature: str | None = None
    factor: float = 1.0
    query: str | None = None

    @staticmethod
    def parse(spec: str) -> Drift:
        """Parse ``temp-degf@H``, ``drop=lactate@H``, ``scale=heart_rate:1.1@H`` or ``population=Age>65@H``."""
        body, _, at = spec.partition("@")
        hour = float(at) if at else 0.0
        if body == "temp-degf":
            return Drift("degf", hour, feature="temperature")
        key, _, arg = body.partition("=")
        if key == "drop" and arg in VOCABULARY:
            return Drift("drop", hour, feature=arg)
        if key == "scale":
            feat, _, factor = arg.partition(":")
            if feat in VOCABULARY and factor:
                return Drift("scale", hour, feature=feat, factor=float(factor))
        if key == "population" and re.fullmatch(r"[A-Za-z_]+\s*(<=|>=|<|>|==)\s*[\d.]+", arg):
            return Drift("population", hour, query=arg)
        raise ValueError(
            f"bad drift spec {spec!r}: use temp-degf@H, drop=FEATURE@H, scale=FEATURE:FACTOR@H or population=COL>X@H"
        )


@dataclass
class Stay:
    """One stay to send."""

    patient_id: str
    encounter: str
    patient: str
    icu_admitted_at: datetime
    rows: pd.DataFrame
    onset_hour: int | None

    @property
    def hours(self) -> int:
        return int(self.rows["hour"].max()) + 1

    @property
    def discharged_at(self) -> datetime:
        return self.icu_admitted_at + timedelta(hours=self.hours)


@dataclass
class SimulationReport:
    """What was sent, for the demo's accounting."""

    stays: int = 0
    bundles_planned: int = 0
    """Bundles in the timeline (what a complete run sends)."""
    entries_planned: int = 0
    bundles: int = 0
    """Bundles handed to the sender."""
    bundles_posted: int = 0
    """Bundles the sender put on the wire (once each, however many attempts)."""
    bundles_acknowledged: int = 0
    """Bundles ingest answered with 2xx (HTTP) or the broker acknowledged (Kafka)."""
    observations_sent: int = 0
    entries_sent: int = 0
    """Entries of the posted bundles: the denominator of the loss accounting."""
    readings_sent: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    http_status: Counter[int] = field(default_factory=Counter)
    entry_outcomes: Counter[str] = field(default_factory=Counter)
    drifted_readings: int = 0
    dropped_readings: int = 0
    rejected_encounters: set[str] = field(default_factory=set)
    """Encounters with at least one entry ingest refused (422): their stream differs from the rows."""
    transport_errors: Counter[str] = field(default_factory=Counter)
    """Failed attempts by exception type (each retried, or the last one failing the run)."""
    retried_status: Counter[int] = field(default_factory=Counter)
    """5xx answers that were retried (or failed the run)."""
    retries: int = 0
    stopped: str | None = None
    """Why the run stopped before the end (None: it completed)."""
    seconds: float = 0.0

    @property
    def entries_acknowledged(self) -> int:
        """Entries with their own outcome from ingest (published, accepted without a reading, or rejected)."""
        return sum(self.entry_outcomes.values())

    @property
    def entries_unacknowledged(self) -> int:
        """Entries the simulator should have delivered and has no outcome for: what was lost on the way in."""
        return self.entries_planned - self.entries_acknowledged

    def merge(self, other: SimulationReport) -> SimulationReport:
        """This report and ``other`` summed (the demo's two phases): counts add up, nothing is overwritten."""
        out = SimulationReport()
        for f in fields(SimulationReport):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, Counter):
                value: Any = Counter(a)
                value.update(b)
            elif isinstance(a, set):
                value = a | b
            elif f.name == "stopped":
                value = "; ".join(x for x in (a, b) if x) or None
            else:
                value = a + b
            setattr(out, f.name, value)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "stays": self.stays,
            "bundles_planned": self.bundles_planned,
            "bundles": self.bundles,
            "bundles_posted": self.bundles_posted,
            "bundles_acknowledged": self.bundles_acknowledged,
            "observations_sent": self.observations_sent,
            "entries_planned": self.entries_planned,
            "entries_sent": self.entries_sent,
            "entries_acknowledged": self.entries_acknowledged,
            "entries_unacknowledged": self.entries_unacknowledged,
            "transport_errors": dict(self.transport_errors),
            "retried_status": {str(k): v for k, v in self.retried_status.items()},
            "retries": self.retries,
            "stopped": self.stopped,
            "outcomes": dict(self.outcomes),
            "http_status": {str(k): v for k, v in self.http_status.items()},
            "entry_outcomes": dict(self.entry_outcomes),
            "drifted_readings": self.drifted_readings,
            "encounters_with_rejections": len(self.rejected_encounters),
            "dropped_readings": self.dropped_readings,
            "seconds": round(self.seconds, 2),
        }


def load_stays(
    data: Path | None = None,
    *,
    stays: int | None = None,
    seed: int = 7,
    start: datetime = ICU_EPOCH,
    arrival_hours: float = 0.0,
    id_prefix: str = "sim",
    septic_share: float | None = None,
) -> list[Stay]:
    """Read PhysioNet-format rows (the bundled sample by default) and plan each stay's admission time.

    ``stays`` draws that many stays (seeded); with ``septic_share`` the draw takes that share of septic stays
    (as many as there are, at most), the rest from the others: a case-enriched cohort, as the bundled sample is
    (15%), so that a few hundred stays hold enough septic stays for per-group evidence. ``arrival_hours`` spreads
    admissions evenly over that many hours (0: all admitted at ``start``).
    """
    path = data or SAMPLE
    frame = pd.read_parquet(path)
    ids = list(dict.fromkeys(frame["patient_id"].astype(str)))
    if stays is not None and stays < len(ids):
        if septic_share is None:
            ids = sorted(pd.Series(ids).sample(n=stays, random_state=seed).tolist())
        else:
            septic = frame.groupby(frame["patient_id"].astype(str), sort=False)["SepsisLabel"].max() > 0
            cases, others = septic[septic].index.tolist(), septic[~septic].index.tolist()
            n_cases = min(len(cases), round(septic_share * stays))
            n_others = min(len(others), stays - n_cases)
            n_cases = min(len(cases), stays - n_others)  # few non-septic stays: fill up with septic ones
            ids = sorted(
                pd.Series(cases).sample(n=n_cases, random_state=seed).tolist()
                + pd.Series(others).sample(n=n_others, random_state=seed).tolist()
            )
    wanted = frame[frame["patient_id"].astype(str).isin(set(ids))]
    out: list[Stay] = []
    for i, (pid, rows) in enumerate(wanted.groupby("patient_id", sort=True)):
        offset = arrival_hours * i / max(1, len(ids) - 1) if arrival_hours else 0.0
        rows = rows.sort_values("hour").reset_index(drop=True)
        out.append(
            Stay(
                patient_id=str(pid),
                encounter=f"{id_prefix}-enc-{pid}",
                patient=f"{id_prefix}-pat-{pid}",
                icu_admitted_at=start + timedelta(hours=round(offset)),
                rows=rows,
                onset_hour=sepsis_onset_hour(rows),
            )
        )
    return out


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def patient_resource(stay: Stay) -> dict[str, Any]:
    """The Patient: gender only (de-identified source), an MRN-style identifier."""
    gender = stay.rows["Gender"].dropna()
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": stay.patient,
        "identifier": [{"system": "urn:vigil:simulator:mrn", "value": stay.patient}],
    }
    if not gender.empty:
        resource["gender"] = "male" if float(gender.iloc[0]) == 1.0 else "female"
    return resource


def encounter_resource(stay: Stay, *, finished: bool) -> dict[str, Any]:
    """The ICU Encounter; ``finished`` adds the discharge as period.end."""
    unit = None
    if (stay.rows.get("Unit1", pd.Series(dtype=float)) == 1).any():
        unit = "MICU"
    elif (stay.rows.get("Unit2", pd.Series(dtype=float)) == 1).any():
        unit = "SICU"
    period: dict[str, str] = {"start": _iso(stay.icu_admitted_at)}
    if finished:
        period["end"] = _iso(stay.discharged_at)
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": stay.encounter,
        "meta": {"versionId": "2" if finished else "1"},
        "status": "finished" if finished else "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP", "display": "inpatient"},
        "subject": {"reference": f"Patient/{stay.patient}"},
        "period": period,
    }
    hosp = stay.rows["HospAdmTime"].dropna() if "HospAdmTime" in stay.rows else pd.Series(dtype=float)
    if not hosp.empty and math.isfinite(float(hosp.iloc[0])):
        resource["extension"] = [
            {
                "url": "urn:vigil:hospital-admission",
                "valueDateTime": _iso(stay.icu_admitted_at + timedelta(hours=float(hosp.iloc[0]))),
            }
        ]
    if unit:
        resource["serviceType"] = {"text": unit}
        resource["location"] = [{"location": {"display": f"{unit} bed"}}]
    return resource


def observation_resource(stay: Stay, column: str, hour: int, value: float, unit: str | None = None) -> dict[str, Any]:
    """One reading as a FHIR Observation with LOINC and UCUM coding."""
    m = BY_COLUMN[column]
    at = stay.icu_admitted_at + timedelta(hours=hour)
    ucum = unit or m.unit
    return {
        "resourceType": "Observation",
        "id": f"{stay.encounter}-h{hour}-{column}",
        "meta": {"versionId": "1"},
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs" if m.kind != "lab" else "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": m.loinc[0], "display": m.description}], "text": m.description},
        "subject": {"reference": f"Patient/{stay.patient}"},
        "encounter": {"reference": f"Encounter/{stay.encounter}"},
        "effectiveDateTime": _iso(at),
        "valueQuantity": {"value": round(value, 6), "unit": ucum, "system": UCUM, "code": ucum},
    }


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    version = resource.get("meta", {}).get("versionId")
    uid = deterministic_id("fhir", resource["resourceType"], resource["id"], version)
    return {
        "fullUrl": f"urn:uuid:{uid}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


def hour_bundle(
    stay: Stay,
    row: pd.Series,
    *,
    first: bool,
    last: bool,
    sim_hour: float,
    drifts: list[Drift],
    report: SimulationReport,
) -> dict[str, Any] | None:
    """The transaction Bundle of one stay-hour (None when nothing is left to send for that hour)."""
    hour = int(row["hour"])
    resources: list[dict[str, Any]] = []
    if first:
        resources.append(patient_resource(stay))
        resources.append(encounter_resource(stay, finished=False))
        age = row.get("Age")
        if age is not None and age == age:
            resources.append(observation_resource(stay, "Age", hour, float(age)))
    active = [d for d in drifts if sim_hour >= d.from_hour and d.kind != "population"]
    for column in MEASUREMENT_COLUMNS:
        value = row.get(column)
        if value is None or value != value:
            continue
        feature = BY_COLUMN[column].name
        unit = None
        v = float(value)
        skip = False
        for d in active:
            if d.feature != feature:
                continue
            if d.kind == "drop":
                skip = True
            elif d.kind == "scale":
                v *= d.factor
                report.drifted_readings += 1
            elif d.kind == "degf":
                v = v * 9 / 5 + 32  # the number in degF, still labelled Cel: a broken interface mapping
                report.drifted_readings += 1
        if skip:
            report.dropped_readings += 1
            continue
        resources.append(observation_resource(stay, column, hour, v, unit))
        report.readings_sent[feature] += 1
    if last:
        resources.append(encounter_resource(stay, finished=True))
    if not resources:
        return None
    report.bundles_planned += 1
    report.entries_planned += len(resources)
    return {
        "resourceType": "Bundle",
        "id": deterministic_id("bundle", stay.encounter, hour),
        "type": "transaction",
        "entry": [_entry(r) for r in resources],
    }


def outcome_event(stay: Stay, delay_hours: float) -> OutcomeRecorded:
    """Sepsis onset (t_sepsis) or discharge, known ``delay_hours`` later."""
    if stay.onset_hour is not None:
        onset = stay.icu_admitted_at + timedelta(hours=stay.onset_hour)
        kind: Literal["sepsis", "discharged"] = "sepsis"
        known = onset + timedelta(hours=delay_hours)
    else:
        onset = None
        kind = "discharged"
        known = stay.discharged_at + timedelta(hours=delay_hours)
    return OutcomeRecorded(
        event_id=deterministic_id("outcome", stay.encounter, kind),
        occurred_at=onset or stay.discharged_at,
        key=stay.encounter,
        encounter=stay.encounter,
        patient=stay.patient,
        outcome=kind,
        onset_at=onset,
        recorded_at=known,
    )


@dataclass(order=True)
class _Item:
    at: datetime
    order: int
    kind: str = field(compare=False)
    payload: Any = field(compare=False)
    key: str = field(compare=False)


def timeline(
    stays: list[Stay], *, drifts: list[Drift], outcome_delay_hours: float, start: datetime, report: SimulationReport
) -> list[_Item]:
    """Every bundle and outcome in simulated-time order."""
    items: list[_Item] = []
    populations = [d for d in drifts if d.kind == "population"]
    n = 0
    for stay in stays:
        admitted_h = (stay.icu_admitted_at - start).total_seconds() / 3600
        if any(admitted_h >= d.from_hour and not _matches(stay, d.query or "") for d in populations):
            continue  # after the shift, only the new population is admitted
        report.stays += 1
        rows = list(stay.rows.iterrows())
        for i, (_, row) in enumerate(rows):
            at = stay.icu_admitted_at + timedelta(hours=int(row["hour"]))
            sim_hour = (at - start).total_seconds() / 3600
            bundle = hour_bundle(
                stay, row, first=i == 0, last=i == len(rows) - 1, sim_hour=sim_hour, drifts=drifts, report=report
            )
            if bundle is not None:
                items.append(_Item(at, n, "bundle", bundle, stay.encounter))
                n += 1
        outcome = outcome_event(stay, outcome_delay_hours)
        items.append(_Item(outcome.recorded_at, n, "outcome", outcome, stay.encounter))
        n += 1
    items.sort()
    return items


def _matches(stay: Stay, query: str) -> bool:
    m = re.fullmatch(r"([A-Za-z_]+)\s*(<=|>=|<|>|==)\s*([\d.]+)", query)
    if not m:
        return True
    col, op, val = m.group(1), m.group(2), float(m.group(3))
    series = stay.rows[col].dropna() if col in stay.rows else pd.Series(dtype=float)
    if series.empty:
        return False
    x = float(series.iloc[0])
    return {"<": x < val, "<=": x <= val, ">": x > val, ">=": x >= val, "==": x == val}[op]


class SendFailed(RuntimeError):
    """A bundle could not be delivered after every retry: the run stops, naming what failed.

    The stay is named by the simulator's own handle (its position in the plan), never by a patient or encounter
    identifier; the bundle by its id, a hash of the stay and hour.
    """

    def __init__(self, stay: str, bundle_id: str, sequence: int, cause: str) -> None:
        super().__init__(f"sending {stay}'s bundle #{sequence} (Bundle/{bundle_id}) failed: {cause}")
        self.stay = stay
        self.bundle_id = bundle_id
        self.sequence = sequence
        self.cause = cause


class SimulationStopped(RuntimeError):
    """The run stopped before everything was sent; ``report`` holds what was sent and acknowledged until then."""

    def __init__(self, reason: str, report: SimulationReport) -> None:
        super().__init__(reason)
        self.reason = reason
        self.report = report


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one bundle is posted.

    Ingest restarting, the broker briefly unable to take writes or a dropped connection are worth retrying: bundle
    and entry ids are deterministic, so a resent bundle is deduplicated by ingest (200 for entries already
    published). The worst case per bundle is ``attempts * timeout_s`` plus the backoff.
    """

    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    timeout_s: float = 30.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff after the ``attempt``-th failure (1-based), capped."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


class HttpSender:
    """Posts bundles to ingest's FHIR base, several encounters in flight at once, each encounter in order.

    An interface engine keeps one patient's messages in sequence (a later bundle is sent once the earlier one
    is acknowledged); different encounters go in parallel. A concurrency slot is released whatever happens to
    its bundle; when a bundle finally fails, the later bundles of its stay are not sent (they would arrive out of
    order) and :attr:`failure` names it, which stops the run.
    """

    def __init__(
        self,
        base_url: str,
        report: SimulationReport,
        concurrency: int = 8,
        *,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        handles: dict[str, str] | None = None,
        transport: Any = None,
    ) -> None:
        import httpx

        self.retry = retry or RetryPolicy()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=self.retry.timeout_s, transport=transport, headers=headers
        )
        self.report = report
        self.handles = handles or {}
        self.slots = asyncio.Semaphore(concurrency)
        self.pending: set[asyncio.Task[None]] = set()
        self.last: dict[str, asyncio.Task[None]] = {}
        self.sequence: Counter[str] = Counter()
        self.failure: SendFailed | None = None
        self.failed_stays: set[str] = set()

    def _handle(self, key: str) -> str:
        return self.handles.get(key) or f"stay {deterministic_id('stay-handle', key)[:8]}"

    async def send(self, key: str, bundle: dict[str, Any]) -> None:
        """Queue one bundle behind its stay's previous one; waits for a free slot (at most ``concurrency``)."""
        self.raise_if_failed()
        await self.slots.acquire()
        self.sequence[key] += 1
        task = asyncio.create_task(self._after(self.last.get(key), key, bundle, self.sequence[key]))
        self.last[key] = task
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def raise_if_failed(self) -> None:
        """Raise the first failure, if a bundle finally failed."""
        if self.failure is not None:
            raise self.failure

    async def _after(self, previous: asyncio.Task[None] | None, key: str, bundle: dict[str, Any], seq: int) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])  # the stay's earlier bundle first, whatever became of it
            if key in self.failed_stays:
                return  # its earlier bundle failed: sending this one would put the stay out of order
            await self._post(key, bundle, seq)
        finally:
            self.slots.release()

    async def _post(self, key: str, bundle: dict[str, Any], seq: int) -> None:
        import httpx

        body = orjson.dumps(bundle)
        self.report.bundles_posted += 1
        self.report.entries_sent += len(bundle.get("entry", []))
        self.report.observations_sent += sum(
            1 for e in bundle.get("entry", []) if e.get("resource", {}).get("resourceType") == "Observation"
        )
        cause = ""
        for attempt in range(1, self.retry.attempts + 1):
            try:
                r = await self.client.post("/", content=body, headers={"content-type": "application/fhir+json"})
            except httpx.TransportError as error:  # timeouts, refused or dropped connections, protocol errors
                cause = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                self.report.transport_errors[type(error).__name__] += 1
            else:
                if r.status_code < 500:
                    self._record(key, r)
                    return
                cause = f"HTTP {r.status_code}"
                self.report.retried_status[r.status_code] += 1
            if attempt < self.retry.attempts:
                self.report.retries += 1
                await asyncio.sleep(self.retry.delay(attempt))
        # Recorded, not raised: the task ends quietly and the run raises the first failure once (raise_if_failed).
        self.failed_stays.add(key)
        if self.failure is None:
            self.failure = SendFailed(
                self._handle(key), str(bundle.get("id", "?")), seq, f"{cause} after {self.retry.attempts} attempts"
            )

    def _record(self, key: str, r: Any) -> None:
        """Count the acknowledgement: the bundle's status and each entry's own outcome."""
        self.report.http_status[r.status_code] += 1
        if r.status_code < 300:
            self.report.bundles_acknowledged += 1
        if r.headers.get("content-type", "").endswith("json"):
            body = r.json()
            for entry in body.get("entry", []) if isinstance(body, dict) else []:
                status = str(entry.get("response", {}).get("status", "?")).split(" ")[0]
                self.report.entry_outcomes[status] += 1
                if status == "422":
                    self.report.rejected_encounters.add(key)

    async def close(self) -> None:
        """Wait for every bundle in flight; raise the first failure if there was one."""
        try:
            if self.pending:
                await asyncio.gather(*self.pending, return_exceptions=True)
        finally:
            await self.client.aclose()
        self.raise_if_failed()

    async def abort(self) -> None:
        """Stop: cancel what is in flight (nothing more is sent) and close the connections."""
        for task in list(self.pending):
            task.cancel()
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
        await self.client.aclose()


class KafkaSender:
    """Publishes bundles as raw FHIR JSON on the raw topic, keyed by encounter, 500 at a time."""

    def __init__(self, producer: AckedProducer, topic: str, report: SimulationReport) -> None:
        self.producer = producer
        self.topic = topic
        self.report = report
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.failure: SendFailed | None = None

    async def send(self, key: str, bundle: dict[str, Any]) -> None:
        self.pending.append((key, bundle))
        if len(self.pending) >= 500:
            await self.flush()

    async def flush(self) -> None:
        if self.pending:
            # Raw FHIR is not a Vigil event: no event-type headers, the run's correlation id and trace only.
            records = [(key.encode(), orjson.dumps(bundle), None) for key, bundle in self.pending]
            await self.producer.send_all(self.topic, records, kind=None)
            for _, bundle in self.pending:  # acknowledged by the broker (acks=all)
                self.report.bundles_posted += 1
                self.report.bundles_acknowledged += 1
                self.report.entries_sent += len(bundle.get("entry", []))
                self.report.observations_sent += sum(
                    1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
                )
            self.pending.clear()

    def raise_if_failed(self) -> None:
        """A failed publish raises from :meth:`flush` itself."""

    async def close(self) -> None:
        await self.flush()

    async def abort(self) -> None:
        self.pending.clear()


class BundleSender(Protocol):
    """Where the simulator sends bundles: ingest over HTTP, or the raw topic."""

    async def send(self, key: str, bundle: dict[str, Any]) -> None: ...
    def raise_if_failed(self) -> None: ...
    async def close(self) -> None: ...
    async def abort(self) -> None: ...


OutcomePublisher = Callable[[OutcomeRecorded], Awaitable[Any]]
"""Publishes one outcome and returns an awaitable acknowledgement (the send runs on while the run goes on)."""


async def run_timeline(
    items: list[_Item],
    *,
    sender: BundleSender,
    publish_outcome: OutcomePublisher,
    report: SimulationReport,
    speed: float = 0.0,
    start: datetime = ICU_EPOCH,
    deadline_s: float | None = None,
    on_progress: Callable[[SimulationReport, datetime], None] | None = None,
    progress_every_s: float = 0.5,
    hold: asyncio.Event | None = None,
) -> SimulationReport:
    """Send the timeline's bundles and outcomes in order; stops at the first bundle that finally fails.

    Raises :class:`SimulationStopped` (with the report so far, whose accounting then shows the loss) when a bundle
    could not be delivered or ``deadline_s`` passed; progress is reported at most every ``progress_every_s``.
    While ``hold`` is clear the feed sends nothing new; its schedule (and deadline) then moves by the time held.
    """
    t0 = time.monotonic()
    last_progress = 0.0
    outcome_acks: list[Any] = []

    def check_deadline() -> None:
        if deadline_s is not None and time.monotonic() - t0 > deadline_s:
            raise TimeoutError(
                f"the simulation did not finish within {deadline_s:.0f}s: {report.bundles_acknowledged} of "
                f"{report.bundles_planned} bundles acknowledged"
            )

    async def within_deadline(awaitable: Awaitable[Any]) -> Any:
        if deadline_s is None:
            return await awaitable
        left = max(0.0, deadline_s - (time.monotonic() - t0))
        try:
            return await asyncio.wait_for(awaitable, timeout=left)
        except TimeoutError:
            check_deadline()
            raise

    try:
        for item in items:
            if hold is not None and not hold.is_set():
                held = time.monotonic()
                await within_deadline(hold.wait())
                t0 += time.monotonic() - held  # no burst of overdue bundles after a hold
            if speed > 0:
                due = t0 + (item.at - start).total_seconds() / 3600 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await within_deadline(asyncio.sleep(delay))
            sender.raise_if_failed()
            check_deadline()
            if item.kind == "bundle":
                await within_deadline(sender.send(item.key, item.payload))
                report.bundles += 1
            else:
                # Outcomes published only once everything the EHR sent before them is out, like a later feed.
                outcome_acks.append(await publish_outcome(item.payload))
                report.outcomes[item.payload.outcome] += 1
            if on_progress and time.monotonic() - last_progress >= progress_every_s:
                last_progress = time.monotonic()
                on_progress(report, item.at)
        await within_deadline(sender.close())
        await within_deadline(asyncio.gather(*outcome_acks))
    except (SendFailed, TimeoutError) as error:
        await sender.abort()
        report.seconds = time.monotonic() - t0
        report.stopped = str(error)
        raise SimulationStopped(str(error), report) from error
    except BaseException:
        await sender.abort()
        raise
    report.seconds = time.monotonic() - t0
    if on_progress:
        on_progress(report, items[-1].at if items else start)
    return report


def stay_handles(stays: list[Stay]) -> dict[str, str]:
    """Each stay's name in messages: its position in the plan (no patient or encounter identifier)."""
    return {s.encounter: f"stay #{i + 1} of {len(stays)}" for i, s in enumerate(stays)}


async def simulate(
    stays: list[Stay],
    *,
    kafka: KafkaConnection,
    topics: Any,
    via: Literal["http", "kafka"] = "http",
    ingest_url: str = "http://127.0.0.1:8001",
    token: str | None = None,
    speed: float = 0.0,
    outcome_delay_hours: float = 6.0,
    drifts: list[Drift] | None = None,
    start: datetime = ICU_EPOCH,
    deadline_s: float | None = None,
    retry: RetryPolicy | None = None,
    on_progress: Callable[[SimulationReport, datetime], None] | None = None,
    hold: asyncio.Event | None = None,
) -> SimulationReport:
    """Send every stay's bundles and outcomes in simulated-time order; returns what was sent and acknowledged.

    ``token``: the bearer token ingest's FHIR writes need (the stack's ``simulator`` token). Raises
    :class:`SimulationStopped` when a bundle finally fails or ``deadline_s`` passes. ``hold``: see
    :func:`run_timeline` (the chaos suite holds the feed until added instances are ready on a loaded machine).
    """
    report = SimulationReport()
    items = timeline(stays, drifts=drifts or [], outcome_delay_hours=outcome_delay_hours, start=start, report=report)
    producer = AckedProducer(kafka, client_id="vigil-simulator", linger_ms=5)
    await producer.start()
    sender: BundleSender = (
        HttpSender(ingest_url, report, token=token, retry=retry, handles=stay_handles(stays))
        if via == "http"
        else KafkaSender(producer, topics.fhir_raw, report)
    )

    async def publish_outcome(outcome: OutcomeRecorded) -> Any:
        # Not awaited here: an outcome waits for its acknowledgement while the feed goes on (gathered at the end).
        return asyncio.ensure_future(producer.publish_all(topics.outcomes, [outcome]))

    # Vigil's headers (vigil_contracts.headers): one correlation id and trace for everything the run publishes.
    try:
        with within(new_origin()):
            return await run_timeline(
                items,
                sender=sender,
                publish_outcome=publish_outcome,
                report=report,
                speed=speed,
                start=start,
                deadline_s=deadline_s,
                on_progress=on_progress,
                hold=hold,
            )
    finally:
        await producer.stop()


def write_bundles(stays: list[Stay], out: Path, *, drifts: list[Drift] | None = None) -> SimulationReport:
    """Write the simulated feed as NDJSON (gzip when the name ends in .gz), for `vigil ingest map` or replay."""
    report = SimulationReport()
    items = timeline(stays, drifts=drifts or [], outcome_delay_hours=0, start=ICU_EPOCH, report=report)
    opener: Any = gzip.open if out.suffix == ".gz" else open
    with opener(out, "wb") as f:
        for item in items:
            if item.kind == "bundle":
                f.write(orjson.dumps(item.payload) + b"\n")
                report.bundles += 1
                report.entries_sent += len(item.payload["entry"])
                report.observations_sent += sum(
                    1 for e in item.payload["entry"] if e["resource"]["resourceType"] == "Observation"
                )
    return report
