"""Feature-group transfer study between set A's ICU units (issue 16 item 4; figures in docs/model.md).

A proxy for a new hospital inside set A: train on one ICU unit (medical, ``Unit1 == 1``, or surgical,
``Unit2 == 1``) and test on the other, both ways. Stays with no recorded unit take no part; the bundled sample's
300 stays are dropped, as training does. Each configuration masks feature groups
(:data:`vigil_scoring.features.FEATURE_GROUPS`) by setting their columns to one constant for the fit, so the trees never
split on them (the same masking ``vigil model train --drop-feature-groups`` uses), and may change the boosting's
regularisation. For each direction the training unit is split by patient (seeded, stratified; 70% fit, 15%
threshold, 15% in-unit test): the threshold is the robust-utility one chosen on the 15% threshold part, exactly as
training chooses it. Reported, with stay-bootstrap 95% CIs: AUROC and normalised utility on every stay of the
other unit (cross-unit) and on the in-unit test part, and the paired gain over the ``all`` configuration on the
cross-unit stays (same stays resampled for both).

Bounded for a shared 2-core machine (measured: the first run got about a tenth of a core): ``--iters`` boosting
iterations (default 60 at learning rate 0.15, instead of the default model's 300 at 0.05), ``--max-fit-rows``
seeded row subsample of the fit part (default 40,000 of about 140,000 hours), ``--n-boot`` resamples (50). The
features are cached in ``OUT/features.npy`` and finished configurations in ``OUT/results.json`` (a rerun resumes).
Everything is seeded; the same arguments give the same figures.

Run: nice -n 10 env OMP_NUM_THREADS=2 uv run python scripts/transfer_study.py --out .vigil/transfer-study
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vigil_ml import data
from vigil_ml.metrics import Cohort, choose_threshold, evaluate_score, paired_gain
from vigil_ml.train import HGB_DEFAULT, MASK_VALUE, build_hgb
from vigil_scoring.features import FEATURE_COLUMNS, FEATURE_GROUPS, group_columns, offline_features

UNITS = {"micu": "Unit1", "sicu": "Unit2"}
DIRECTIONS = {
    "both": (("micu", "sicu"), ("sicu", "micu")),
    "micu-sicu": (("micu", "sicu"),),
    "sicu-micu": (("sicu", "micu"),),
}
REGULARISED = {"min_samples_leaf": 1000, "l2_regularization": 10.0}
"""Stronger regularisation than the default (200, 1.0): leaves need five times more rows, and a larger L2."""


def configurations() -> dict[str, dict[str, Any]]:
    """Name -> masked groups and hyperparameter overrides. ``all`` is today's default recipe (bounded)."""
    # In order of interest (a bounded run may stop early): the suspects first.
    configs: dict[str, dict[str, Any]] = {"all": {"drop": (), "hgb": {}}}
    configs["-measurement"] = {"drop": ("measurement",), "hgb": {}}
    configs["-measurement, regularised"] = {"drop": ("measurement",), "hgb": REGULARISED}
    for g in ("lab_last", "vital_window", "context", "derived", "vital_last"):
        configs[f"-{g}"] = {"drop": (g,), "hgb": {}}
    configs["all, regularised"] = {"drop": (), "hgb": REGULARISED}
    configs["-measurement -context"] = {"drop": ("measurement", "context"), "hgb": {}}
    configs["-measurement -vital_window"] = {"drop": ("measurement", "vital_window"), "hgb": {}}
    return configs


def _brief(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("auroc", "utility", "threshold")}


def _fmt(m: dict[str, Any]) -> str:
    ci = m["ci"]
    return f"{m['value']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{m['value']:.3f}"


def _gain(g: dict[str, Any] | None, k: str) -> str:
    if not g:
        return ""
    ci = g[k]["ci"]
    return f"{g[k]['gain']:+.3f} ({ci[0]:+.3f} to {ci[1]:+.3f})" if ci else f"{g[k]['gain']:+.3f}"


