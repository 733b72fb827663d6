"""The main job in one command: a clinical model's life, end to end, on real ICU stays.

``vigil demo`` starts the native broker and the five services, registers a production model and a candidate in
shadow through the registry's API (with the four-eyes approval), streams a cohort of real stays from an EHR
simulator over FHIR, and tells the story as it happens: observations in, scores out, alerts as they fire. Then
it asks shadow for its comparison, lets the registry's policy decide the promotion on that evidence, streams the
rest of the cohort (with a drift injected) under the promoted model, runs a rollback drill, and ends with the
accounting that nothing was lost, each model's figures, and an HTML report.

Figures of the models are computed from the scores that went through Kafka, on the PhysioNet rows of the stays
they scored ("bedside view": a stay-hour without new data shows the latest score, as a bedside display would);
the same computation over ``vigil model predict``'s offline predictions for the same rows is reported beside
them, and the two must agree.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import re
import tarfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pandas as pd
from rich.console import Console
from rich.live import Live
from rich.table import Table

from vigil import simulate as sim
from vigil.kafka_local import vigil_home
from vigil.stack import Stack
from vigil_contracts import events as ev
from vigil_contracts.access import Principal
from vigil_contracts.topics import Topics
from vigil_runtime.kafka_security import KafkaConnection
from vigil_scoring.model_package import ModelPackage, default_package_path
from vigil_scoring.physionet import ICU_EPOCH, MEASUREMENT_COLUMNS

MODEL = "sepsis"
TOKENS = {
    "scientist": "dev-scientist-token",
    "approver": "dev-approver-token",
    "approver2": "dev-approver2-token",
    "admin": "dev-admin-token",
    "viewer": "dev-viewer-token",
}


@dataclass
class DemoOptions:
    """What the demo runs on."""

    data: Path | None = None
    stays: int | None = 300
    """The whole bundled sample: its 45 septic stays (21 women, 24 men) are few, and the policy's disparity ratio
    needs at least 10 septic stays in each group during shadow (else it is undefined and the policy fails closed)."""
    septic_share: float | None = 0.15
    """When ``stays`` is fewer than the data holds: the share of septic stays in the draw (the bundled sample's 15%;
    None: a plain random draw). Another hospital's data (the Challenge's set B: 5.7% septic) would otherwise give a
    few-hundred-stay cohort too few septic stays per group for the policy, which then fails closed."""
    shadow_share: float = 2 / 3
    """Share of the stays streamed while the candidate is in shadow (stratified by sex and sepsis): 200 of 300,
    so 14 septic women and 16 septic men; the other 100 (about 4,000 stay-hours, above the drift detector's
    2,000-stay-hour missingness window) stream under whichever model is then in production."""
    json_out: Path | None = None
    report_out: Path | None = None
    production_version: str = "2"
    """The unit's current model: the smaller gradient-boosted model of the repository."""
    candidate_version: str = "3"
    """The candidate: v1's larger model trained on v2's split, its threshold held to v2's alert budget (its card)."""
    speed: float = 0.0
    outcome_delay_hours: float = 6.0
    drift: str = "temp-degf"
    keep_running: bool = False
    timeout_s: float = 420.0
    kafka_port: int = 9092
    port_base: int = 8001
    seed: int = 7


@dataclass
class Observed:
    """Everything the demo saw on the topics, deduplicated by event id."""

    ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    icu_start: dict[str, datetime] = field(default_factory=dict)
    obs_hours: set[tuple[str, int]] = field(default_factory=set)
    observations: int = 0
    retractions: int = 0
    live: dict[tuple[str, int], ev.RiskScored] = field(default_factory=dict)
    live_by_version: Counter[str] = field(default_factory=Counter)
    default_model_scores: int = 0
    shadow: dict[tuple[str, str, int], ev.RiskScored] = field(default_factory=dict)
    shadow_by_version: Counter[str] = field(default_factory=Counter)
    alerts: list[ev.AlertRaised] = field(default_factory=list)
    dead_letters: Counter[str] = field(default_factory=Counter)
    lifecycle: list[ev.ModelLifecycleChanged] = field(default_factory=list)
    comparisons: list[ev.ComparisonSummarized] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    pending_obs: list[ev.ObservationRecorded] = field(default_factory=list)

    def first(self, kind: str, event_id: str) -> bool:
        """True the first time an event id is seen on a topic (at-least-once delivery repeats some)."""
        seen = self.ids[kind]
        if event_id in seen:
            return False
        seen.add(event_id)
        return True

    def hour_of(self, encounter: str, at: datetime) -> int | None:
        start = self.icu_start.get(encounter)
        return None if start is None else math.floor((at - start).total_seconds() / 3600)

    def take(self, topic_kind: str, value: bytes) -> ev.Event | None:
        event = ev.any_event_adapter.validate_json(value)
        if not self.first(topic_kind, event.event_id):
            return None
        if isinstance(event, ev.EncounterRecorded) and event.icu_admitted_at is not None:
            self.icu_start.setdefault(event.encounter, event.icu_admitted_at)
            pending, self.pending_obs = self.pending_obs, []
            for o in pending:
                self._obs(o)
        elif isinstance(event, ev.ObservationRecorded):
            self._obs(event)
        elif isinstance(event, ev.ObservationRetracted):
            self.retractions += 1
        elif isinstance(event, ev.RiskScored):
            if topic_kind == "live":
                self.live_by_version[event.model_version] += 1
                self.default_model_scores += int(event.default_model)
                k = (event.encounter, event.hour)
                if k not in self.live or event.observations >= self.live[k].observations:
                    self.live[k] = event
            else:
                self.shadow_by_version[event.model_version] += 1
                ks = (event.model_version, event.encounter, event.hour)
                if ks not in self.shadow or event.observations >= self.shadow[ks].observations:
                    self.shadow[ks] = event
        elif isinstance(event, ev.AlertRaised):
            self.alerts.append(event)
        elif isinstance(event, ev.DeadLettered):
            self.dead_letters[f"{event.service}: {event.error_type}"] += 1
        elif isinstance(event, ev.ModelLifecycleChanged):
            self.lifecycle.append(event)
        elif isinstance(event, ev.ComparisonSummarized):
            self.comparisons.append(event)
        elif isinstance(event, ev.OutcomeRecorded):
            self.outcomes[event.outcome] += 1
        return event

    def _obs(self, o: ev.ObservationRecorded) -> None:
        if o.encounter is None:
            return
        if o.feature in ("age", "sex"):
            return  # demographics arrive with the encounter; the hours that count are the measured ones
        hour = self.hour_of(o.encounter, o.observed_at)
        if hour is None:
            self.pending_obs.append(o)
            return
        self.observations += 1
        self.obs_hours.add((o.encounter, hour))

    def unscored_hours(self) -> set[tuple[str, int]]:
        """Stay-hours with a canonical observation and no live score (must be empty at the end)."""
        return self.obs_hours - set(self.live)

    def unscored_shadow(self, version: str) -> set[tuple[str, int]]:
        return {k for k in self.obs_hours if (version, *k) not in self.shadow}


