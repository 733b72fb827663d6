"""Drift detectors on real data: false alarms on set A split in two, detection delays of injected drifts, speed.

Run: ``.venv/bin/python bench/bench_drift.py [--splits 3] [--quick]`` (needs /work/shared/data; ~2-4 minutes).

1. Set A split by patient into two halves (same hospital, same period), several random splits: the first half
   is the reference, the second is streamed through the core. Every alert opened is a false alarm.
2. Injected drifts in the second half from the middle of its synthetic timeline on: temperature sent in degF as
   if Celsius; lactate no longer ordered; heart rate +10%; labels flipped for women (so AUROC falls); the
   scorer's latency degraded. The detection delay is the time from the injection to the alert opening.
3. Time to check one half (~400k rows) against the other: what ``vigil drift check`` costs.

Scores come from a small HistGradientBoosting model fitted here on the reference half (forward-filled values),
with its threshold at the reference's 95th percentile of scores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vigil_drift.check import HOUR, on_timeline, run_check
from vigil_drift.config import Thresholds

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "physionet2019_setA.parquet"
FEATURES = [
    "HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "BaseExcess", "HCO3", "FiO2", "pH", "PaCO2", "SaO2", "AST",
    "BUN", "Alkalinephos", "Calcium", "Chloride", "Creatinine", "Bilirubin_direct", "Glucose", "Lactate",
    "Magnesium", "Phosphate", "Potassium", "Bilirubin_total", "TroponinI", "Hct", "Hgb", "PTT", "WBC",
    "Fibrinogen", "Platelets", "Age", "Gender", "HospAdmTime", "ICULOS",
]  # fmt: skip


def split(df: pd.DataFrame, seed: int, share: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = np.array(pd.unique(df["patient_id"]))
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    first = set(ids[: int(len(ids) * share)].tolist())
    mask = df["patient_id"].isin(first).to_numpy()
    return df[mask].reset_index(drop=True), df[~mask].reset_index(drop=True)


def add_scores(train: pd.DataFrame, ref: pd.DataFrame, cur: pd.DataFrame) -> float:
    """Fit a small model on train (forward-filled), score ref and cur (held out); threshold = ref's 95th pct."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    def x(df: pd.DataFrame) -> np.ndarray:
        return df.groupby("patient_id", sort=False)[FEATURES].ffill().to_numpy(dtype=np.float32)

    clf = HistGradientBoostingClassifier(max_iter=80, max_depth=4, early_stopping=False, random_state=0)
    clf.fit(x(train), train["SepsisLabel"].to_numpy())
    ref["score"] = clf.predict_proba(x(ref))[:, 1]
    cur["score"] = clf.predict_proba(x(cur))[:, 1]
    rng = np.random.default_rng(0)
    for df in (ref, cur):
        df["latency_ms"] = rng.lognormal(np.log(40), 0.6, len(df))
    return float(np.quantile(ref["score"], 0.95))


