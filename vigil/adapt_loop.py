"""``vigil adapt-loop``: the job that turns a site's outcomes into a shadow candidate when the registry says so.

Roles stay where they are: the registry decides (its adaptation policy, kept and audited with the promotion
policy, answers whether adaptation is due and why), this job does the work a data scientist would (build the
dataset from the streams, adapt, upload), acting as a service principal whose role may register and stage but
never approve. Promotion still needs a clinical approver; every step the registry takes is in its audit trail.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import typer

from vigil_registry.artifacts import pack_folder
from vigil_registry.queries import ADAPTED_TAG
from vigil_runtime.registry_client import RegistryClient

T = TypeVar("T")


async def register_candidate(
    client: RegistryClient[Any], package_dir: Path, *, name: str, reason: str
) -> dict[str, Any]:
    """Upload an adapted package and stage it in shadow (two audited registry decisions); returns the version."""
    archive = await asyncio.to_thread(pack_folder, package_dir)  # gzip of the package: off the loop
    response = await client.request(
        "POST",
        f"/models/{name}/versions",
        content=archive,
        params={"tag": ADAPTED_TAG},
        headers={"Content-Type": "application/gzip"},
    )
    if response.status_code >= 400:
        raise RuntimeError(f"registry refused the candidate ({response.status_code}): {response.text[:300]}")
    version = str(response.json()["version"])
    staged = await client.request(
        "POST", f"/models/{name}/versions/{version}/stage", json={"to": "shadow", "reason": reason}
    )
    if staged.status_code >= 400:
        raise RuntimeError(f"registry refused the shadow stage ({staged.status_code}): {staged.text[:300]}")
    body: dict[str, Any] = staged.json()
    return body


def with_registry(url: str, token: str, call: Callable[[RegistryClient[Any]], Awaitable[T]]) -> T:
    """One call of the runtime's registry client, in a loop of its own (the job's other steps are blocking work)."""

    async def run() -> T:
        client: RegistryClient[Any] = RegistryClient(url, token=token, timeout=60.0)
        try:
            return await call(client)
        finally:
            await client.aclose()

    return asyncio.run(run())


def candidate_version(now: datetime | None = None) -> str:
    """A version name that sorts by time and says where it came from."""
    return "site-" + (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


app = typer.Typer(help="Site adaptation loop.", no_args_is_help=True)


@app.command("run")
def run_cmd(
    work: Path = typer.Option(Path(".vigil/adapt"), help="Folder for the dataset and the adaptation run."),
    name: str = typer.Option("sepsis", help="Registered model name."),
    registry_url: str = typer.Option("http://127.0.0.1:8005", envvar="VIGIL_REGISTRY_URL"),
    token: str = typer.Option(..., envvar="VIGIL_ADAPT_TOKEN", help="The adaptation service principal's token."),
    base: Path = typer.Option(None, help="Package to adapt (default: the repository's default model)."),
    force: bool = typer.Option(False, help="Adapt even when the registry says it is not due."),
) -> None:
    """Ask the registry whether adaptation is due; if so build the dataset, adapt, register, stage in shadow."""
    from vigil.dataset import DatasetSettings, build
    from vigil_ml.adapt import AdaptConfig, adapt
    from vigil_ml.data import SHARED_SET_A
    from vigil_scoring.model_package import default_package_path
    from vigil_scoring.site_dataset import Window

    verdict = with_registry(registry_url, token, lambda client: client.adaptation(name))
    typer.echo(json.dumps({"adaptation": verdict}), err=True)
    if not verdict.get("due") and not force:
        return
    stamp = candidate_version()
    run = work / stamp
    manifest = build(run / "dataset", settings=DatasetSettings(), window=Window())
    import pandas as pd

    res = adapt(
        base or default_package_path(),
        pd.read_parquet(run / "dataset" / "rows.parquet"),
        run / "adapt",
        base_data=SHARED_SET_A if SHARED_SET_A.exists() else None,
        config=AdaptConfig(
            name=name,
            version=stamp,
            max_alert_rate_ratio=float(verdict.get("max_alert_rate_ratio", AdaptConfig.max_alert_rate_ratio)),
        ),
        manifest_path=run / "dataset" / "manifest.json",
        progress=lambda msg: typer.echo(msg, err=True),
    )
    reasons = "; ".join(verdict.get("reasons", [])) or "forced"
    reason = f"site adaptation ({reasons}); {manifest['labelled_stays']} stays"
    staged = with_registry(
        registry_url, token, lambda client: register_candidate(client, res.package_dir, name=name, reason=reason)
    )
    typer.echo(json.dumps({"version": staged["version"], "stage": staged["stage"], "chosen": res.chosen}))