def markdown(results: dict[str, Any]) -> str:
    """The results as the table of docs/model.md (one row per configuration and direction)."""
    lines = [
        "| direction | configuration | cross-unit AUROC | cross-unit utility | gain over `all` (AUROC / utility, "
        "paired) | in-unit AUROC | in-unit utility |",
        "|---|---|---|---|---|---|---|",
    ]
    for direction in ("micu->sicu", "sicu->micu"):
        for name, e in results.get(direction, {}).items():
            g = e.get("cross_unit_gain_over_all")
            lines.append(
                f"| {direction} | {name} | {_fmt(e['cross_unit']['auroc'])} | {_fmt(e['cross_unit']['utility'])} | "
                f"{_gain(g, 'auroc')} / {_gain(g, 'utility')} | {_fmt(e['in_unit']['auroc'])} | "
                f"{_fmt(e['in_unit']['utility'])} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(".vigil/transfer-study"))
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--learning-rate", type=float, default=0.15)
    ap.add_argument("--max-fit-rows", type=int, default=40_000)
    ap.add_argument("--n-boot", type=int, default=50)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", nargs="*", default=None, help="Run only these configurations (names as reported).")
    ap.add_argument("--direction", choices=sorted(DIRECTIONS), default="both")
    ap.add_argument("--table", action="store_true", help="Print OUT/results.json as a markdown table and stop.")
    a = ap.parse_args()
    if a.table:
        print(markdown(json.loads((a.out / "results.json").read_text())))
        return
    t0 = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)
    results_path = a.out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}

    df = data.load(data.SHARED_SET_A)
    if data.SAMPLE_PATH.exists():
        sample_ids = pd.read_parquet(data.SAMPLE_PATH, columns=["patient_id"])["patient_id"].astype(str).unique()
        df = df.loc[~df["patient_id"].isin(sample_ids)].reset_index(drop=True)
    unit_ids = {u: df.loc[df[col] == 1, "patient_id"].unique() for u, col in UNITS.items()}
    # Only the two units' stays take part (features are per stay, so leaving the others out changes nothing).
    df = df.loc[df["patient_id"].isin(np.concatenate(list(unit_ids.values())))].reset_index(drop=True)
    cache = a.out / "features.npy"
    if cache.exists():
        X = np.load(cache)
        assert X.shape == (len(df), len(FEATURE_COLUMNS)), "stale feature cache"
    else:
        X = offline_features(df).to_numpy(dtype=np.float32)
        np.save(cache, X)
    print(f"[{time.monotonic() - t0:.0f}s] features {X.shape}", flush=True)
    # pandas' hash-based isin: numpy's isin on string ids compares every row with every id (minutes here).
    pid_s = df["patient_id"]
    assert not set(unit_ids["micu"]) & set(unit_ids["sicu"]), "a stay in both units"
    col_index = {c: i for i, c in enumerate(FEATURE_COLUMNS)}
    configs = configurations()
    if a.only:
        configs = {k: v for k, v in configs.items() if k in a.only}

    results["design"] = {
        "units": {
            u: {
                "stays": len(ids),
                "septic": int(df.loc[pid_s.isin(ids).to_numpy()].groupby("patient_id")["SepsisLabel"].max().sum()),
            }
            for u, ids in unit_ids.items()
        },
        "iters": a.iters,
        "learning_rate": a.learning_rate,
        "max_fit_rows": a.max_fit_rows,
        "n_boot": a.n_boot,
        "seed": a.seed,
        "regularised": REGULARISED,
        "groups": {g: len(c) for g, c in FEATURE_GROUPS.items()},
    }
    for src, dst in DIRECTIONS[a.direction]:
        direction = f"{src}->{dst}"
        results.setdefault(direction, {})
        src_df = df.loc[pid_s.isin(unit_ids[src]).to_numpy()]
        split = data.split_patients(src_df, seed=a.seed)
        parts = {k: np.flatnonzero(pid_s.isin(getattr(split, k)).to_numpy()) for k in ("train", "valid", "test")}
        fit_rows = parts["train"]
        if len(fit_rows) > a.max_fit_rows:
            fit_rows = np.sort(np.random.default_rng(a.seed).choice(fit_rows, a.max_fit_rows, replace=False))
        other = np.flatnonzero(pid_s.isin(unit_ids[dst]).to_numpy())
        cohorts = {
            "valid": Cohort.from_frame(df.iloc[parts["valid"]]),
            "in_unit": Cohort.from_frame(df.iloc[parts["test"]]),
            "cross_unit": Cohort.from_frame(df.iloc[other]),
        }
        rows = {"valid": parts["valid"], "in_unit": parts["test"], "cross_unit": other}
        y = df["SepsisLabel"].to_numpy().astype(int)
        ref_risk: dict[str, Any] | None = None
        for name, conf in configs.items():
            if name in results[direction] and name != "all":
                print(f"{direction} {name}: kept from {results_path}", flush=True)
                continue
            t1 = time.monotonic()
            masked = [col_index[c] for c in group_columns(list(conf["drop"]))]
            Xf = X[fit_rows].copy()
            Xf[:, masked] = MASK_VALUE
            hgb = build_hgb(
                a.seed, {**HGB_DEFAULT, "max_iter": a.iters, "learning_rate": a.learning_rate, **conf["hgb"]}
            )
            hgb.fit(Xf, y[fit_rows])
            # The unmasked rows are scored as serving would score them: masked columns must not matter.
            risk = {k: hgb.predict_proba(X[r])[:, 1] for k, r in rows.items()}
            if masked:
                Xv = X[rows["valid"]].copy()
                Xv[:, masked] = np.nan  # what the model sees instead must not matter
                assert np.array_equal(hgb.predict_proba(Xv)[:, 1], risk["valid"]), "a masked column was used"
            thr, _ = choose_threshold(cohorts["valid"], risk["valid"], robust=True)
            entry: dict[str, Any] = {"masked_columns": len(masked), "hgb": conf["hgb"]}
            for k in ("in_unit", "cross_unit"):
                entry[k] = _brief(evaluate_score(cohorts[k], risk[k], thr, n_boot=a.n_boot, seed=1))
            if name == "all":
                ref_risk = {"risk": risk["cross_unit"], "thr": thr}
            elif ref_risk is not None:
                entry["cross_unit_gain_over_all"] = paired_gain(
                    cohorts["cross_unit"],
                    risk["cross_unit"],
                    thr,
                    ref_risk["risk"],
                    ref_risk["thr"],
                    n_boot=a.n_boot,
                    seed=1,
                )
            entry["seconds"] = round(time.monotonic() - t1, 1)
            results[direction][name] = entry
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            c, i = entry["cross_unit"], entry["in_unit"]
            print(
                f"[{time.monotonic() - t0:.0f}s] {direction} {name:30s} cross AUROC {c['auroc']['value']:.3f} "
                f"U {c['utility']['value']:.3f} | in-unit AUROC {i['auroc']['value']:.3f} "
                f"U {i['utility']['value']:.3f} ({entry['seconds']}s)",
                flush=True,
            )
    print(f"done in {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()
