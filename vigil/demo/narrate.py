"""The demo's voice: the story as it happens (kept for the report), events worth a line, a live progress table."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from vigil import simulate as sim
from vigil.demo.observe import TopicWatcher
from vigil_contracts import events as ev


class Narrator:
    """Prints the story and keeps it; ``phase`` names the step being told."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.story: list[dict[str, Any]] = []
        self.phase = "starting"

    def say(self, text: str, **data: Any) -> None:
        self.console.print(f"[bold cyan]>[/bold cyan] {text}")
        self.story.append({"at": time.strftime("%H:%M:%S"), "phase": self.phase, "text": text, **data})

    def warn(self, text: str, **data: Any) -> None:
        """A line the operator must not miss (a wait that gave up, a failed send); kept in the story too."""
        self.console.print(f"[bold red]![/bold red] {text}")
        self.story.append({"at": time.strftime("%H:%M:%S"), "phase": self.phase, "text": text, **data})

    def on_event(self, kind: str, event: ev.Event) -> None:
        """Alerts and lifecycle changes, as the topic reader sees them."""
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

    def table(self, watcher: TopicWatcher, report: sim.SimulationReport | None, waiting: str = "") -> Table:
        """The progress table: what was sent and acknowledged, what the topics hold."""
        title = f"Vigil demo - {self.phase}" + (f" (waiting for {waiting})" if waiting else "")
        t = Table(title=title, expand=False)
        t.add_column("what")
        t.add_column("count", justify="right")
        o = watcher.observed
        if report:
            t.add_row("FHIR bundles sent / planned", f"{report.bundles_posted} / {report.bundles_planned}")
            t.add_row("FHIR bundles acknowledged", str(report.bundles_acknowledged))
            t.add_row("FHIR entries with an outcome", f"{report.entries_acknowledged} / {report.entries_planned}")
            if report.retries:
                t.add_row("retried sends", str(report.retries))
        t.add_row("canonical observations", str(o.observations))
        t.add_row("stay-hours with data", str(len(o.obs_hours)))
        t.add_row("live scores (unique)", str(len(o.live)))
        t.add_row("shadow scores (unique)", str(len(o.shadow)))
        t.add_row("outcomes", str(sum(o.outcomes.values())))
        t.add_row("alerts", str(len(o.alerts)))
        t.add_row("dead letters", str(sum(o.dead_letters.values())))
        return t
