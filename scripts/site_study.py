"""Proxy-site study on set A for `vigil model adapt` (figures in docs/model.md).

A proxy for a new hospital inside set A: one ICU unit is the "site" (``--site micu``: Unit1 == 1, the medical
ICU; ``--site sicu``: Unit2 == 1, the surgical ICU), the base model is trained by `vigil model train` (full size,
the default's hyperparameters) on every other stay of set A. The site's stays are ordered by stay id (later
patients) and split into an adaptation part (earlier 60%) and an evaluation part (later 40%) that adaptation never
sees. Reported on the evaluation stays, with stay-bootstrap CIs: the base model, the adapted package, and every
candidate adapt built (each at the threshold adapt chose for it on its selection stays), among them the naive
recipes run through the training code itself (`vigil_ml.train.train` on the base stays plus every adaptation
stay, and on the adaptation stays alone, each with its own validation split and threshold, as issue 16's naive
figures were made); and the adapted package's paired gain over the base model and over the better naive recipe.
``--base-unit`` trains the base on one other ICU unit only (a base that has seen one unit's habits).

The base, the pooled fit (which takes its base's recipe) and the naive recipes use the default model's
recipe (v4: ``--min-samples-leaf 1000 --l2-regularization 10``); ``--min-samples-leaf 200 --l2-regularization 1``
gives v1's.

Run: OMP_NUM_THREADS=2 uv run python scripts/site_study.py --site micu --out .vigil/site-study-micu
     OMP_NUM_THREADS=2 uv run python scripts/site_study.py --site sicu --base-unit micu --out .vigil/site-study-s-m
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vigil_ml import data
from vigil_ml.adapt import AdaptConfig, adapt
from vigil_ml.metrics import Cohort, evaluate_score, paired_gain
from vigil_ml.onnx_export import onnx_proba
from vigil_ml.train import TrainConfig, train
from vigil_scoring.features import offline_features
from vigil_scoring.model_package import ModelPackage

SITES = {"micu": "Unit1", "sicu": "Unit2"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--site", choices=sorted(SITES), default="micu")
    ap.add_argument("--out", type=Path, default=Path(".vigil/site-study"))
    ap.add_argument("--base-stays", type=int, default=None, help="Seeded subset of the base site's stays.")
    ap.add_argument("--base-unit", choices=sorted(SITES), default=None, help="Base on this unit's stays only.")
    ap.add_argument("--no-naive", action="store_true", help="Skip the two naive training runs.")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--min-samples-leaf", type=int, default=1000, help="Base, pooled and naive fits (v4's recipe).")
    ap.add_argument("--l2-regularization", type=float, default=10.0, help="Base, pooled and naive fits (v4's recipe).")
    a = ap.parse_args()
    t0 = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)
    df = data.load(data.SHARED_SET_A)
    in_site = df.groupby("patient_id")[SITES[a.site]].max() == 1
    site_ids = sorted(in_site.index[in_site])
    base_ids = np.array(sorted(in_site.index[~in_site]))
    if a.base_unit:
        if a.base_unit == a.site:
            raise SystemExit("--base-unit must differ from --site")
        in_unit = df.groupby("patient_id")[SITES[a.base_unit]].max() == 1
        base_ids = np.array(sorted(set(base_ids) & set(in_unit.index[in_unit])))
    if a.base_stays:
        base_ids = np.random.default_rng(7).choice(base_ids, a.base_stays, replace=False)
    n_adapt = round(len(site_ids) * 0.6)
    adapt_ids, eval_ids = site_ids[:n_adapt], site_ids[n_adapt:]
    base_path = a.out / "base.parquet"
    df[df["patient_id"].isin(base_ids)].to_parquet(base_path, index=False)
    print(f"base {len(base_ids)} stays; site {len(adapt_ids)} adapt + {len(eval_ids)} evaluation", flush=True)

    # The default model's recipe (v4: leaves of at least 1,000 hours, L2 10) unless told otherwise.
    recipe = {"max_iter": a.iters, "min_samples_leaf": a.min_samples_leaf, "l2_regularization": a.l2_regularization}
    cfg = TrainConfig(name="proxy-base", version="1", hold_out_sample=False, n_boot=50)
    cfg.hgb.update(recipe)
    if not (a.out / "base" / "package" / "manifest.json").exists():
        train(base_path, a.out / "base", cfg)
    print(f"[{time.monotonic() - t0:.0f}s] base trained", flush=True)
    base = ModelPackage.load(a.out / "base" / "package")

    local = df[df["patient_id"].isin(adapt_ids)].reset_index(drop=True)
    acfg = AdaptConfig(name="proxy-adapted", version="1", n_boot=a.n_boot)
    acfg.hgb["max_iter"] = a.iters
    # The pooled fit takes the base's recipe from its card (as the naive runs and the base itself: --iters); the
    # local model's early stopping cap scales with --iters so that bounded runs stay bounded.
    acfg.local_max_iter = min(acfg.local_max_iter, 2 * a.iters)
    t_adapt = time.monotonic()
    res = adapt(base.path, local, a.out / "adapted", base_data=base_path, config=acfg, progress=print)
    t_adapt = time.monotonic() - t_adapt
    adapted = ModelPackage.load(res.package_dir)

    ev = df[df["patient_id"].isin(eval_ids)].reset_index(drop=True)
    assert not (set(eval_ids) & (res.fit_ids | res.selection_ids)), "evaluation stays reached adaptation"
    X_ev = offline_features(ev).to_numpy(dtype=np.float32)
    cohort = Cohort.from_frame(ev)
    base_risk = base.predict(X_ev).astype(np.float64)
    adapted_risk = adapted.predict(X_ev).astype(np.float64)
    figs = {
        "base": evaluate_score(cohort, base_risk, base.operating_threshold, n_boot=a.n_boot, seed=1),
        f"adapted ({res.chosen})": evaluate_score(
            cohort, adapted_risk, adapted.operating_threshold, n_boot=a.n_boot, seed=1
        ),
    }
    cand_gain: dict[str, object] = {}
    for name, onx in res.onnx.items():
        thr = res.candidates[name]["threshold"]
        risk_c = onnx_proba(onx, X_ev)
        figs[f"candidate {name}"] = evaluate_score(cohort, risk_c, thr, n_boot=a.n_boot, seed=1)
        cand_gain[name] = paired_gain(cohort, risk_c, thr, base_risk, base.operating_threshold, n_boot=a.n_boot, seed=1)
    gain = paired_gain(
        cohort, adapted_risk, adapted.operating_threshold, base_risk, base.operating_threshold, n_boot=a.n_boot, seed=1
    )
    naive_gain: dict[str, object] = {}

    def save(stage: str) -> None:
        results = {
            "stage": stage,
            "design": {
                "site": a.site,
                "base_unit": a.base_unit or "every stay outside the site",
                "base_site_stays": len(base_ids),
                "local_adapt_stays": len(adapt_ids),
                "local_eval_stays": len(eval_ids),
                "local_eval_septic": int(cohort.septic.sum()),
                "iters": a.iters,
                "adapt_seconds": round(t_adapt),
                "chosen": res.chosen,
                "pick_trail": adapted.card["validation"].get("pick_trail"),
                "notes": res.notes,
                "validation": res.candidates,
            },
            "evaluation": {
                k: {m: v[m] for m in ("auroc", "auprc", "utility", "sensitivity", "ppv", "threshold")}
                for k, v in figs.items()
            },
            "adapted_gain_over_base_on_evaluation": gain,
            "candidates_gain_over_base_on_evaluation": cand_gain,
            "adapted_gain_over_naive_on_evaluation": naive_gain,
        }
        (a.out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")

    # Saved after each stage: on a busy machine a run may be stopped before the naive recipes finish.
    save("base and adapted evaluated")
    for k, v in figs.items():
        print(f"{k:32s} AUROC {v['auroc']} utility {v['utility']}", flush=True)
    print("adapted - base (paired):", json.dumps(gain), flush=True)
    if not a.no_naive:
        # The naive recipes as a site would run them: the training code itself on the pooled rows and on the local
        # rows alone (every adaptation stay; its own 70/15/15 split and validation threshold).
        site_adapt = df[df["patient_id"].isin(adapt_ids)]
        runs = {
            "naive: local only (vigil model train)": site_adapt,
            "naive: pooled, unweighted (vigil model train)": pd.concat(
                [df[df["patient_id"].isin(base_ids)], site_adapt], ignore_index=True
            ),
        }
        for label, frame in runs.items():
            slug = "naive-local" if "local" in label else "naive-pooled"
            frame.to_parquet(a.out / f"{slug}.parquet", index=False)
            ncfg = TrainConfig(name=slug, version="1", hold_out_sample=False, n_boot=20)
            ncfg.hgb.update(recipe)
            print(f"[{time.monotonic() - t0:.0f}s] training {label}", flush=True)
            if not (a.out / slug / "package" / "manifest.json").exists():
                train(a.out / f"{slug}.parquet", a.out / slug, ncfg)
            pkg = ModelPackage.load(a.out / slug / "package")
            risk = pkg.predict(X_ev).astype(np.float64)
            figs[label] = evaluate_score(cohort, risk, pkg.operating_threshold, n_boot=a.n_boot, seed=1)
            naive_gain[label] = paired_gain(
                cohort,
                adapted_risk,
                adapted.operating_threshold,
                risk,
                pkg.operating_threshold,
                n_boot=a.n_boot,
                seed=1,
            )
            save(f"{slug} evaluated")
    save("done")
    for k, v in figs.items():
        print(f"{k:32s} AUROC {v['auroc']} utility {v['utility']}", flush=True)
    print("adapted - base (paired):", json.dumps(gain), flush=True)
    for label, g in naive_gain.items():
        print(f"adapted - {label} (paired):", json.dumps(g), flush=True)
    print(f"done in {time.monotonic() - t0:.0f}s (adapt {t_adapt:.0f}s)")


if __name__ == "__main__":
    main()
