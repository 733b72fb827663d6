"""``vigil model``: train, evaluate and predict with sepsis models (PhysioNet-format parquet in, files out)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer

app = typer.Typer(help="Train, evaluate and predict with sepsis models.", no_args_is_help=True)


def _default_data() -> Path:
    from vigil_ml import data

    return data.SHARED_SET_A if data.SHARED_SET_A.exists() else data.SAMPLE_PATH


@app.command("train")
def train_cmd(
    data_path: Path = typer.Option(None, "--data", help="PhysioNet-format parquet (default: ../shared set A)."),
    out: Path = typer.Option(None, "--out", help="Run folder (default: ml/runs/<UTC time>)."),
    name: str = typer.Option("sepsis", help="Model name in the package."),
    version: str = typer.Option("1", help="Model version in the package."),
    seed: int = typer.Option(7, help="Seed of the split, the model and the bootstrap."),
    max_stays: int = typer.Option(None, help="Train on a seeded subset of this many stays (quick runs)."),
    max_iter: int = typer.Option(None, help="Boosting iterations (default 300)."),
    learning_rate: float = typer.Option(None, help="Boosting learning rate (default 0.05)."),
    max_leaf_nodes: int = typer.Option(None, help="Leaves per tree (default 31)."),
    min_samples_leaf: int = typer.Option(None, help="Minimum training rows per leaf (default 200)."),
    l2_regularization: float = typer.Option(None, help="L2 penalty on leaf values (default 1.0)."),
    drop_feature_groups: str = typer.Option(
        "",
        "--drop-feature-groups",
        help="Comma-separated feature groups masked for the fit (vital_last, vital_window, lab_last, measurement, "
        "derived, context); the package keeps the full input and ignores them.",
    ),
    n_boot: int = typer.Option(200, help="Bootstrap resamples for the CIs."),
    hold_out_sample: bool = typer.Option(True, help="Drop the bundled sample's patients before splitting."),
    alert_budget_of: Path = typer.Option(
        None,
        "--alert-budget-of",
        help="Package this model would replace: alert on at most its share of validation hours (its threshold).",
    ),
) -> None:
    """Train the baseline and the gradient-boosted model, export ONNX, validate and write a package."""
    from vigil_ml import data as vdata
    from vigil_ml.train import TrainConfig, train
    from vigil_scoring.features import FEATURE_GROUPS

    path = data_path or vdata.SHARED_SET_A
    groups = tuple(g.strip() for g in drop_feature_groups.split(",") if g.strip())
    if set(groups) - set(FEATURE_GROUPS):
        raise typer.BadParameter(
            f"unknown groups {sorted(set(groups) - set(FEATURE_GROUPS))}; known: {', '.join(FEATURE_GROUPS)}",
            param_hint="--drop-feature-groups",
        )
    if not path.exists():
        raise typer.BadParameter(f"{path} not found; pass --data PARQUET (PhysioNet-format rows)", param_hint="--data")
    cfg = TrainConfig(name=name, version=version, seed=seed, max_stays=max_stays, n_boot=n_boot)
    cfg.hold_out_sample = hold_out_sample
    cfg.drop_feature_groups = groups
    if alert_budget_of is not None:
        if not (alert_budget_of / "manifest.json").is_file():
            raise typer.BadParameter(f"{alert_budget_of} is not a model package", param_hint="--alert-budget-of")
        cfg.alert_budget_of = str(alert_budget_of)
    hgb_options = {
        "max_iter": max_iter,
        "learning_rate": learning_rate,
        "max_leaf_nodes": max_leaf_nodes,
        "min_samples_leaf": min_samples_leaf,
        "l2_regularization": l2_regularization,
    }
    for key, value in hgb_options.items():
        if value is not None:
            cfg.hgb[key] = value
    run = out or vdata.REPO_ROOT / "ml" / "runs" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    res = train(path, run, cfg)
    s = res.metrics["scores"]
    typer.echo(
        json.dumps(
            {
                "run_dir": str(res.run_dir),
                "package": str(res.package_dir),
                "onnx_parity_max_abs_diff": res.parity_max_abs_diff,
                "operating_threshold": res.metrics["operating_threshold"],
                "alert_budget": res.metrics["alert_budget"],
                "test": {k: {m: s[k][m]["value"] for m in ("auroc", "auprc", "utility")} for k in s},
            },
            indent=2,
        )
    )


@app.command("evaluate")
def evaluate_cmd(
    model: Path = typer.Option(None, "--model", help="Model package folder (default: the repository's default)."),
    data_path: Path = typer.Option(None, "--data", help="PhysioNet-format parquet (default: set A or the sample)."),
    out: Path = typer.Option(Path("evaluation"), "--out", help="Output path stem: writes STEM.json and STEM.html."),
    n_boot: int = typer.Option(200, help="Bootstrap resamples for the CIs."),
    seed: int = typer.Option(0),
) -> None:
    """Validate a package on labelled rows: metrics with CIs, bedside scores, subgroups; JSON and HTML report."""
    from vigil_ml import data as vdata
    from vigil_ml.evaluate import evaluate_package, write_report
    from vigil_scoring.model_package import ModelPackage, default_package_path

    pkg = ModelPackage.load(model or default_package_path())
    df = vdata.load(data_path or _default_data())
    report, plots = evaluate_package(pkg, df, n_boot=n_boot, seed=seed)
    js, html = write_report(report, plots, out)
    m = report["scores"]
    typer.echo(
        json.dumps(
            {
                "json": str(js),
                "html": str(html),
                "model": {k: m["model"][k]["value"] for k in ("auroc", "auprc", "utility")},
                "clinical_auroc": {k: m[k]["auroc"]["value"] for k in ("qsofa", "sirs", "news2", "mews")},
            },
            indent=2,
        )
    )


@app.command("predict")
def predict_cmd(
    data_path: Path = typer.Option(..., "--data", help="PhysioNet-format parquet."),
    out: Path = typer.Option(..., "--out", help="Output parquet: patient_id, hour, risk, alert."),
    model: Path = typer.Option(None, "--model", help="Model package folder (default: the repository's default)."),
) -> None:
    """Risk and alert for every input row, through the shared feature code and the package's ONNX session."""
    from vigil_ml.predict import predict_rows
    from vigil_scoring.model_package import ModelPackage, default_package_path

    pkg = ModelPackage.load(model or default_package_path())
    import pandas as pd

    result = predict_rows(pkg, pd.read_parquet(data_path))
    out.parent.mkdir(parents=True, exist_ok=True)
    result.to_parquet(out, index=False)
    typer.echo(json.dumps({"rows": len(result), "alerts": int(result["alert"].sum()), "out": str(out)}))