class TopicWatcher:
    """Reads every topic of the stack from the beginning (no consumer group, nothing committed)."""

    KINDS: ClassVar[dict[str, str]] = {
        "observations": "observations",
        "scores_live": "live",
        "scores_shadow": "shadow",
        "alerts": "alerts",
        "dead_letter": "dlq",
        "lifecycle": "lifecycle",
        "comparisons": "comparisons",
        "outcomes": "outcomes",
    }

    def __init__(self, kafka: KafkaConnection, topics: Topics, on_event: Any = None) -> None:
        self.kafka = kafka
        self.topics = topics
        self.observed = Observed()
        self.on_event = on_event
        self.counts: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.last_activity = time.monotonic()

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self.names = {getattr(self.topics, attr): kind for attr, kind in self.KINDS.items()}
        self.consumer = AIOKafkaConsumer(
            *self.names,
            **self.kafka.client_kwargs(),
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_poll_records=5000,
            metadata_max_age_ms=2000,
        )
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, records in batches.items():
                kind = self.names[tp.topic]
                for r in records:
                    self.counts[kind] += 1
                    self.last_activity = time.monotonic()
                    try:
                        event = self.observed.take(kind, r.value)
                    except ValueError:
                        continue  # the watcher only reads; malformed records are the services' to park
                    if event is not None and self.on_event:
                        self.on_event(kind, event)

    async def stop(self) -> None:
        self._stop.set()
        if self._task:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout=5)
        await self.consumer.stop()


class Registry:
    """The registry's REST API with the development tokens of each role."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=60.0)

    def call(self, role: str, method: str, path: str, **kw: Any) -> Any:
        r = self.client.request(method, path, headers={"Authorization": f"Bearer {TOKENS[role]}"}, **kw)
        if r.status_code >= 400:
            raise RuntimeError(f"registry {method} {path} as {role}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    def register(self, package: Path) -> dict[str, Any]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for f in sorted(package.iterdir()):
                if f.is_file():
                    tar.add(f, arcname=f.name)
        return dict(self._post_archive(buf.getvalue()))

    def shadow_propose_approve(self, version: str, *, approver: str, reasons: tuple[str, str, str]) -> None:
        """The governed path to production: a data scientist stages and proposes, a clinical approver approves."""
        stage_reason, proposal_reason, approval_reason = reasons
        base = f"/models/{MODEL}/versions/{version}"
        self.call("scientist", "POST", f"{base}/stage", json={"to": "shadow", "reason": stage_reason})
        self.call("scientist", "POST", f"{base}/proposals", json={"reason": proposal_reason})
        self.call(approver, "POST", f"{base}/approve", json={"reason": approval_reason})

    def _post_archive(self, body: bytes) -> Any:
        r = self.client.post(
            f"/models/{MODEL}/versions",
            content=body,
            headers={"Authorization": f"Bearer {TOKENS['scientist']}", "Content-Type": "application/gzip"},
        )
        if r.status_code == 409:
            return {"status": "already registered"}
        if r.status_code >= 400:
            raise RuntimeError(f"register: {r.status_code} {r.text[:500]}")
        return r.json()


def _metric(text: str, name: str, labels: dict[str, str] | None = None) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(rf"{re.escape(name)}(?:\{{(.*)\}})?\s+([-+\deE.naif]+)$", line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if labels and any(got.get(k) != v for k, v in labels.items()):
            continue
        out.append((got, float(m.group(2))))
    return out


def scorer_model(stack: Stack) -> tuple[str | None, bool]:
    """The model version the live scorer is using, and whether it is the default (no registry) model."""
    try:
        text = httpx.get(f"{stack.url('scorer')}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None, False
    for labels, value in _metric(text, "vigil_model_info"):
        if value == 1.0:
            return labels.get("version"), labels.get("default_model") == "True"
    return None, False


def _bedside_view(rows: pd.DataFrame, encounter_of: dict[str, str], scores: dict[tuple[str, int], float]) -> np.ndarray:
    """One probability per row: the latest score at or before the row's hour (0 before the first score)."""
    out = np.zeros(len(rows))
    last: dict[str, float] = {}
    for i, (pid, hour) in enumerate(zip(rows["patient_id"].astype(str), rows["hour"].astype(int), strict=True)):
        enc = encounter_of[pid]
        s = scores.get((enc, hour))
        if s is not None:
            last[enc] = s
        out[i] = last.get(enc, 0.0)
    return out


