"""``vigil registry``: the registry's REST API from the command line.

Every command talks to a running registry (``--url``, env ``VIGIL_REGISTRY_URL``) with a bearer token
(``--token-file``, env ``VIGIL_REGISTRY_TOKEN_FILE``, e.g. ``.vigil/secrets/http/scientist.token`` made by
``vigil up``; or ``--token``, env ``VIGIL_REGISTRY_TOKEN``); ``--json`` prints the API's JSON instead of a summary.
A refusal prints the registry's reason and exits 1.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import typer

from vigil_registry.artifacts import pack_folder, unpack_archive
from vigil_runtime.registry_client import RegistryClient

app = typer.Typer(help="Model registry: versions, stages, approvals, audit trail.", no_args_is_help=True)

DEFAULT_URL = "http://127.0.0.1:8005"


def make_client(url: str, token: str | None) -> RegistryClient[Any]:
    """The registry client every service uses (tests give it a transport into the app)."""
    return RegistryClient(url, token=token, timeout=60.0)


@app.callback()
def main(
    ctx: typer.Context,
    url: str = typer.Option(DEFAULT_URL, envvar="VIGIL_REGISTRY_URL", help="The registry's base URL."),
    token: str | None = typer.Option(None, envvar="VIGIL_REGISTRY_TOKEN", help="Bearer token."),
    token_file: Path | None = typer.Option(
        None, envvar="VIGIL_REGISTRY_TOKEN_FILE", help="A file holding the bearer token (kept off the command line)."
    ),
) -> None:
    """Talk to a running registry."""
    if token is None and token_file is not None:
        token = token_file.read_text().strip()
    ctx.obj = {"url": url, "token": token}


async def _request(url: str, token: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    client = make_client(url, token)
    try:
        return await client.request(method, path, **kwargs)
    finally:
        await client.aclose()


def _call(ctx: typer.Context, method: str, path: str, **kwargs: Any) -> Any:
    # One command, one request: a loop of its own is all the CLI needs of the async client.
    try:
        response = asyncio.run(_request(ctx.obj["url"], ctx.obj["token"], method, path, **kwargs))
    except httpx.HTTPError as error:
        typer.echo(f"registry unreachable at {ctx.obj['url']}: {type(error).__name__}", err=True)
        raise typer.Exit(1) from error
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text}
        detail = body.get("detail")
        if isinstance(detail, list):  # a 422: one problem per place, in FastAPI's validation shape
            detail = "; ".join(str(i.get("msg", i)) if isinstance(i, dict) else str(i) for i in detail)
        typer.echo(f"refused ({response.status_code}): {detail}", err=True)
        if "report" in body:
            typer.echo(json.dumps(body["report"], indent=2), err=True)
        raise typer.Exit(1)
    return response.json()


def _out(data: Any, as_json: bool, summary: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        typer.echo(summary)


JSON = typer.Option(False, "--json", help="Print JSON.")
REASON = typer.Option("", "--reason", "-r", help="Why (kept in the audit trail).")


@app.command("list")
def list_models(ctx: typer.Context, as_json: bool = JSON) -> None:
    """List models, their production version and their versions' stages."""
    models = _call(ctx, "GET", "/models")
    lines = [
        f"{m['name']}: production={m['production_version'] or '-'}  "
        + " ".join(f"{v}={s}" for v, s in m["versions"].items())
        for m in models
    ]
    _out(models, as_json, "\n".join(lines) or "no models")


@app.command("show")
def show(ctx: typer.Context, name: str, version: str | None = typer.Argument(None), as_json: bool = JSON) -> None:
    """Show a model, or one version (stage, digests, lineage, metrics, card)."""
    if version is None:
        model = _call(ctx, "GET", f"/models/{name}")
        _out(model, as_json, json.dumps(model, indent=2))
        return
    data = _call(ctx, "GET", f"/models/{name}/versions/{version}")
    summary = (
        f"{data['model_name']} {data['version']}: {data['stage']}"
        f"{' (FLAGGED: ' + data['flag_reason'] + ')' if data['flagged'] else ''}\n"
        f"  artifact sha256 {data['artifact_sha256']}\n  package  sha256 {data['package_sha256']}\n"
        f"  feature set {data['feature_set_version']}, tags {', '.join(data['tags']) or '-'}\n"
        f"  lineage {json.dumps(data['lineage'])}\n  metrics {json.dumps(data['metrics'])}"
    )
    _out(data, as_json, summary)


@app.command("register")
def register(
    ctx: typer.Context,
    path: Path = typer.Argument(..., exists=True, help="A package folder, or its .tar.gz/.zip."),
    tag: list[str] = typer.Option([], "--tag", "-t", help="Tag to add (repeatable)."),
    as_json: bool = JSON,
) -> None:
    """Upload a model package; it is stored under its sha256 and registered."""
    if path.is_dir():
        data = pack_folder(path)
        manifest = json.loads((path / "manifest.json").read_text())
    else:
        data = path.read_bytes()
        with tempfile.TemporaryDirectory() as tmp:
            folder = unpack_archive(data, Path(tmp), max_bytes=1 << 34)
            manifest = json.loads((folder / "manifest.json").read_text())
    name = str(manifest["name"])
    created = _call(
        ctx,
        "POST",
        f"/models/{name}/versions",
        content=data,
        params={"tag": tag},
        headers={"Content-Type": "application/gzip"},
    )
    _out(created, as_json, f"registered {created['model_name']} {created['version']} ({created['artifact_sha256']})")