@app.command("adapt")
def adapt_cmd(
    data_path: Path = typer.Option(
        ..., "--data", help="The site's labelled PhysioNet-format rows (rows.parquet of vigil dataset build)."
    ),
    out: Path = typer.Option(..., "--out", help="Run folder; the package goes to OUT/package."),
    base: Path = typer.Option(None, "--base", help="Package to adapt (default: the repository's default model)."),
    base_data: Path = typer.Option(
        None,
        "--base-data",
        help="The base model's training data (default: ../shared set A when present); the pooled candidate needs it.",
    ),
    name: str = typer.Option("sepsis", help="Model name in the package."),
    version: str = typer.Option("adapted", help="Model version in the package."),
    seed: int = typer.Option(7),
    n_boot: int = typer.Option(200, help="Bootstrap resamples for the CIs."),
    selection_fraction: float = typer.Option(0.25, help="Latest share of local stays held out for the pick."),
    max_alert_rate_ratio: float = typer.Option(
        1.2,
        help="A learned candidate alerts on at most this factor of the base model's alert-hour rate (the promotion "
        "policy's max_alert_rate_ratio; the recalibrated base stays within 1.0).",
    ),
) -> None:
    """Candidates from the site's outcomes (recalibrated, pooled, stacked, local), picked on the latest stays."""
    import pandas as pd

    from vigil_ml import data as vdata
    from vigil_ml.adapt import AdaptConfig, adapt
    from vigil_scoring.model_package import default_package_path

    if base_data is None and vdata.SHARED_SET_A.exists():
        base_data = vdata.SHARED_SET_A
    cfg = AdaptConfig(
        name=name,
        version=version,
        seed=seed,
        n_boot=n_boot,
        selection_fraction=selection_fraction,
        max_alert_rate_ratio=max_alert_rate_ratio,
    )
    manifest = data_path.parent / "manifest.json"
    res = adapt(
        base or default_package_path(),
        pd.read_parquet(data_path),
        out,
        base_data=base_data,
        config=cfg,
        manifest_path=manifest if manifest.is_file() else None,
        progress=lambda msg: typer.echo(msg, err=True),
    )
    typer.echo(
        json.dumps(
            {
                "package": str(res.package_dir),
                "chosen": res.chosen,
                "validation": {
                    k: {m: v["validation"][m]["value"] for m in ("auroc", "utility")} for k, v in res.candidates.items()
                },
            },
            indent=2,
        )
    )


@app.command("card")
def card_cmd(model: Path = typer.Option(None, "--model", help="Model package folder.")) -> None:
    """Print a package's readable model card."""
    from vigil_scoring.model_package import ModelPackage, default_package_path

    pkg = ModelPackage.load(model or default_package_path())
    typer.echo((pkg.path / "card.md").read_text())
