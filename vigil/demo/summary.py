"""The run's summary: what was sent and acknowledged, what the topics hold, each model's figures, the decisions.

Loss is accounted on acknowledgements: every FHIR entry the plan holds must have its own outcome from ingest, and
every stay-hour with a canonical observation on the topic must have a live score. A run that stopped early never
reports zero loss.
"""

from __future__ import annotations

from collections import defaultdict
from functools import reduce
from typing import Any

import pandas as pd

from vigil import simulate as sim
from vigil.demo.figures import model_figures
from vigil.demo.observe import TopicWatcher
from vigil.demo.steps import DemoContext, demo_policy
from vigil.http_tokens import CALLERS
from vigil.stack import Stack
from vigil_scoring.model_package import ModelPackage, default_package_path


def figures(ctx: DemoContext, watcher: TopicWatcher, rejected: set[str]) -> dict[str, Any]:
    """Each model's figures on the stays it scored, streamed beside offline (CPU-bound: run it off the loop)."""
    o, plan = watcher.observed, ctx.plan
    if not plan:
        return {}
    rows = pd.concat([s.rows for s in plan], ignore_index=True)
    encounter_of = {s.patient_id: s.encounter for s in plan}
    out: dict[str, Any] = {}
    by_version: dict[str, dict[tuple[str, int], float]] = defaultdict(dict)
    for (enc, hour), score in o.live.items():
        by_version[f"live v{score.model_version}"][(enc, hour)] = score.probability
    for (version, enc, hour), score in o.shadow.items():
        by_version[f"shadow v{version}"][(enc, hour)] = score.probability
    drifted = ctx.drifted_encounters
    for label, scores in sorted(by_version.items()):
        version = label.split("v")[-1]
        if not default_package_path(version).exists():
            continue  # a site-adapted candidate staged at the end: it scored nothing the demo streamed
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
            out[label + suffix] = f if not suffix else {**f, "agree": None}
    return out


def build_summary(
    ctx: DemoContext, watcher: TopicWatcher, models: dict[str, Any], audit: dict[str, Any] | None, failed: str | None
) -> dict[str, Any]:
    """The summary of a run, complete or stopped (``failed`` says why)."""
    o, plan = watcher.observed, ctx.plan
    sent = reduce(sim.SimulationReport.merge, ctx.reports, sim.SimulationReport())
    unscored = o.unscored_hours()
    # Of the phases that streamed: entries planned without their own outcome from ingest. A run stopped before a
    # phase began does not count that phase's entries here; its `failed` says it stopped, and zero loss is "no".
    without_outcome = sent.entries_unacknowledged
    o_ = ctx.options
    return {
        "run": ctx.run_id,
        "topic_prefix": ctx.prefix,
        "data": str(o_.data or sim.SAMPLE),
        "stays": len(plan),
        "failed": failed,
        "cohort": {
            "stays": len(plan),
            "septic_stays": sum(s.onset_hour is not None for s in plan),
            "draw": (
                f"seeded draw of {o_.stays} stays with {o_.septic_share:.0%} septic (case-enriched)"
                if o_.stays and o_.septic_share is not None
                else (f"seeded random draw of {o_.stays} stays" if o_.stays else "all stays")
            ),
        },
        "counts": {
            "fhir_bundles_sent": sent.bundles_posted,
            "fhir_bundles_acknowledged": sent.bundles_acknowledged,
            "fhir_observations_sent": sent.observations_sent,
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
            "ingest_entry_outcomes": dict(sent.entry_outcomes),
            "fhir_entries_planned": sent.entries_planned,
            "fhir_entries_sent": sent.entries_sent,
            "fhir_entries_without_outcome": without_outcome,
            "http_status": {str(k): v for k, v in sorted(sent.http_status.items())},
            "send_retries": sent.retries,
            "transport_errors": dict(sent.transport_errors),
            "stay_hours_without_live_score": len(unscored),
            "unscored_examples": [f"{e}@{h}" for e, h in sorted(unscored)[:10]],
            "zero_loss": failed is None and not unscored and o.observations > 0 and without_outcome == 0,
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
        "promotion": ctx.decision,
        "rollback_drill": ctx.drill,
        "adaptation": ctx.adaptation,
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
        "models": models,
        "policy_used": demo_policy(),
        "audit_chain": audit,
        "story": ctx.narrator.story,
        "kept": kept_stack(ctx.stack) if o_.keep else None,
    }


REVIEWER = "approver"
"""The caller whose sign-in ``--keep`` prints: a clinical approver reads the evidence the demo promoted on."""


def kept_stack(stack: Stack) -> dict[str, Any]:
    """Where to look at a stack the demo left running, who to sign in as, and how to stop it.

    The token's file is named, not the token: the summary is written to disk and printed to a terminal.
    """
    ports = []
    if stack.kafka_port != 9092:
        ports.append(f"--kafka-port {stack.kafka_port}")
    if stack.port_base != 8001:
        ports.append(f"--port-base {stack.port_base}")
    secrets = stack.http_secrets
    return {
        "console": f"{stack.url('registry')}/ui",
        "reviewer": {
            "user": str(CALLERS[REVIEWER]["user"]),
            "role": str(CALLERS[REVIEWER]["role"]),
            "token_file": str(secrets.token_file(REVIEWER)),
        },
        "analyst": {"user": str(CALLERS["analyst"]["user"]), "token_file": str(secrets.token_file("analyst"))},
        "stop": " ".join(["vigil down", *ports]),
    }


def kept_lines(kept: dict[str, Any]) -> list[str]:
    """``kept_stack`` as the lines the demo prints after its summary."""
    reviewer, analyst = kept["reviewer"], kept["analyst"]
    return [
        f"the stack keeps running: open the console at {kept['console']}",
        f"sign in as {reviewer['user']} ({reviewer['role']}) with the token in {reviewer['token_file']}",
        f"replays from the console: {analyst['user']} (analyst), token in {analyst['token_file']}",
        f"stop it with: {kept['stop']}",
    ]
