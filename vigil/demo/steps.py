"""The demo's story as scenario steps over one shared context.

Each step is one part of a clinical model's life (start the stack, register and approve the models, stream a
phase of the cohort, decide the promotion on shadow's evidence, run the rollback drill). A step reads and fills the
:class:`DemoContext`; it talks to the stack only through the context's clients (one registry API, one probe of
the scorer and shadow, one topic reader) and waits only through :meth:`DemoContext.wait`, so every wait has a
deadline and says what it was waiting for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.live import Live

from vigil import simulate as sim
from vigil.demo.clients import RegistryApi, StackProbe, kafka_connection, kafka_options, registry_tokens
from vigil.demo.cohort import shadow_split
from vigil.demo.narrate import Narrator
from vigil.demo.observe import TopicWatcher
from vigil.demo.options import MODEL, DemoOptions
from vigil.demo.waits import DemoStopped, wait_for
from vigil.stack import Stack
from vigil_contracts import events as ev
from vigil_contracts.access import Principal
from vigil_contracts.topics import Topics
from vigil_runtime.producer import AckedProducer
from vigil_scoring.model_package import default_package_path
from vigil_scoring.physionet import ICU_EPOCH

T = TypeVar("T")


def demo_policy() -> dict[str, Any]:
    """Article defaults, except the durations a demo of minutes cannot wait for (stated in the summary)."""
    return {
        "min_shadow_hours": 12.0,
        "min_labelled_outcomes": 20,
        "auroc_margin": -0.02,
        "auto_promote": True,
        "auto_rollback": True,
    }


def promotion_event(lifecycle: list[ev.ModelLifecycleChanged], version: str) -> ev.ModelLifecycleChanged | None:
    """The event that promoted ``version``; its ``evidence["policy"]`` is the report the registry decided on."""
    return next((e for e in lifecycle if e.action == ev.LifecycleAction.PROMOTED and e.model_version == version), None)


@dataclass
class DemoContext:
    """One run: its options, where it lives, its clients, and what the steps found out so far."""

    options: DemoOptions
    narrator: Narrator
    run_id: str
    home: Path
    stack: Stack
    started: float = field(default_factory=time.monotonic)
    registry: RegistryApi | None = None
    probe: StackProbe | None = None
    watcher: TopicWatcher | None = None
    plan: list[sim.Stay] = field(default_factory=list)
    reports: list[sim.SimulationReport] = field(default_factory=list)
    drifted_encounters: set[str] = field(default_factory=set)
    decision: dict[str, Any] = field(default_factory=lambda: {"promoted": False, "eligibility": {}})
    drill: dict[str, Any] = field(default_factory=dict)
    adaptation: dict[str, Any] = field(default_factory=dict)
    """What the learning-at-the-site step built and staged (``vigil/demo/adapt_step.py``)."""
    live: Live | None = None
    """The progress display of a streaming step, while it runs (waits update it instead of a spinner)."""
    report: sim.SimulationReport | None = None

    @property
    def prefix(self) -> str:
        return f"demo-{self.run_id.replace('-', '')}."

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    def env(self) -> dict[str, str]:
        """What the services get for this run: its topics, its own database and caches, the demo's settings."""
        reference = default_package_path(self.options.production_version) / "reference.json"
        return {
            "VIGIL_TOPIC_PREFIX": self.prefix,
            "REGISTRY_DATABASE_URL": f"sqlite:///{self.home / 'registry.db'}",
            "REGISTRY_ARTIFACT_ROOT": str(self.home / "artifacts"),
            "SCORER_MODEL_CACHE_DIR": str(self.home / "scorer-models"),
            "SHADOW_MODEL_CACHE_DIR": str(self.home / "shadow-models"),
            "SCORER_REGISTRY_POLL_S": "2",
            "SHADOW_PUBLISH_EVERY_S": "3600",
            "DRIFT_MODEL_NAME": MODEL,
            "DRIFT_REFERENCE_PATH": str(reference) if reference.exists() else "",
        }

    def need(self, value: T | None, what: str) -> T:
        """A client a step needs (set by an earlier step)."""
        if value is None:
            raise DemoStopped(f"{what} is not set up: an earlier step did not run")
        return value

    async def wait(
        self,
        probe: Callable[[], Any],
        *,
        what: str,
        timeout_s: float,
        required: bool = True,
        interval_s: float = 0.5,
    ) -> Any:
        """Wait for ``what`` (shown while waiting) until ``probe`` returns something truthy, which is returned.

        A required wait that gives up stops the demo; an optional one says so in the story and returns None.
        """
        t0 = time.monotonic()
        watcher = self.watcher

        def tick() -> None:
            if watcher is not None:
                watcher.raise_if_failed()
            if self.live is not None and watcher is not None:
                self.live.update(self.narrator.table(watcher, self.report, waiting=what))

        async def run() -> Any:
            return await wait_for(
                probe, what=what, timeout_s=timeout_s, required=required, interval_s=interval_s, on_tick=tick
            )

        if self.live is not None:
            value = await run()
        else:
            with self.narrator.console.status(f"waiting for {what} (at most {timeout_s:.0f}s)"):
                value = await run()
        if value is None and not required:
            self.narrator.warn(f"gave up after {time.monotonic() - t0:.0f}s waiting for {what}; carrying on")
        return value


