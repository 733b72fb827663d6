"""Proxy-site study on set A for `vigil model adapt` (figures in docs/model.md).

A proxy for a new hospital inside set A: the base model is trained on the stays of the surgical ICU and of
unrecorded units (Unit1 != 1), the "site" is the medical ICU (Unit1 == 1). The site's stays are ordered by stay
id (later patients) and split into an adaptation part (earlier 60%) and an evaluation part (later 40%) that
adaptation never sees. Reported: AUROC and normalised utility with bootstrap CIs on the evaluation stays for
the base model, the adapted package and, for scale, the naive recipes (local-only, unweighted pooling).

Run: OMP_NUM_THREADS=2 uv run python scripts/site_study.py --out .vigil/site-study [--base-stays N --iters N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vigil_ml import data
from vigil_ml.adapt import AdaptConfig, adapt, base_training_rows
from vigil_ml.metrics import Cohort, choose_threshold, evaluate_score
from vigil_ml.train import TrainConfig, build_hgb, train
from vigil_scoring.features import offline_features
from vigil_scoring.model_package import ModelPackage


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(".vigil/site-study"))
    ap.add_argument("--base-stays", type=int, default=None, help="Seeded subset of the base site's stays.")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--naive", action="store_true", help="Also fit the naive recipes (two more fits).")
    a = ap.parse_args()
    t0 = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)
    df = data.load(data.SHARED_SET_A)
    unit1 = df.groupby("patient_id")["Unit1"].max() == 1
    site_ids = sorted(unit1.index[unit1])
    base_ids = np.array(sorted(unit1.index[~unit1]))
    if a.base_stays:
        base_ids = np.random.default_rng(7).choice(base_ids, a.base_stays, replace=False)
    n_adapt = round(len(site_ids) * 0.6)
    adapt_ids, eval_ids = site_ids[:n_adapt], site_ids[n_adapt:]
    base_path = a.out / "base.parquet"
    df[df["patient_id"].isin(base_ids)].to_parquet(base_path, index=False)
    print(f"base {len(base_ids)} stays; site {len(adapt_ids)} adapt + {len(eval_ids)} evaluation", flush=True)

    cfg = TrainConfig(name="proxy-base", version="1", hold_out_sample=False, n_boot=50)
    cfg.hgb["max_iter"] = a.iters
    if not (a.out / "base" / "package" / "manifest.json").exists():
        train(base_path, a.out / "base", cfg)
    print(f"[{time.monotonic() - t0:.0f}s] base trained", flush=True)
    base = ModelPackage.load(a.out / "base" / "package")

    local = df[df["patient_id"].isin(adapt_ids)].reset_index(drop=True)
    acfg = AdaptConfig(name="proxy-adapted", version="1", n_boot=a.n_boot)
    acfg.hgb["max_iter"] = a.iters
    res = adapt(base.path, local, a.out / "adapted", base_data=base_path, config=acfg, progress=print)
    adapted = ModelPackage.load(res.package_dir)

    ev = df[df["patient_id"].isin(eval_ids)].reset_index(drop=True)
    assert not (set(eval_ids) & (res.fit_ids | res.selection_ids)), "evaluation stays reached adaptation"
    X_ev = offline_features(ev).to_numpy(dtype=np.float32)
    cohort = Cohort.from_frame(ev)
    results: dict[str, object] = {
        "design": {
            "base_site_stays": len(base_ids),
            "local_adapt_stays": len(adapt_ids),
            "local_eval_stays": len(eval_ids),
            "local_eval_septic": int(cohort.septic.sum()),
            "iters": a.iters,
            "chosen": res.chosen,
            "validation": res.candidates,
        }
    }
    figs = {
        "base": evaluate_score(cohort, base.predict(X_ev), base.operating_threshold, n_boot=a.n_boot, seed=1),
        "adapted": evaluate_score(cohort, adapted.predict(X_ev), adapted.operating_threshold, n_boot=a.n_boot, seed=1),
    }
    if a.naive:
        # The naive recipes, thresholds chosen on their own fitting stays' latest quarter as adapt does.
        X_l = offline_features(local).to_numpy(dtype=np.float32)
        y_l = local["SepsisLabel"].to_numpy().astype(int)
        fit = local["patient_id"].isin(res.fit_ids).to_numpy()
        sel = ~fit
        sel_c = Cohort.from_frame(local.loc[sel].reset_index(drop=True))
        brows = base_training_rows(base, base_path)
        Xb = offline_features(brows).to_numpy(dtype=np.float32)
        yb = brows["SepsisLabel"].to_numpy().astype(int)
        for name, (Xf, yf) in {
            "naive_local_only": (X_l[fit], y_l[fit]),
            "naive_pooled": (np.vstack([Xb, X_l[fit]]), np.r_[yb, y_l[fit]]),
        }.items():
            m = build_hgb(7, acfg.hgb).fit(Xf, yf)
            thr, _ = choose_threshold(sel_c, m.predict_proba(X_l[sel])[:, 1])
            figs[name] = evaluate_score(cohort, m.predict_proba(X_ev)[:, 1], thr, n_boot=a.n_boot, seed=1)
            print(f"[{time.monotonic() - t0:.0f}s] {name} done", flush=True)
    results["evaluation"] = {
        k: {m: v[m] for m in ("auroc", "auprc", "utility", "sensitivity", "ppv", "threshold")} for k, v in figs.items()
    }
    (a.out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    for k, v in figs.items():
        print(k, "AUROC", v["auroc"], "utility", v["utility"], flush=True)
    print(f"done in {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()