def model_figures(
    rows: pd.DataFrame, encounter_of: dict[str, str], streamed: dict[tuple[str, int], float], package: ModelPackage
) -> dict[str, Any]:
    """AUROC, utility and alerts from the streamed scores and, beside them, from the offline predictions."""
    from vigil_ml.evaluate import predict_frame
    from vigil_ml.metrics import Cohort, evaluate_score

    cohort = Cohort.from_frame(rows)
    threshold = float(package.thresholds["operating"])
    streamed_rows = _bedside_view(rows, encounter_of, streamed)
    offline = predict_frame(package, rows)
    # A stream scores the hours in which something arrived: a measurement, or hour 0 (age and sex at admission).
    has_data = (rows[list(MEASUREMENT_COLUMNS)].notna().any(axis=1) | (rows["hour"] == 0)).to_numpy()
    offline_scores = {
        (encounter_of[str(p)], int(h)): float(s)
        for p, h, s, d in zip(rows["patient_id"], rows["hour"], offline, has_data, strict=True)
        if d
    }
    offline_rows = _bedside_view(rows, encounter_of, offline_scores)
    fig_stream = evaluate_score(cohort, streamed_rows, threshold, n_boot=0)
    fig_offline = evaluate_score(cohort, offline_rows, threshold, n_boot=0)
    fig_all = evaluate_score(cohort, offline, threshold, n_boot=0)
    keys = ("auroc", "utility", "sensitivity", "ppv", "alerts_per_100_patient_days")

    def pick(f: dict[str, Any]) -> dict[str, Any]:
        return {k: (f[k]["value"] if isinstance(f.get(k), dict) else f.get(k)) for k in keys if k in f}

    common = [k for k in streamed if k in offline_scores]
    diff = max((abs(streamed[k] - offline_scores[k]) for k in common), default=0.0)
    return {
        "patient_ids": sorted(set(rows["patient_id"].astype(str))),
        "stays": int(cohort.n_stays),
        "rows": len(rows),
        "threshold": threshold,
        "alerts_streamed": int((streamed_rows >= threshold).sum()),
        "alerts_offline": int((offline_rows >= threshold).sum()),
        "streamed": pick(fig_stream),
        "offline_same_rows": pick(fig_offline),
        "offline_all_rows": pick(fig_all),
        "max_abs_score_difference": diff,
        "agree": diff < 1e-5
        and all(_same(fig_stream[k], fig_offline[k]) for k in ("auroc", "utility") if k in fig_stream),
    }


def _same(a: Any, b: Any) -> bool:
    va = a["value"] if isinstance(a, dict) else a
    vb = b["value"] if isinstance(b, dict) else b
    return bool(va == vb or (va is not None and vb is not None and abs(va - vb) < 1e-9))


def shadow_split(plan: list[sim.Stay], share: float) -> tuple[list[sim.Stay], list[sim.Stay]]:
    """The stays streamed in shadow and the rest, stratified by sex and sepsis (each keeps the plan's order).

    Each (sex, septic) stratum gives ``round(share * n)`` of its stays to the shadow phase, so the policy's
    per-group evidence does not depend on the luck of one draw; a non-empty rest is kept when there is one.
    """
    strata: dict[tuple[str, bool], list[sim.Stay]] = defaultdict(list)
    for stay in plan:
        gender = stay.rows["Gender"].dropna() if "Gender" in stay.rows else pd.Series(dtype=float)
        sex = "unknown" if gender.empty else ("male" if float(gender.iloc[0]) == 1.0 else "female")
        strata[(sex, stay.onset_hour is not None)].append(stay)
    chosen: set[str] = set()
    for stays in strata.values():
        chosen.update(s.encounter for s in stays[: math.floor(share * len(stays) + 0.5)])
    if len(chosen) == len(plan) and share < 1 and len(plan) > 1:
        chosen.discard(plan[-1].encounter)
    return [s for s in plan if s.encounter in chosen], [s for s in plan if s.encounter not in chosen]


def promotion_event(lifecycle: list[ev.ModelLifecycleChanged], version: str) -> ev.ModelLifecycleChanged | None:
    """The event that promoted ``version``; its ``evidence["policy"]`` is the report the registry decided on."""
    return next((e for e in lifecycle if e.action == ev.LifecycleAction.PROMOTED and e.model_version == version), None)