class Step:
    """One part of the story."""

    phase: str = ""
    """What the story calls this part (shown in the progress table and the story)."""

    async def run(self, ctx: DemoContext) -> None:
        raise NotImplementedError


class StartStack(Step):
    """The broker and the five services on this run's topics, from a clean slate."""

    phase = "starting the stack"

    async def run(self, ctx: DemoContext) -> None:
        for spec in ctx.stack.services:
            if ctx.stack.pid(spec.name) is not None:
                ctx.narrator.say(f"stopping the running {spec.name} so the demo starts from a clean slate")
                await asyncio.to_thread(ctx.stack.stop_service, spec.name)
        ctx.home.mkdir(parents=True, exist_ok=True)
        timeout = ctx.options.deadlines.stack_ready_s
        with ctx.narrator.console.status(
            f"waiting for the broker and four services to be ready (at most {timeout:.0f}s)"
        ):
            # The scorer fails closed: it is ready only once the registry confirms a production model, which the
            # next step registers; the demo waits for it there (the live scorer serving that version, then /ready).
            others = [s.name for s in ctx.stack.services if s.name != "scorer"]
            ready = await asyncio.to_thread(ctx.stack.up, extra_env=ctx.env(), timeout=timeout, wait_for=others)
        if not all(ready.values()):
            missing = ", ".join(name for name, ok in ready.items() if not ok)
            raise DemoStopped(
                f"gave up after {timeout:.0f}s waiting for the services to be ready ({missing} not ready); "
                f"logs in {ctx.stack.log_dir}"
            )
        ctx.narrator.say(
            f"stack ready in {time.monotonic() - ctx.started:.1f}s (topics {ctx.prefix}*, logs in {ctx.stack.log_dir})"
        )
        ctx.registry = RegistryApi(ctx.stack.url("registry"), registry_tokens(ctx.stack))
        ctx.probe = StackProbe(ctx.stack)
        watcher = TopicWatcher(kafka_options(ctx.stack), ctx.topics, ctx.narrator.on_event)
        await watcher.start()
        ctx.watcher = watcher


class RegisterModels(Step):
    """Production model and candidate through the registry's governed path (four-eyes approval)."""

    phase = "registering models"

    async def run(self, ctx: DemoContext) -> None:
        registry, probe, say = (
            ctx.need(ctx.registry, "the registry"),
            ctx.need(ctx.probe, "the probe"),
            ctx.narrator.say,
        )
        v_prod, v_cand = ctx.options.production_version, ctx.options.candidate_version
        await registry.register(default_package_path(v_prod))
        await registry.call("admin", "PUT", f"/models/{MODEL}/policy", json=demo_policy())
        say(f"{MODEL} v{v_prod} registered by a data scientist (package sha256 checked by the registry)")
        await registry.shadow_propose_approve(
            v_prod,
            approver="approver",
            reasons=(
                "demo: initial model",
                "first production model of the unit",
                "validated on the held-out cohort; card reviewed",
            ),
        )
        if await registry.stage(v_prod) != "production":
            # With auto_promote the registry promotes on approval itself; otherwise the approver does.
            await registry.call(
                "approver", "POST", f"/models/{MODEL}/versions/{v_prod}/promote", json={"reason": "go-live"}
            )
        say(f"v{v_prod} approved by a clinical approver (not the proposer) and promoted to production")
        await registry.register(default_package_path(v_cand))
        await registry.shadow_propose_approve(
            v_cand,
            approver="approver2",
            reasons=(
                "candidate for shadow evaluation",
                "candidate: promote if it proves itself in shadow",
                "approved subject to the evidence policy",
            ),
        )
        say(f"v{v_cand} registered, in shadow, proposed and approved subject to the policy's evidence")

        async def serves_production() -> bool:
            return await probe.scorer_model() == (v_prod, False)

        await ctx.wait(
            serves_production,
            what=f"the live scorer to serve v{v_prod} from the registry",
            timeout_s=ctx.options.deadlines.scorer_model_s,
        )
        scorer = ctx.stack.spec("scorer")

        async def scorer_ready() -> bool:
            return (await asyncio.to_thread(ctx.stack.ready, scorer))[0]

        await ctx.wait(
            scorer_ready,
            what="the live scorer to be ready (the registry confirmed its production model)",
            timeout_s=ctx.options.deadlines.scorer_model_s,
        )
        say(f"the live scorer now serves v{v_prod} from the registry")