def first_open(alerts: list, key: str, after: float) -> float | None:
    for a in sorted(alerts, key=lambda a: a.occurred_at):
        if a.alert_key == key and a.state == "open" and a.occurred_at.timestamp() >= after:
            return a.occurred_at.timestamp()
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one split, no model")
    args = parser.parse_args()
    df = pd.read_parquet(DATA)
    # a model trained on 30% of the stays; reference and current halves come from the other 70% (a reference's
    # score baseline must be computed on held-out rows, as a model package's validation set would be)
    train, df = split(df, 99, share=0.3)
    report: dict = {"false_alarms": [], "injections": {}}
    th = Thresholds()

    # 1. same hospital, two halves
    for seed in range(1 if args.quick else args.splits):
        ref, cur = split(df, seed)
        thr = None if args.quick else add_scores(train, ref, cur)
        t0 = time.perf_counter()
        res = run_check(ref, cur, score_column=None if args.quick else "score", threshold=thr, model_name="m")
        secs = time.perf_counter() - t0
        assert res.core is not None
        conds = res.core.book.conditions
        evaluations = sum(c.evaluations for c in conds.values())
        worst = {k: round(c.worst, 4) for k, c in conds.items() if c.worst is not None}

        def top(prefix: str, worst: dict = worst) -> list:
            return sorted(((v, k) for k, v in worst.items() if k.startswith(prefix)), reverse=True)[:3]

        entry = {
            "seed": seed,
            "rows": res.rows,
            "timeline_hours": round((res.end - res.start) / HOUR),
            "seconds": round(secs, 1),
            "rows_per_second": round(res.rows / secs),
            "alerts_opened": [a.alert_key for a in res.alerts if a.state == "open"],
            "evaluations": evaluations,
            "conditions": len(conds),
            "worst_psi": top("data_drift:inputs:")[:3],
            "worst_missingness": top("missingness:"),
            "worst_prediction_shift": top("prediction_drift:"),
            "worst_disparity": top("fairness:"),
            "worst_ece": top("calibration:"),
            "min_auroc": min((v for k, v in worst.items() if k.endswith(":auroc")), default=None),
            "snapshot_performance": res.core.snapshot()["performance"],
        }
        report["false_alarms"].append(entry)
        print(json.dumps(entry), flush=True)

    # 2. injected drifts on split 0, from the middle of the current half's timeline
    ref, cur = split(df, 0)
    thr = None if args.quick else add_scores(train, ref, cur)
    timed = on_timeline(cur)
    t_inj = float(timed["t"].quantile(0.5))
    late = timed["t"].to_numpy() >= t_inj

    def inject(name: str, change, key: str, scored: bool = False) -> None:  # type: ignore[no-untyped-def]
        d = timed.copy()
        change(d, late)
        res = run_check(
            ref,
            d.drop(columns=["t", "stay_end"]),
            score_column="score" if scored else None,
            threshold=thr,
            model_name="m",
        )
        hit = first_open(res.alerts, key, t_inj)
        false_before = [a.alert_key for a in res.alerts if a.state == "open" and a.occurred_at.timestamp() < t_inj]
        other = sorted({a.alert_key for a in res.alerts if a.state == "open" and a.occurred_at.timestamp() >= t_inj})
        rows_after = int(((d["t"] >= t_inj) & (d["t"] <= (hit or 0))).sum()) if hit else None
        delays = {}
        for a in sorted(res.alerts, key=lambda a: a.occurred_at):
            if a.state == "open" and a.occurred_at.timestamp() >= t_inj and a.alert_key not in delays:
                delays[a.alert_key] = round((a.occurred_at.timestamp() - t_inj) / HOUR, 1)
        entry = {
            "alert_key": key,
            "delays_hours_by_alert": delays,
            "detected": hit is not None,
            "delay_hours": round((hit - t_inj) / HOUR, 1) if hit else None,
            "stay_hours_until_detection": rows_after,
            "alerts_before_injection": false_before,
            "alerts_after_injection": other,
        }
        report["injections"][name] = entry
        print(name, json.dumps(entry), flush=True)

    def temp_f(d: pd.DataFrame, m: np.ndarray) -> None:
        d.loc[m, "Temp"] = d.loc[m, "Temp"] * 9 / 5 + 32

    def lactate_gone(d: pd.DataFrame, m: np.ndarray) -> None:
        d.loc[m, "Lactate"] = np.nan

    def hr_up(d: pd.DataFrame, m: np.ndarray) -> None:
        d.loc[m, "HR"] = d.loc[m, "HR"] * 1.10

    def flip_women(d: pd.DataFrame, m: np.ndarray) -> None:
        w = m & (d["Gender"].to_numpy() == 0)
        d.loc[w, "SepsisLabel"] = 1 - d.loc[w, "SepsisLabel"]

    def slow(d: pd.DataFrame, m: np.ndarray) -> None:
        d.loc[m, "latency_ms"] = d.loc[m, "latency_ms"] * 12

    inject("temperature_in_degF", temp_f, "data_drift:inputs:temperature")
    inject("lactate_no_longer_ordered", lactate_gone, "missingness:inputs:lactate")
    inject("heart_rate_plus_10pct", hr_up, "data_drift:inputs:heart_rate")
    if not args.quick:
        inject("labels_flipped_for_women_auroc", flip_women, "performance:m:auroc", scored=True)
        inject("latency_x12", slow, "latency:m:latency_p99_ms", scored=True)
    print(json.dumps(report["injections"], indent=1))
    n_alarms = sum(len(e["alerts_opened"]) for e in report["false_alarms"])
    n_eval = sum(e["evaluations"] for e in report["false_alarms"])
    hours = sum(e["timeline_hours"] for e in report["false_alarms"])
    print(
        f"FALSE ALARMS: {n_alarms} alerts opened over {len(report['false_alarms'])} same-hospital splits "
        f"({n_eval} evaluations, {hours} timeline hours): {n_alarms / max(n_eval, 1):.2e} per evaluation"
    )
    print(f"TH defaults: psi={th.psi} missing_change={th.missing_change}")


if __name__ == "__main__":
    main()
