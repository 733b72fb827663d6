"""The demo's learning-at-the-site step: its own streamed outcomes become a shadow candidate, as the loop would.

After the drift phase the site has what no training set has: its own stays with their outcomes, on its own
topics. This step does what ``vigil adapt-loop run`` does, bounded to a demo's minutes: it builds the dataset from
the run's topics as the ``analyst`` Kafka principal (the dataset job's ACLs: observations and outcomes only),
adapts the production model with small iteration counts and without a pooled fit (the base training data is
absent on a fresh clone and a pooled fit takes minutes), and registers and stages the candidate in shadow as the
``adapt`` service principal (a data scientist's role: it may register and stage, never approve), both audited
registry decisions. What 300 stays can and cannot show is said in the summary: they show the mechanism (rows
equal to serving's, lineage, governance), not that the candidate is better.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from vigil.demo.options import MODEL
from vigil.demo.steps import DemoContext, Step
from vigil_runtime.registry_client import RegistryClient

ADAPT_CALLER = "adapt"
"""The HTTP caller the candidate is registered as (``vigil/http_tokens.py``: svc-adapt, data_scientist)."""

WHAT_IT_SHOWS = (
    "A few hundred stays show the loop working: the dataset is the serving rows labelled by the streamed outcomes, "
    "the candidate carries its lineage (base model and dataset hashes) and went through the registry as a service "
    "principal, into shadow, audited. They cannot show that a candidate is better: with fewer than 30 septic stays "
    "to validate on, no learned candidate can even be checked for harm, so adapt keeps the recalibrated base; and "
    "promotion still needs shadow's comparison on later stays and a clinical approver."
)


def adaptation_config(version: str) -> Any:
    """Adapt bounded for a demo: small trees and iteration counts (seconds, not minutes), no pooled candidate."""
    from vigil_ml.adapt import AdaptConfig

    cfg = AdaptConfig(name=MODEL, version=version, n_boot=50, min_local_septic=20, local_max_iter=60)
    cfg.local_hgb.update(max_iter=40)
    cfg.hgb.update(max_iter=60)
    return cfg


def dataset_settings(ctx: DemoContext) -> Any:
    """The dataset job's settings for this run: its topics, the stack's broker, the analyst principal."""
    from vigil.dataset import DatasetSettings

    conn = ctx.stack.cluster.connection("analyst")
    secured = ctx.stack.cluster.secured
    return DatasetSettings(
        topic_prefix=ctx.prefix,
        kafka_bootstrap_servers=conn.bootstrap_servers,
        kafka_security_protocol=conn.security_protocol,
        kafka_ca_file=conn.ca_file,
        kafka_username=conn.username if secured else None,
        kafka_password_file=str(ctx.stack.cluster.secrets.password_file("analyst")) if secured else None,
        # An unsecured cluster only exists under `vigil demo --dev`, which is development mode already.
        development=not secured,
    )


def build_and_adapt(ctx: DemoContext, work: Path, base: Path, version: str) -> dict[str, Any]:
    """Dataset from the topics, then adapt (blocking: run it in a thread)."""
    import pandas as pd
    from threadpoolctl import threadpool_limits

    from vigil.dataset import build
    from vigil_ml.adapt import adapt
    from vigil_scoring.site_dataset import Window

    t0 = time.monotonic()
    manifest = build(work / "dataset", settings=dataset_settings(ctx), window=Window())
    t_dataset = time.monotonic() - t0
    lines: list[str] = []
    # One thread: the five services share the machine with this fit, and OpenMP's two threads on an
    # oversubscribed machine ran a 9,000-row, 40-iteration fit 8x slower than one (54 s against 6.7 s, measured).
    with threadpool_limits(limits=1):
        res = adapt(
            base,
            pd.read_parquet(work / "dataset" / "rows.parquet"),
            work / "adapt",
            base_data=None,
            config=adaptation_config(version),
            manifest_path=work / "dataset" / "manifest.json",
            progress=lines.append,
        )
    chosen = res.candidates[res.chosen]
    return {
        "dataset": {k: manifest.get(k) for k in ("stays", "labelled_stays", "rows", "septic_stays", "content_sha256")},
        "dataset_seconds": round(t_dataset, 1),
        "adapt_seconds": round(time.monotonic() - t0 - t_dataset, 1),
        "package": str(res.package_dir),
        "chosen": res.chosen,
        "fit_stays": len(res.fit_ids),
        "selection_stays": len(res.selection_ids),
        "candidates": {
            name: {k: c["validation"][k]["value"] for k in ("auroc", "utility")} for name, c in res.candidates.items()
        },
        "chosen_validation": {k: chosen["validation"][k] for k in ("auroc", "utility")},
        "notes": res.notes,
    }


class AdaptAtSite(Step):
    """The site's outcomes -> dataset -> adapted candidate -> registered and staged in shadow (governed, audited)."""

    phase = "learning at the site"

    async def run(self, ctx: DemoContext) -> None:
        from vigil.adapt_loop import candidate_version, register_candidate
        from vigil_scoring.model_package import default_package_path

        registry, say = ctx.need(ctx.registry, "the registry"), ctx.narrator.say
        production = await registry.production_version()
        base = default_package_path(production)
        version = candidate_version()
        say(f"learning at the site: a dataset from this run's own streamed outcomes, then adapt v{production}")
        with ctx.narrator.console.status("building the dataset from the topics and adapting (bounded)"):
            result = await asyncio.to_thread(build_and_adapt, ctx, ctx.home / "adapt" / version, base, version)
        ds = result["dataset"]
        say(
            f"dataset: {ds['labelled_stays']} labelled stays ({ds['septic_stays']} septic), {ds['rows']} rows "
            f"in {result['dataset_seconds']:.0f}s; adapt in {result['adapt_seconds']:.0f}s chose {result['chosen']} "
            f"(fitted on {result['fit_stays']} stays, validated on the latest {result['selection_stays']})"
        )
        reason = f"site adaptation in the demo; {ds['labelled_stays']} stays from run {ctx.run_id}"

        # The adapt job's own service principal, not the demo's data scientist: the audit trail names it.
        client: RegistryClient[Any] = RegistryClient(
            ctx.stack.url("registry"), token=ctx.stack.token(ADAPT_CALLER), timeout=60.0
        )
        try:
            staged = await register_candidate(client, Path(result["package"]), name=MODEL, reason=reason)
        finally:
            await client.aclose()
        v = str(staged["version"])
        # The registry's signed lifecycle events on the topic name who registered and staged the candidate.
        watcher = ctx.need(ctx.watcher, "the topic reader")
        events = await ctx.wait(
            lambda: (
                [e for e in watcher.observed.lifecycle if e.model_version == v and e.to_stage.value == "shadow"]
                and [e for e in watcher.observed.lifecycle if e.model_version == v]
            ),
            what=f"the lifecycle events of {v} on the topic",
            timeout_s=30,
            required=False,
        )
        result.update(
            version=v,
            stage=str(staged.get("stage")),
            base_version=production,
            lifecycle=[{"action": e.action.value, "to": e.to_stage.value, "actor": e.actor} for e in events or []],
            what_it_shows=WHAT_IT_SHOWS,
        )
        say(f"candidate {result['version']} registered and staged in {result['stage']} by the adapt principal")
        ctx.adaptation = result