class PlanCohort(Step):
    """The stays to stream, drawn from the data."""

    phase = "planning the cohort"

    async def run(self, ctx: DemoContext) -> None:
        o = ctx.options
        ctx.plan = await asyncio.to_thread(
            sim.load_stays,
            o.data,
            stays=o.stays,
            seed=o.seed,
            arrival_hours=48.0,
            id_prefix=f"d{ctx.run_id[-4:]}",
            septic_share=o.septic_share,
        )
        septic = sum(s.onset_hour is not None for s in ctx.plan)
        enriched = f" (drawn with {o.septic_share:.0%} septic stays)" if o.septic_share is not None and o.stays else ""
        ctx.narrator.say(f"cohort: {len(ctx.plan)} stays, {septic} of them septic{enriched}")


class StreamPhase(Step):
    """Stream part of the cohort as the EHR would, until every stay-hour with data is scored.

    Scored live, and in shadow while a candidate is there.
    """

    def __init__(self, *, shadow: bool) -> None:
        self.shadow = shadow
        self.phase = "streaming (production + shadow)" if shadow else "streaming under the production model, with drift"

    async def run(self, ctx: DemoContext) -> None:
        o, say = ctx.options, ctx.narrator.say
        first, second = shadow_split(ctx.plan, o.shadow_share)
        if self.shadow:
            stays, drifts, candidate = first, [], o.candidate_version
            say(
                f"streaming {len(stays)} real ICU stays as FHIR over HTTP to ingest; outcomes follow "
                f"{o.outcome_delay_hours:g} h (simulated) later"
            )
        else:
            stays, candidate = second, None
            drifts = [sim.Drift.parse(f"{o.drift}@0")] if o.drift else []
            if drifts:
                ctx.drifted_encounters = {s.encounter for s in stays}
            if not stays:
                return
            say(
                f"streaming {len(stays)} more stays; from now the EHR interface sends "
                f"{'temperature in degF labelled Cel' if o.drift == 'temp-degf' else o.drift}"
            )
        await self.stream(ctx, stays, drifts, candidate)
        if self.shadow:
            seen = ctx.need(ctx.watcher, "the topic reader").observed
            say(f"phase 1 scored: {len(seen.live)} stay-hours live, {len(seen.shadow)} in shadow")

    async def stream(
        self, ctx: DemoContext, stays: list[sim.Stay], drifts: list[sim.Drift], candidate: str | None
    ) -> None:
        watcher, d = ctx.need(ctx.watcher, "the topic reader"), ctx.options.deadlines
        table = ctx.narrator.table(watcher, None)
        with Live(table, console=ctx.narrator.console, refresh_per_second=4, transient=True) as live:
            ctx.live = live  # waits update this display instead of a spinner of their own

            def progress(report: sim.SimulationReport, _: Any) -> None:
                ctx.report = report
                live.update(ctx.narrator.table(watcher, report))

            try:
                try:
                    report = await sim.simulate(
                        stays,
                        kafka=ctx.stack.cluster.connection(Principal.EHR.value),
                        topics=ctx.topics,
                        via="http",
                        ingest_url=ctx.stack.url("ingest"),
                        token=ctx.stack.token("simulator"),
                        speed=ctx.options.speed,
                        outcome_delay_hours=ctx.options.outcome_delay_hours,
                        drifts=drifts,
                        start=ICU_EPOCH,
                        deadline_s=d.stream_s,
                        on_progress=progress,
                    )
                except sim.SimulationStopped as stopped:
                    ctx.reports.append(stopped.report)
                    raise DemoStopped(f"streaming to ingest stopped: {stopped.reason}") from stopped
                ctx.reports.append(report)
                ctx.report = report
                await self.wait_scored(ctx, watcher, candidate)
            finally:
                ctx.live = None
        ctx.narrator.console.print(ctx.narrator.table(watcher, report))

    async def wait_scored(self, ctx: DemoContext, watcher: TopicWatcher, candidate: str | None) -> None:
        """Every stay-hour with data has its live score (and shadow score), or the topics went quiet."""
        d = ctx.options.deadlines
        o = watcher.observed

        def settled() -> str | None:
            done = o.obs_hours and not o.unscored_hours() and (candidate is None or not o.unscored_shadow(candidate))
            if done and watcher.quiet_for() > 2:
                return "scored"
            if o.obs_hours and watcher.quiet_for() > d.quiet_s:
                return "quiet"
            return None

        what = "every stay-hour with data to be scored live" + (f" and by v{candidate} in shadow" if candidate else "")
        how = await ctx.wait(settled, what=what, timeout_s=d.scored_s)
        if how == "quiet":
            missing = len(o.unscored_hours())
            ctx.narrator.warn(
                f"no record on any topic for {d.quiet_s:.0f}s while {missing} stay-hour(s) have no live score; "
                "carrying on (the accounting will show them)"
            )


