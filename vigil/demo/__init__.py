"""The main job in one command: a clinical model's life, end to end, on real ICU stays.

``vigil demo`` starts the native broker and the five services, registers a production model and a candidate in
shadow through the registry's API (with the four-eyes approval), streams a cohort of real stays from an EHR
simulator over FHIR, and tells the story as it happens: observations in, scores out, alerts as they fire. Then
it asks shadow for its comparison, lets the registry's policy decide the promotion on that evidence, streams the
rest of the cohort (with a drift injected) under the promoted model, runs a rollback drill, and ends with the
accounting that nothing was lost, each model's figures, and an HTML report.

The parts: ``steps`` (the story as scenario steps over one context), ``clients`` (the registry API, the probe of
the scorer and shadow, the Kafka client options: everything that carries credentials), ``observe`` (the topic
reader), ``waits`` (every wait has a deadline), ``cohort``, ``figures``, ``summary`` and ``report`` (the summary's
tables and the HTML page from ``templates/report.html``).

Every wait has a deadline and says what it was waiting for when it gives up; a run that stops (a wait that must
succeed gave up, or a bundle could not be delivered) stops the stack, still writes its summary and report with
the reason, and never reports zero loss.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
from rich.console import Console

from vigil.demo.clients import RegistryError
from vigil.demo.cohort import shadow_split
from vigil.demo.figures import _bedside_view, model_figures
from vigil.demo.narrate import Narrator
from vigil.demo.options import MODEL, Deadlines, DemoOptions
from vigil.demo.report import print_summary, render_html
from vigil.demo.steps import STORY, DemoContext, Step, promotion_event
from vigil.demo.summary import build_summary, figures, kept_lines, kept_stack
from vigil.demo.waits import DemoStopped
from vigil.kafka_local import vigil_home
from vigil.stack import Stack
from vigil_runtime.registry_client import RegistryUnavailable

__all__ = [
    "MODEL",
    "Deadlines",
    "Demo",
    "DemoOptions",
    "DemoStopped",
    "_bedside_view",
    "model_figures",
    "promotion_event",
    "run_demo",
    "shadow_split",
]


class Demo:
    """One run of the story: the steps in order, then the summary; the stack is stopped whatever happens."""

    def __init__(self, options: DemoOptions, console: Console | None = None, steps: tuple[Step, ...] = STORY) -> None:
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
        self.steps = steps
        self.ctx = DemoContext(
            options=options,
            narrator=Narrator(console),
            run_id=run_id,
            home=vigil_home() / "demo" / run_id,
            stack=Stack(kafka_port=options.kafka_port, port_base=options.port_base),
        )

    async def run(self) -> dict[str, Any]:
        ctx, narrator = self.ctx, self.ctx.narrator
        failed: str | None = None
        try:
            try:
                for step in self.steps:
                    narrator.phase = step.phase
                    await step.run(ctx)
            except (DemoStopped, RegistryError, RegistryUnavailable, httpx.HTTPError) as error:
                # A stop the demo can explain: say it, still summarise what happened, stop the stack (below).
                failed = f"{narrator.phase}: {type(error).__name__ if not str(error) else ''}{error}"
                narrator.warn(f"the demo stopped while {failed}")
            narrator.phase = "summary"
            summary = await self.summarise(failed)
        finally:
            await self.close()
        summary["seconds"] = round(time.monotonic() - ctx.started, 1)
        await asyncio.to_thread(self.write_outputs, summary)  # the report's chart is drawn by matplotlib
        return summary

    async def summarise(self, failed: str | None) -> dict[str, Any]:
        ctx = self.ctx
        watcher = ctx.watcher
        if watcher is None:  # stopped before the stack was up: nothing was streamed
            from vigil.demo.observe import TopicWatcher

            watcher = TopicWatcher({}, ctx.topics)
        rejected: set[str] = set().union(*(r.rejected_encounters for r in ctx.reports)) if ctx.reports else set()
        models = await asyncio.to_thread(figures, ctx, watcher, rejected) if failed is None else {}
        audit = await ctx.registry.audit_verify() if ctx.registry is not None else None
        summary = build_summary(ctx, watcher, models, audit, failed)
        print_summary(ctx.narrator.console, summary)
        return summary

    async def close(self) -> None:
        """Stop reading, close the clients, stop the stack (unless asked to keep it)."""
        ctx = self.ctx
        if ctx.watcher is not None:
            await ctx.watcher.stop()
        for client in (ctx.registry, ctx.probe):
            if client is not None:
                await client.aclose()
        if not ctx.options.keep:
            await asyncio.to_thread(ctx.stack.down)
            ctx.narrator.say("stack stopped")
        else:
            for line in kept_lines(kept_stack(ctx.stack)):
                ctx.narrator.say(line)

    def write_outputs(self, summary: dict[str, Any]) -> None:
        o = self.ctx.options
        report = o.report_out or (self.ctx.home / "report.html")
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(render_html(summary))
        summary["report"] = str(report)
        if o.json_out:
            o.json_out.parent.mkdir(parents=True, exist_ok=True)
            o.json_out.write_text(json.dumps(summary, indent=2, default=str))
        self.ctx.narrator.say(f"report: {report}" + (f"; summary: {o.json_out}" if o.json_out else ""))


def run_demo(options: DemoOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the whole story; returns the summary (``summary["failed"]`` says why when it stopped early)."""
    return asyncio.run(Demo(options, console).run())