class Demo:
    """One run of the story."""

    def __init__(self, options: DemoOptions, console: Console | None = None) -> None:
        self.o = options
        self.console = console or Console(stderr=True)
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
        self.home = vigil_home() / "demo" / self.run_id
        self.prefix = f"demo-{self.run_id.replace('-', '')}."
        self.topics = Topics(self.prefix)
        self.stack = Stack(kafka_port=options.kafka_port, port_base=options.port_base)
        self.story: list[dict[str, Any]] = []
        self.phase = "starting"
        self.drifted_encounters: set[str] = set()

    # -- narration -------------------------------------------------------------------------------------
    def say(self, text: str, **data: Any) -> None:
        self.console.print(f"[bold cyan]>[/bold cyan] {text}")
        self.story.append({"at": time.strftime("%H:%M:%S"), "phase": self.phase, "text": text, **data})

    def on_event(self, kind: str, event: ev.Event) -> None:
        if isinstance(event, ev.AlertRaised):
            what = event.feature or event.metric or ""
            colour = "red" if event.severity == ev.Severity.CRITICAL else "yellow"
            self.console.print(
                f"[{colour}]alert {event.state}[/{colour}]: {event.kind} {what} value={event.value:.3g} "
                f"threshold={event.threshold:.3g} ({event.severity.value})"
            )
        elif isinstance(event, ev.ModelLifecycleChanged):
            self.console.print(
                f"[magenta]lifecycle[/magenta]: {event.model_name} v{event.model_version} {event.action.value} "
                f"{event.from_stage.value if event.from_stage else '-'} -> {event.to_stage.value} by {event.actor}"
            )

    def table(self, watcher: TopicWatcher, report: sim.SimulationReport | None) -> Table:
        t = Table(title=f"Vigil demo - {self.phase}", expand=False)
        t.add_column("what")
        t.add_column("count", justify="right")
        o = watcher.observed
        if report:
            t.add_row("FHIR bundles sent", str(report.bundles))
            t.add_row("FHIR observations sent", str(report.observations_sent))
        t.add_row("canonical observations", str(o.observations))
        t.add_row("stay-hours with data", str(len(o.obs_hours)))
        t.add_row("live scores (unique)", str(len(o.live)))
        t.add_row("shadow scores (unique)", str(len(o.shadow)))
        t.add_row("outcomes", str(sum(o.outcomes.values())))
        t.add_row("alerts", str(len(o.alerts)))
        t.add_row("dead letters", str(sum(o.dead_letters.values())))
        return t

    # -- the story -------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.phase = "starting the stack"
        for spec in self.stack.services:
            if self.stack.pid(spec.name) is not None:
                self.say(f"stopping the running {spec.name} so the demo starts from a clean slate")
                self.stack.stop_service(spec.name)
        self.home.mkdir(parents=True, exist_ok=True)
        production = default_package_path(self.o.production_version)
        candidate = default_package_path(self.o.candidate_version)
        reference = production / "reference.json"
        env = {
            "VIGIL_TOPIC_PREFIX": self.prefix,
            "VIGIL_DEVELOPMENT": "true",
            "REGISTRY_DATABASE_URL": f"sqlite:///{self.home / 'registry.db'}",
            "REGISTRY_ARTIFACT_ROOT": str(self.home / "artifacts"),
            "SCORER_MODEL_CACHE_DIR": str(self.home / "scorer-models"),
            "SHADOW_MODEL_CACHE_DIR": str(self.home / "shadow-models"),
            "SCORER_REGISTRY_POLL_S": "2",
            "SHADOW_PUBLISH_EVERY_S": "3600",
            "DRIFT_MODEL_NAME": MODEL,
            "DRIFT_REFERENCE_PATH": str(reference) if reference.exists() else "",
        }
        try:
            return await self._run(env, production, candidate, t0)
        except BaseException:
            if not self.o.keep_running:
                self.stack.down()
            raise

    async def _run(self, env: dict[str, str], production: Path, candidate: Path, t0: float) -> dict[str, Any]:
        ready = self.stack.up(extra_env=env, timeout=90)
        if not all(ready.values()):
            raise RuntimeError(f"services not ready: {ready}; logs in {self.stack.log_dir}")
        self.say(f"stack ready in {time.monotonic() - t0:.1f}s (topics {self.prefix}*, logs in {self.stack.log_dir})")

        registry = Registry(self.stack.url("registry"))
        self.phase = "registering models"
        self.setup_models(registry, production, candidate)

        watcher = TopicWatcher(self.stack.cluster.connection(), self.topics, self.on_event)
        await watcher.start()
        try:
            summary = await self.stream_and_decide(registry, watcher, t0)
        finally:
            await watcher.stop()
            if not self.o.keep_running:
                self.stack.down()
                self.say("stack stopped")
        summary["seconds"] = round(time.monotonic() - t0, 1)
        self.write_outputs(summary)
        return summary

    def setup_models(self, registry: Registry, production: Path, candidate: Path) -> None:
        v_prod = self.o.production_version
        v_cand = self.o.candidate_version
        registry.register(production)
        registry.call("admin", "PUT", f"/models/{MODEL}/policy", json=self.demo_policy())
        self.say(f"{MODEL} v{v_prod} registered by a data scientist (package sha256 checked by the registry)")
        registry.shadow_propose_approve(
            v_prod,
            approver="approver",
            reasons=(
                "demo: initial model",
                "first production model of the unit",
                "validated on the held-out cohort; card reviewed",
            ),
        )
        if registry.call("viewer", "GET", f"/models/{MODEL}/versions/{v_prod}")["stage"] != "production":
            # With auto_promote the registry promotes on approval itself; otherwise the approver does.
            registry.call("approver", "POST", f"/models/{MODEL}/versions/{v_prod}/promote", json={"reason": "go-live"})
        self.say(f"v{v_prod} approved by a clinical approver (not the proposer) and promoted to production")
        registry.register(candidate)
        registry.shadow_propose_approve(
            v_cand,
            approver="approver2",
            reasons=(
                "candidate for shadow evaluation",
                "candidate: promote if it proves itself in shadow",
                "approved subject to the evidence policy",
            ),
        )
        self.say(f"v{v_cand} registered, in shadow, proposed and approved subject to the policy's evidence")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            version, is_default = scorer_model(self.stack)
            if version == v_prod and not is_default:
                break
            time.sleep(0.5)
        self.say(f"the live scorer now serves v{scorer_model(self.stack)[0]} from the registry")

    def demo_policy(self) -> dict[str, Any]:
        """Article defaults, except the durations a demo of minutes cannot wait for (stated in the summary)."""
        return {
            "min_shadow_hours": 12.0,
            "min_labelled_outcomes": 20,
            "auroc_margin": -0.02,
            "auto_promote": True,
            "auto_rollback": True,
        }

    async def stream_and_decide(self, registry: Registry, watcher: TopicWatcher, t0: float) -> dict[str, Any]:
        plan = sim.load_stays(
            self.o.data,
            stays=self.o.stays,
            seed=self.o.seed,
            arrival_hours=48.0,
            id_prefix=f"d{self.run_id[-4:]}",
            septic_share=self.o.septic_share,
        )
        septic = sum(s.onset_hour is not None for s in plan)
        self.say(
            f"cohort: {len(plan)} stays, {septic} of them septic"
            + (
                f" (drawn with {self.o.septic_share:.0%} septic stays)"
                if self.o.septic_share is not None and self.o.stays
                else ""
            )
        )
        first, second = shadow_split(plan, self.o.shadow_share)
        reports: list[sim.SimulationReport] = []

        self.phase = "streaming (production + shadow)"
        self.say(
            f"streaming {len(first)} real ICU stays as FHIR over HTTP to ingest; outcomes follow "
            f"{self.o.outcome_delay_hours:g} h (simulated) later"
        )
        reports.append(await self.stream(watcher, first, drifts=[], candidate=self.o.candidate_version))
        self.say(
            f"phase 1 scored: {len(watcher.observed.live)} stay-hours live, {len(watcher.observed.shadow)} in shadow"
        )

        self.phase = "evidence and promotion"
        decision = await self.promotion(registry, watcher, expected_encounters=len(first))

        self.phase = "streaming under the production model, with drift"
        drifts = [sim.Drift.parse(f"{self.o.drift}@0")] if self.o.drift else []
        if drifts:
            self.drifted_encounters = {s.encounter for s in second}
        if second:
            self.say(
                f"streaming {len(second)} more stays; from now the EHR interface sends "
                f"{'temperature in degF labelled Cel' if self.o.drift == 'temp-degf' else self.o.drift}"
            )
            reports.append(await self.stream(watcher, second, drifts=drifts, candidate=None))

        self.phase = "rollback drill"
        drill = await self.rollback_drill(registry, watcher, promoted=decision["promoted"])

        self.phase = "summary"
        return self.summarise(registry, watcher, reports, decision, drill, plan)

    async def stream(
        self, watcher: TopicWatcher, stays: list[sim.Stay], *, drifts: list[sim.Drift], candidate: str | None
    ) -> sim.SimulationReport:
        """Send stays to ingest as the EHR would, with a live progress table, until every stay-hour is scored."""
        with Live(self.table(watcher, None), console=self.console, refresh_per_second=4, transient=True) as live:

            def progress(rep: sim.SimulationReport, at: datetime) -> None:
                live.update(self.table(watcher, rep))

            report = await sim.simulate(
                stays,
                kafka=self.stack.cluster.connection(Principal.EHR.value),
                topics=self.topics,
                via="http",
                ingest_url=self.stack.url("ingest"),
                token=self.stack.token("simulator"),
                speed=self.o.speed,
                outcome_delay_hours=self.o.outcome_delay_hours,
                drifts=drifts,
                start=ICU_EPOCH,
                on_progress=progress,
            )
            await self.wait_scored(watcher, live, report, candidate=candidate)
        self.console.print(self.table(watcher, report))
        return report

    async def wait_scored(
        self, watcher: TopicWatcher, live: Live, report: sim.SimulationReport, candidate: str | None
    ) -> None:
        """Wait until every stay-hour with data has its live score (and shadow score), or the stream is quiet."""
        deadline = time.monotonic() + self.o.timeout_s
        while time.monotonic() < deadline:
            live.update(self.table(watcher, report))
            o = watcher.observed
            done = o.obs_hours and not o.unscored_hours() and (candidate is None or not o.unscored_shadow(candidate))
            quiet = time.monotonic() - watcher.last_activity > 20
            if done and time.monotonic() - watcher.last_activity > 2:
                return
            if quiet and o.obs_hours:
                return
            await asyncio.sleep(0.5)

    async def promotion(self, registry: Registry, watcher: TopicWatcher, expected_encounters: int) -> dict[str, Any]:
        v = self.o.candidate_version
        shadow = self.stack.url("shadow")
        operator = {"Authorization": f"Bearer {self.stack.token('operator')}"}
        # Shadow's evidence is complete once its join holds every streamed stay's outcome (outcomes are the last
        # thing the EHR and the coding feed send).
        labelled = 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                body = (
                    await asyncio.to_thread(
                        httpx.get, f"{shadow}/comparisons", params={"version": v}, headers=operator, timeout=120
                    )
                ).json()
                rows = body.get("comparisons", [])
                labelled = int(rows[0].get("labelled_encounters") or 0) if rows else 0
                if body.get("join_rebuilt") and labelled >= expected_encounters:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(2)
        self.say(f"shadow's join holds {labelled} of {expected_encounters} stays with their outcomes")
        before = {c.event_id for c in watcher.observed.comparisons}
        status = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # Off the event loop: the topic watcher keeps reading while shadow computes its bootstrap CIs.
            r = await asyncio.to_thread(httpx.post, f"{shadow}/comparisons/publish", headers=operator, timeout=300)
            status = r.status_code
            if status == 200:
                break
            await asyncio.sleep(2)  # 409 while shadow re-reads its topics after a start
        self.say(f"shadow published its comparison of v{v} against live: HTTP {status}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            fresh = [c for c in watcher.observed.comparisons if c.event_id not in before and c.candidate_version == v]
            if fresh:
                break
            await asyncio.sleep(0.5)

        # The registry consumes the comparison and records it; its eligibility report then names every criterion.
        # With auto_promote it may promote at once: the candidate is then production and its eligibility endpoint
        # answers as for a production model, so the evidence is the report the promotion event carries.
        report: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (event := promotion_event(watcher.observed.lifecycle, v)) is not None and event.evidence.get("policy"):
                report = dict(event.evidence["policy"])
                break
            report = registry.call("viewer", "GET", f"/models/{MODEL}/versions/{v}/eligibility")
            if any(c.get("name") == "auroc_diff_ci_low" for c in report.get("criteria", [])):
                break
            await asyncio.sleep(1)
        promoted = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (event := promotion_event(watcher.observed.lifecycle, v)) is not None:
                promoted = True
                if event.evidence.get("policy"):
                    report = dict(event.evidence["policy"])  # what the registry decided on
                break
            await asyncio.sleep(0.5)
        for c in report.get("criteria", []):
            mark = {True: "[green]pass[/green]", False: "[red]fail[/red]", None: "n/a"}[c.get("passed")]
            self.console.print(f"  {mark} {c['name']}: observed {c.get('observed')} (required {c.get('required')})")
        if promoted:
            switched = await self.wait_model(v)
            self.say(
                f"policy: v{v} eligible and approved -> promoted; the live scorer switched to v{v}"
                f" {'' if switched else '(not yet confirmed)'}"
            )
        else:
            self.say(f"policy: v{v} not promoted; the evidence above says why")
        comparison = watcher.observed.comparisons[-1].model_dump(mode="json") if watcher.observed.comparisons else None
        return {"candidate": v, "eligibility": report, "promoted": promoted, "comparison": comparison}

    async def wait_model(self, version: str, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if scorer_model(self.stack)[0] == version:
                return True
            await asyncio.sleep(0.5)
        return False

    async def rollback_drill(self, registry: Registry, watcher: TopicWatcher, *, promoted: bool) -> dict[str, Any]:
        prod = registry.call("viewer", "GET", f"/models/{MODEL}/production")
        version = str(prod["version"])
        self.say(f"rollback drill: a critical performance alert against production v{version} (marked as a drill)")
        alert = ev.AlertRaised(
            event_id=ev.deterministic_id("drill", self.run_id),
            occurred_at=ev.utcnow(),
            key=MODEL,
            alert_key=f"performance:{MODEL}:auroc:drill",
            state="open",
            kind="performance",
            severity=ev.Severity.CRITICAL,
            model_name=MODEL,
            model_version=version,
            metric="auroc",
            value=0.55,
            threshold=0.70,
            window="drill",
            evidence={"drill": True, "run": self.run_id},
        )
        from aiokafka import AIOKafkaProducer

        # The drill stands in for a drift monitor; the operator (admin principal) sends it, marked as a drill.
        producer = AIOKafkaProducer(**self.stack.cluster.connection().client_kwargs(), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(self.topics.alerts, alert.model_dump_json().encode(), key=MODEL.encode())
        finally:
            await producer.stop()
        if not promoted:
            # Nothing was promoted, so there is no earlier production version to restore: the registry records
            # the alert against the version and flags it (the policy's answer when no rollback target exists).
            await asyncio.sleep(3)
            history = registry.call("viewer", "GET", f"/models/{MODEL}/versions/{version}/history")
            recorded = any(a.get("event_id") == alert.event_id for a in history.get("alerts", []))
            self.say(f"no earlier production version to restore; the registry recorded the alert: {recorded}")
            return {
                "alerted_version": version,
                "rolled_back": False,
                "alert_recorded": recorded,
                "why": "no earlier production version",
            }
        rolled = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and rolled is None:
            rolled = next((e for e in watcher.observed.lifecycle if e.action == ev.LifecycleAction.ROLLED_BACK), None)
            await asyncio.sleep(0.5)
        if rolled is None:
            self.say("the registry did not roll back within 60 s")
            return {"alerted_version": version, "rolled_back": False}
        switched = await self.wait_model(rolled.model_version)
        self.say(f"registry rolled back to v{rolled.model_version}; live scorer on v{scorer_model(self.stack)[0]}")
        return {
            "alerted_version": version,
            "rolled_back": True,
            "restored_version": rolled.model_version,
            "scorer_switched": switched,
        }

    def summarise(
        self,
        registry: Registry,
        watcher: TopicWatcher,
        reports: list[sim.SimulationReport],
        decision: dict[str, Any],
        drill: dict[str, Any],
        plan: list[sim.Stay],
    ) -> dict[str, Any]:
        o = watcher.observed
        sent = sum(r.observations_sent for r in reports)
        entries: Counter[str] = Counter()
        for r in reports:
            entries.update(r.entry_outcomes)
        unscored = o.unscored_hours()
        rows = pd.concat([s.rows for s in plan], ignore_index=True)
        encounter_of = {s.patient_id: s.encounter for s in plan}
        figures: dict[str, Any] = {}
        by_version: dict[str, dict[tuple[str, int], float]] = defaultdict(dict)
        for (enc, hour), score in o.live.items():
            by_version[f"live v{score.model_version}"][(enc, hour)] = score.probability
        for (version, enc, hour), score in o.shadow.items():
            by_version[f"shadow v{version}"][(enc, hour)] = score.probability
        drifted = self.drifted_encounters
        rejected: set[str] = set().union(*(r.rejected_encounters for r in reports)) if reports else set()
        for label, scores in sorted(by_version.items()):
            version = label.split("v")[-1]
            encounters = {enc for enc, _ in scores}
            package = ModelPackage.load(default_package_path(version))
            # Agreement with `vigil model predict` holds on stays streamed as recorded. Stays sent with an injected
            # drift, and stays with a reading ingest refused as implausible (PhysioNet keeps a few, e.g. FiO2 0.05),
            # reach the model with other inputs than the rows: they are reported apart.
            groups = {
                "": [s for s in plan if s.encounter in encounters and s.encounter not in drifted | rejected],
                " (stays with injected drift)": [s for s in plan if s.encounter in encounters & drifted],
                " (stays with readings rejected by ingest)": [
                    s for s in plan if s.encounter in (encounters & rejected) - drifted
                ],
            }
            for suffix, stays in groups.items():
                if not stays:
                    continue
                sub = rows[rows["patient_id"].isin({s.patient_id for s in stays})].reset_index(drop=True)
                f = model_figures(sub, encounter_of, scores, package)
                figures[label + suffix] = f if not suffix else {**f, "agree": None}
        audit = registry.call("viewer", "GET", "/audit/verify") if self._has_audit(registry) else None
        summary: dict[str, Any] = {
            "run": self.run_id,
            "topic_prefix": self.prefix,
            "data": str(self.o.data or sim.SAMPLE),
            "stays": len(plan),
            "cohort": {
                "stays": len(plan),
                "septic_stays": sum(s.onset_hour is not None for s in plan),
                "draw": (
                    f"seeded draw of {self.o.stays} stays with {self.o.septic_share:.0%} septic (case-enriched)"
                    if self.o.stays and self.o.septic_share is not None
                    else (f"seeded random draw of {self.o.stays} stays" if self.o.stays else "all stays")
                ),
            },
            "counts": {
                "fhir_bundles_sent": sum(r.bundles for r in reports),
                "fhir_observations_sent": sent,
                "canonical_observations": o.observations,
                "retractions": o.retractions,
                "stay_hours_with_data": len(o.obs_hours),
                "live_scores_unique": len(o.live),
                "live_score_events_by_version": dict(o.live_by_version),
                "shadow_score_events_by_version": dict(o.shadow_by_version),
                "default_model_scores": o.default_model_scores,
                "outcomes": dict(o.outcomes),
                "alerts": len(o.alerts),
                "dead_letters": dict(o.dead_letters),
                "topic_records_read": dict(watcher.counts),
            },
            "accounting": {
                "ingest_entry_outcomes": dict(entries),
                "fhir_entries_sent": sum(r.entries_sent for r in reports),
                "http_status": {k: v for r in reports for k, v in r.as_dict()["http_status"].items()},
                "stay_hours_without_live_score": len(unscored),
                "unscored_examples": [f"{e}@{h}" for e, h in sorted(unscored)[:10]],
                "zero_loss": not unscored and o.observations > 0,
                "explanation": (
                    "Every FHIR entry got a per-entry outcome from ingest (201 published, 200 accepted without a "
                    "new reading: duplicate, value absent or outside the vocabulary, 422 rejected with its reason); "
                    "every stay-hour with a canonical observation on the topic has a live score."
                ),
            },
            "alerts": [
                {
                    k: a.model_dump(mode="json")[k]
                    for k in ("state", "kind", "severity", "feature", "metric", "value", "threshold", "model_version")
                }
                for a in o.alerts
            ],
            "promotion": decision,
            "rollback_drill": drill,
            "lifecycle": [
                {
                    "action": e.action.value,
                    "version": e.model_version,
                    "to": e.to_stage.value,
                    "actor": e.actor,
                    "reason": e.reason,
                }
                for e in o.lifecycle
            ],
            "models": figures,
            "policy_used": self.demo_policy(),
            "audit_chain": audit,
            "story": self.story,
        }
        self.print_summary(summary)
        return summary

    def _has_audit(self, registry: Registry) -> bool:
        try:
            registry.call("viewer", "GET", "/audit/verify")
            return True
        except RuntimeError:
            return False

    def print_summary(self, s: dict[str, Any]) -> None:
        c, a = s["counts"], s["accounting"]
        t = Table(title="Vigil demo: summary")
        t.add_column("")
        t.add_column("", justify="right")
        for k in (
            "fhir_observations_sent",
            "canonical_observations",
            "stay_hours_with_data",
            "live_scores_unique",
            "alerts",
        ):
            t.add_row(k.replace("_", " "), str(c[k]))
        t.add_row("ingest entry outcomes", json.dumps(a["ingest_entry_outcomes"]))
        t.add_row("stay-hours without a live score", str(a["stay_hours_without_live_score"]))
        t.add_row("zero loss", "yes" if a["zero_loss"] else "NO")
        t.add_row("promotion", "promoted" if s["promotion"]["promoted"] else "not promoted")
        t.add_row("rollback drill", "rolled back" if s["rollback_drill"].get("rolled_back") else "no rollback")
        self.console.print(t)
        m = Table(title="models on the stays they scored (streamed vs offline `vigil model predict`)")
        for col in ("model", "stays", "AUROC", "utility", "alerts", "offline AUROC", "offline utility", "agree"):
            m.add_column(col)
        for label, f in s["models"].items():
            m.add_row(
                label,
                str(f["stays"]),
                _fmt(f["streamed"].get("auroc")),
                _fmt(f["streamed"].get("utility")),
                str(f["alerts_streamed"]),
                _fmt(f["offline_same_rows"].get("auroc")),
                _fmt(f["offline_same_rows"].get("utility")),
                AGREE[f["agree"]],
            )
        self.console.print(m)

    def write_outputs(self, summary: dict[str, Any]) -> None:
        report = self.o.report_out or (self.home / "report.html")
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(render_html(summary))
        summary["report"] = str(report)
        if self.o.json_out:
            self.o.json_out.parent.mkdir(parents=True, exist_ok=True)
            self.o.json_out.write_text(json.dumps(summary, indent=2, default=str))
        self.say(f"report: {report}" + (f"; summary: {self.o.json_out}" if self.o.json_out else ""))


AGREE = {True: "yes", False: "NO", None: "n/a (inputs differ)"}


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def render_html(s: dict[str, Any]) -> str:
    """A self-contained page: the story, the accounting, the models, alerts and decisions."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = list(s["models"])
    au = [s["models"][k]["streamed"].get("auroc") or 0 for k in labels]
    ut = [s["models"][k]["streamed"].get("utility") or 0 for k in labels]
    x = np.arange(len(labels))
    ax.bar(x - 0.2, au, 0.4, label="AUROC")
    ax.bar(x + 0.2, ut, 0.4, label="utility")
    ax.set_xticks(x, [lbl.replace(" (", "\n(") for lbl in labels], fontsize=7)
    ax.legend()
    ax.set_title("Models on the stays they scored (from the streamed scores)")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    img = base64.b64encode(buf.getvalue()).decode()

    def rows(d: dict[str, Any]) -> str:
        return "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v, default=str))}</td></tr>"
            for k, v in d.items()
        )

    story = "".join(
        f"<li><code>{html.escape(x['at'])}</code> <b>{html.escape(x['phase'])}</b>: {html.escape(x['text'])}</li>"
        for x in s["story"]
    )
    alerts = "".join(
        f"<tr><td>{html.escape(str(a['state']))}</td><td>{html.escape(str(a['kind']))}</td>"
        f"<td>{html.escape(str(a['feature'] or a['metric']))}</td><td>{a['value']:.3g}</td>"
        f"<td>{a['threshold']:.3g}</td><td>{html.escape(str(a['severity']))}</td></tr>"
        for a in s["alerts"]
    )
    crit = "".join(
        f"<tr><td>{html.escape(str(c.get('name')))}</td><td>{html.escape(str(c.get('passed')))}</td>"
        f"<td>{html.escape(str(c.get('observed')))}</td><td>{html.escape(str(c.get('required')))}</td></tr>"
        for c in (s["promotion"].get("eligibility") or {}).get("criteria", [])
    )
    models = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{f['stays']}</td><td>{_fmt(f['streamed'].get('auroc'))}</td>"
        f"<td>{_fmt(f['streamed'].get('utility'))}</td><td>{f['alerts_streamed']}</td>"
        f"<td>{_fmt(f['offline_same_rows'].get('auroc'))}</td><td>{_fmt(f['offline_same_rows'].get('utility'))}</td>"
        f"<td>{_fmt(f['offline_all_rows'].get('auroc'))}</td><td>{AGREE[f['agree']]}</td></tr>"
        for k, f in s["models"].items()
    )
    zero = "yes" if s["accounting"]["zero_loss"] else "NO"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Vigil demo {html.escape(s["run"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:14px}}
th{{background:#f3f3f3}}code{{color:#555}}</style></head><body>
<h1>Vigil demo: a clinical model's life</h1>
<p>Run {html.escape(s["run"])} on {s["stays"]} real ICU stays ({html.escape(s["data"])}), {s["seconds"]} s.
Decision support for research; not a diagnosis.</p>
<h2>Story</h2><ol>{story}</ol>
<h2>Accounting (zero loss: {zero})</h2><table>{rows(s["counts"])}{rows(s["accounting"])}</table>
<h2>Models</h2><p>Figures from the scores that went through Kafka, beside the same computation on
<code>vigil model predict</code>'s offline predictions for the same rows; the last AUROC column is offline over every
row (stay-hours without data included).</p>
<table><tr><th>model</th><th>stays</th><th>AUROC</th><th>utility</th><th>alerts</th><th>offline AUROC</th>
<th>offline utility</th><th>offline AUROC, all rows</th><th>agree</th></tr>{models}</table>
<img alt="models" src="data:image/png;base64,{img}">
<h2>Promotion decision and its evidence</h2><p>Promoted: {s["promotion"]["promoted"]}</p>
<table><tr><th>criterion</th><th>passed</th><th>observed</th><th>required</th></tr>{crit}</table>
<h2>Alerts</h2><table><tr><th>state</th><th>kind</th><th>feature/metric</th><th>value</th><th>threshold</th>
<th>severity</th></tr>{alerts}</table>
<h2>Rollback drill</h2><table>{rows(s["rollback_drill"])}</table>
<h2>Lifecycle</h2><table>{"".join(f"<tr><td>{html.escape(json.dumps(e))}</td></tr>" for e in s["lifecycle"])}</table>
<p>Policy used (article defaults except durations shortened for a demo of minutes):
<code>{html.escape(json.dumps(s["policy_used"]))}</code></p>
</body></html>"""


def run_demo(options: DemoOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the whole story; returns the summary."""
    return asyncio.run(Demo(options, console).run())