class DecidePromotion(Step):
    """Shadow's comparison published, the registry's policy decides on it, the scorer follows a promotion."""

    phase = "evidence and promotion"

    async def run(self, ctx: DemoContext) -> None:
        registry, probe = ctx.need(ctx.registry, "the registry"), ctx.need(ctx.probe, "the probe")
        watcher, d, say = ctx.need(ctx.watcher, "the topic reader"), ctx.options.deadlines, ctx.narrator.say
        v = ctx.options.candidate_version
        expected = len(shadow_split(ctx.plan, ctx.options.shadow_share)[0])
        # Shadow's evidence is complete once its join holds every streamed stay's outcome (outcomes are the last
        # thing the EHR and the coding feed send).
        labelled = 0

        async def join_complete() -> bool:
            nonlocal labelled
            rebuilt, labelled = await probe.shadow_join(v)
            return rebuilt and labelled >= expected

        await ctx.wait(
            join_complete,
            what=f"shadow's join to hold the outcomes of all {expected} stays",
            timeout_s=d.shadow_join_s,
            required=False,
            interval_s=2,
        )
        say(f"shadow's join holds {labelled} of {expected} stays with their outcomes")
        before = {c.event_id for c in watcher.observed.comparisons}

        async def published() -> int | None:
            status = await probe.publish_comparison()
            return status if status == 200 else None  # 409 while shadow re-reads its topics after a start

        await ctx.wait(
            published, what=f"shadow to publish its comparison of v{v}", timeout_s=d.comparison_publish_s, interval_s=2
        )
        say(f"shadow published its comparison of v{v} against live: HTTP 200")
        await ctx.wait(
            lambda: [c for c in watcher.observed.comparisons if c.event_id not in before and c.candidate_version == v],
            what=f"the comparison of v{v} on the comparisons topic",
            timeout_s=d.comparison_seen_s,
            required=False,
        )

        # The registry consumes the comparison and records it; its eligibility report then names every criterion.
        # With auto_promote it may promote at once: the candidate is then production and its eligibility endpoint
        # answers as for a production model, so the evidence is the report the promotion event carries.
        report: dict[str, Any] = {}

        async def evidence() -> bool:
            nonlocal report
            event = promotion_event(watcher.observed.lifecycle, v)
            if event is not None and event.evidence.get("policy"):
                report = dict(event.evidence["policy"])
                return True
            report = await registry.eligibility(v)
            return any(c.get("name") == "auroc_diff_ci_low" for c in report.get("criteria", []))

        await ctx.wait(
            evidence, what=f"the registry's evidence report on v{v}", timeout_s=d.eligibility_s, interval_s=1
        )
        event = await wait_for(
            lambda: promotion_event(watcher.observed.lifecycle, v),
            what=f"v{v}'s promotion",
            timeout_s=d.promotion_s,
            required=False,
        )
        promoted = event is not None
        if event is not None and event.evidence.get("policy"):
            report = dict(event.evidence["policy"])  # what the registry decided on
        for c in report.get("criteria", []):
            mark = {True: "[green]pass[/green]", False: "[red]fail[/red]", None: "n/a"}[c.get("passed")]
            ctx.narrator.console.print(
                f"  {mark} {c['name']}: observed {c.get('observed')} (required {c.get('required')})"
            )
        if promoted:
            switched = await switched_to(ctx, v)
            say(
                f"policy: v{v} eligible and approved -> promoted; the live scorer switched to v{v}"
                f" {'' if switched else '(not yet confirmed)'}"
            )
        else:
            say(f"policy: v{v} not promoted; the evidence above says why")
        comparisons = watcher.observed.comparisons
        comparison = comparisons[-1].model_dump(mode="json") if comparisons else None
        ctx.decision = {"candidate": v, "eligibility": report, "promoted": promoted, "comparison": comparison}