@app.command("stage")
def stage(
    ctx: typer.Context,
    name: str,
    version: str,
    to: str = typer.Argument(..., help="shadow or archived"),
    reason: str = REASON,
    as_json: bool = JSON,
) -> None:
    """Move a version to shadow or archived."""
    data = _call(ctx, "POST", f"/models/{name}/versions/{version}/stage", json={"to": to, "reason": reason})
    _out(data, as_json, f"{name} {version}: {data['stage']}")


@app.command("propose")
def propose(ctx: typer.Context, name: str, version: str, reason: str = REASON, as_json: bool = JSON) -> None:
    """Propose a shadow version for production (data scientist)."""
    data = _call(ctx, "POST", f"/models/{name}/versions/{version}/proposals", json={"reason": reason})
    _out(data, as_json, f"proposal {data['id']} for {name} {version}: {data['status']}")


@app.command("approve")
def approve(ctx: typer.Context, name: str, version: str, reason: str = REASON, as_json: bool = JSON) -> None:
    """Approve the open proposal (clinical approver, not the proposer)."""
    data = _call(ctx, "POST", f"/models/{name}/versions/{version}/approve", json={"reason": reason})
    _out(data, as_json, f"proposal {data['id']} for {name} {version}: {data['status']} by {data['decided_by']}")


@app.command("reject")
def reject(ctx: typer.Context, name: str, version: str, reason: str = REASON, as_json: bool = JSON) -> None:
    """Reject the open proposal (clinical approver)."""
    data = _call(ctx, "POST", f"/models/{name}/versions/{version}/reject", json={"reason": reason})
    _out(data, as_json, f"proposal {data['id']} for {name} {version}: {data['status']}")


@app.command("eligibility")
def eligibility(ctx: typer.Context, name: str, version: str, as_json: bool = JSON) -> None:
    """The promotion policy's report on a candidate: each criterion, observed and required."""
    data = _call(ctx, "GET", f"/models/{name}/versions/{version}/eligibility")
    lines = [f"{name} {version}: {'ELIGIBLE' if data['eligible'] else 'not eligible'}"]
    for c in data["criteria"]:
        mark = {True: "pass", False: "FAIL", None: "n/a "}[c["passed"]]
        lines.append(f"  {mark} {c['name']}: observed {c['observed']}, required {c['required']} {c['detail']}")
    _out(data, as_json, "\n".join(lines))


@app.command("promote")
def promote(ctx: typer.Context, name: str, version: str, reason: str = REASON, as_json: bool = JSON) -> None:
    """Promote an approved, eligible shadow version to production."""
    data = _call(ctx, "POST", f"/models/{name}/versions/{version}/promote", json={"reason": reason})
    _out(data, as_json, f"{name} {version}: {data['stage']} (replaced {data['replaced_version'] or '-'})")


@app.command("rollback")
def rollback(ctx: typer.Context, name: str, reason: str = REASON, as_json: bool = JSON) -> None:
    """Restore the previous production version in one call."""
    data = _call(ctx, "POST", f"/models/{name}/rollback", json={"reason": reason})
    _out(data, as_json, f"{name}: production is {data['version']} again")


@app.command("retire")
def retire(
    ctx: typer.Context,
    name: str,
    version: str,
    reason: str = typer.Option(..., "--reason", "-r", help="Why it is retired (required)."),
    as_json: bool = JSON,
) -> None:
    """Retire a version for good (it stays archived with its card, metrics and audit trail)."""
    data = _call(ctx, "POST", f"/models/{name}/versions/{version}/retire", json={"reason": reason})
    _out(data, as_json, f"{name} {version}: retired ({data['retired_reason']})")


@app.command("audit")
def audit(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Only this model."),
    version: str | None = typer.Argument(None, help="Only this version."),
    verify: bool = typer.Option(False, "--verify", help="Recompute the hash chain; exit 1 if it is broken."),
    as_json: bool = JSON,
) -> None:
    """The audit trail (who, role, when, from, to, reason), or its verification."""
    if verify:
        result = _call(ctx, "GET", "/audit/verify")
        _out(result, as_json, f"audit chain {'intact' if result['ok'] else 'BROKEN'}: {json.dumps(result)}")
        if not result["ok"]:
            raise typer.Exit(1)
        return
    params = {k: v for k, v in {"model": name, "version": version}.items() if v}
    entries = _call(ctx, "GET", "/audit", params=params)
    lines = [
        f"{e['seq']:>5} {e['at']} {e['model_name']} {e['version'] or '-'} {e['action']} by {e['actor']} "
        f"({e['role']}) {e['from_stage'] or '-'} -> {e['to_stage'] or '-'} {e['reason']}"
        for e in entries
    ]
    _out(entries, as_json, "\n".join(lines) or "no entries")