async def switched_to(ctx: DemoContext, version: str) -> bool:
    """Whether the live scorer takes ``version`` within its deadline (optional: the summary tells)."""
    probe = ctx.need(ctx.probe, "the probe")

    async def serves() -> bool:
        return (await probe.scorer_model())[0] == version

    return bool(
        await ctx.wait(
            serves,
            what=f"the live scorer to serve v{version}",
            timeout_s=ctx.options.deadlines.scorer_model_s,
            required=False,
        )
    )


class RollbackDrill(Step):
    """A critical performance alert against production (marked as a drill): the registry rolls back, or records it."""

    phase = "rollback drill"

    async def run(self, ctx: DemoContext) -> None:
        registry, probe = ctx.need(ctx.registry, "the registry"), ctx.need(ctx.probe, "the probe")
        watcher, d, say = ctx.need(ctx.watcher, "the topic reader"), ctx.options.deadlines, ctx.narrator.say
        version = await registry.production_version()
        say(f"rollback drill: a critical performance alert against production v{version} (marked as a drill)")
        alert = ev.AlertRaised(
            event_id=ev.deterministic_id("drill", ctx.run_id),
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
            evidence={"drill": True, "run": ctx.run_id},
        )
        producer = AckedProducer(kafka_connection(ctx.stack), client_id="vigil-demo-drill")
        await producer.start()
        try:
            await producer.publish_all(ctx.topics.alerts, [alert])
        finally:
            await producer.stop()
        if not ctx.decision.get("promoted"):
            # Nothing was promoted, so there is no earlier production version to restore: the registry records
            # the alert against the version and flags it (the policy's answer when no rollback target exists).
            async def recorded() -> bool:
                history = await registry.history(version)
                return any(a.get("event_id") == alert.event_id for a in history.get("alerts", []))

            found = bool(
                await ctx.wait(
                    recorded,
                    what=f"the registry to record the drill's alert against v{version}",
                    timeout_s=d.alert_recorded_s,
                    required=False,
                )
            )
            say(f"no earlier production version to restore; the registry recorded the alert: {found}")
            ctx.drill = {
                "alerted_version": version,
                "rolled_back": False,
                "alert_recorded": found,
                "why": "no earlier production version",
            }
            return
        rolled = await ctx.wait(
            lambda: next((e for e in watcher.observed.lifecycle if e.action == ev.LifecycleAction.ROLLED_BACK), None),
            what="the registry to roll back",
            timeout_s=d.rollback_s,
            required=False,
        )
        if rolled is None:
            say(f"the registry did not roll back within {d.rollback_s:.0f} s")
            ctx.drill = {"alerted_version": version, "rolled_back": False}
            return
        switched = await switched_to(ctx, rolled.model_version)
        say(f"registry rolled back to v{rolled.model_version}; live scorer on v{(await probe.scorer_model())[0]}")
        ctx.drill = {
            "alerted_version": version,
            "rolled_back": True,
            "restored_version": rolled.model_version,
            "scorer_switched": switched,
        }


def _adapt_step() -> Step:
    from vigil.demo.adapt_step import AdaptAtSite  # it imports this module for Step and DemoContext

    return AdaptAtSite()


STORY: tuple[Step, ...] = (
    StartStack(),
    RegisterModels(),
    PlanCohort(),
    StreamPhase(shadow=True),
    DecidePromotion(),
    StreamPhase(shadow=False),
    RollbackDrill(),
    _adapt_step(),
)
"""The demo's steps, in order."""
