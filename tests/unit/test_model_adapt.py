"""Adaptation never fits on a stay it validates on; its package carries the lineage and the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from vigil_ml import adapt as adapt_mod
from vigil_ml.adapt import AdaptConfig, LeakError, adapt, temporal_split
from vigil_ml.data import SAMPLE_PATH
from vigil_scoring.model_package import ModelPackage, default_package_path


def small_config() -> AdaptConfig:
    cfg = AdaptConfig(name="sepsis", version="site-1", min_local_septic=10, min_stacked_septic=5, n_boot=20)
    cfg.local_hgb.update(max_iter=10)
    cfg.hgb.update(max_iter=10)
    cfg.pooled_hgb = {**adapt_mod.HGB_DEFAULT, "max_iter": 10}
    cfg.local_max_iter = 10
    cfg.n_iter_no_change = 3
    return cfg


def test_candidates_are_fitted_on_earlier_stays_only_and_picked_on_the_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = pd.read_parquet(SAMPLE_PATH)
    # Admission times that run against the stay ids, so the split must follow time, not id order.
    ids = sorted(local["patient_id"].unique())
    admitted = {
        pid: pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(hours=len(ids) - i) for i, pid in enumerate(ids)
    }
    local["icu_admitted_at"] = local["patient_id"].map(admitted)
    seen: list[set[str]] = []
    real_fit = adapt_mod._fit

    def spy(
        model: Any, X: np.ndarray, y: np.ndarray, *, ids: np.ndarray, held: set[str], w: Any = None, val: Any = None
    ) -> Any:
        # The rows fitted on and the rows early stopping watches: both choose the model, neither may be held out.
        seen.append(set(map(str, ids)) | (set() if val is None else set(map(str, val[2]))))
        return real_fit(model, X, y, ids=ids, held=held, w=w, val=val)

    monkeypatch.setattr(adapt_mod, "_fit", spy)
    manifest = tmp_path / "dataset" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"content_sha256": "ab" * 32, "window": {"from": None, "to": None}}))
    res = adapt(default_package_path(), local, tmp_path / "run", config=small_config(), manifest_path=manifest)

    latest = set(ids[: len(res.selection_ids)])  # the lowest ids were admitted last
    assert res.selection_ids == latest
    assert seen, "no candidate was fitted"
    for fitted in seen:
        assert fitted <= res.fit_ids and not fitted & res.selection_ids
    assert {"recalibrated", "stacked", "local", "ensemble"} <= set(res.candidates)
    for name, ids_fitted in res.fitted_ids.items():
        assert not ids_fitted & res.selection_ids, name
    # Without the base model's training data adapt still works, says so, and builds no pooled candidate.
    assert not any(n.startswith("pooled") for n in res.candidates)
    assert any("training data was not available" in n for n in res.notes)

    pkg = ModelPackage.load(res.package_dir)
    card = pkg.card
    assert card["lineage"]["base"]["sha256"] == ModelPackage.load(default_package_path()).sha256
    assert card["lineage"]["dataset"]["content_sha256"] == "ab" * 32
    assert len(card["lineage"]["dataset"]["manifest_sha256"]) == 64
    assert card["local_data"]["selection"]["stays"] == len(res.selection_ids)
    assert card["validation"]["base"]["auroc"]["ci"] is not None
    assert card["validation"]["chosen"] == res.chosen
    # The package scores what its card says: the chosen candidate's validation threshold is the operating one.
    assert pkg.operating_threshold == pytest.approx(res.candidates[res.chosen]["threshold"])
    for pid in ids:
        assert pid not in (res.package_dir / "card.json").read_text()


def test_a_fit_on_a_held_out_stay_is_refused() -> None:
    from vigil_ml.train import build_hgb

    X = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(LeakError):
        adapt_mod._fit(
            build_hgb(0, {"max_iter": 1}), X, np.array([0, 1, 0, 1]), ids=np.array(["a", "a", "b", "b"]), held={"b"}
        )


def test_the_split_holds_out_the_latest_stays_by_admission_or_by_id() -> None:
    df = pd.DataFrame({"patient_id": ["p3", "p1", "p2", "p4"], "hour": 0})
    fit, sel = temporal_split(df, 0.25)
    assert sel == {"p4"} and fit == {"p1", "p2", "p3"}
    df["icu_admitted_at"] = pd.to_datetime(["2026-01-04", "2026-01-03", "2026-01-02", "2026-01-01"], utc=True)
    fit, sel = temporal_split(df, 0.25)
    assert sel == {"p3"}


def _cohort(n_stays: int, septic_every: int = 4) -> Any:
    from vigil_ml.metrics import Cohort

    rows = []
    for i in range(n_stays):
        septic = i % septic_every == 0
        for h in range(20):
            rows.append({"patient_id": f"s{i:04d}", "hour": h, "SepsisLabel": int(septic and h >= 12)})
    return Cohort.from_frame(pd.DataFrame(rows))


def test_the_paired_gain_of_a_score_over_itself_is_zero_and_never_significant() -> None:
    from vigil_ml.metrics import paired_gain

    c = _cohort(200)
    risk = np.random.default_rng(0).random(len(c.y))
    g = paired_gain(c, risk, 0.5, risk, 0.5, n_boot=50, seed=0)
    for k in ("auroc", "utility"):
        assert g[k]["gain"] == 0 and g[k]["p_one_sided"] == 1.0 and g[k]["p_one_sided_worse"] == 1.0


def test_the_paired_gain_of_an_informative_score_over_noise_is_significant() -> None:
    from vigil_ml.metrics import paired_gain

    c = _cohort(200)
    rng = np.random.default_rng(1)
    noise = rng.random(len(c.y))
    good = c.y + 0.5 * rng.random(len(c.y))
    g = paired_gain(c, good, 1.0, noise, 0.9, n_boot=100, seed=0)
    assert g["auroc"]["gain"] > 0.3 and g["auroc"]["p_one_sided"] < 0.05
    assert g["utility"]["gain"] > 0 and g["utility"]["ci"][0] > 0
    # The other way round the noise is significantly worse: what the pick's harm test reads.
    worse = paired_gain(c, noise, 0.9, good, 1.0, n_boot=100, seed=0)
    assert worse["auroc"]["p_one_sided_worse"] < 0.05 and worse["auroc"]["p_one_sided"] == 1.0


def _cand(name: str, auroc_gain: float, p_worse_auroc: float, p_worse_util: float) -> Any:
    """A candidate with its paired gain over the recalibrated base (only what the pick reads)."""
    c = adapt_mod.Candidate(name, name, b"", 0, 0)
    if name != "recalibrated":
        c.gain = {
            "auroc": {"gain": auroc_gain, "p_one_sided_worse": p_worse_auroc},
            "utility": {"gain": 0.0, "p_one_sided_worse": p_worse_util},
        }
    return c


ORDER = ("pooled_site", "ensemble", "stacked", "local")


def _compare(better: dict[str, float]) -> Any:
    """Paired comparison of a later candidate with the default: one-sided p of being better, by candidate name."""
    calls: list[tuple[str, str]] = []

    def compare(c: Any, ref: Any) -> dict[str, Any]:
        calls.append((c.name, ref.name))
        p = better.get(c.name, 0.5)
        return {k: {"gain": 0.01, "p_one_sided": p} for k in ("auroc", "utility")}

    compare.calls = calls  # type: ignore[attr-defined]
    return compare


def test_the_pick_takes_the_first_learned_recipe_in_the_order_that_is_not_significantly_worse() -> None:
    base = _cand("recalibrated", 0, 1, 1)
    # Lower point estimate than the base on the selection stays, but not significantly: the a-priori recipe is
    # taken, even over a later one whose point estimate is higher (a chance lead decides nothing).
    pooled = _cand("pooled_site", -0.01, 0.30, 0.40)
    local = _cand("local", +0.04, 0.90, 0.95)
    chosen, trail = adapt_mod.pick(
        [base, local, pooled], alpha=0.05, allow_learned=True, order=ORDER, compare=_compare({})
    )
    assert chosen is pooled
    assert trail[0].startswith("pooled_site: first in the a-priori order")


def test_the_pick_passes_over_a_significantly_worse_recipe_and_keeps_the_base_when_all_are_worse() -> None:
    base = _cand("recalibrated", 0, 1, 1)
    # Significantly worse on utility alone is enough to set a recipe aside.
    pooled = _cand("pooled_site", +0.01, 0.60, 0.01)
    ens = _cand("ensemble", -0.02, 0.20, 0.30)
    chosen, trail = adapt_mod.pick(
        [base, pooled, ens], alpha=0.05, allow_learned=True, order=ORDER, compare=_compare({})
    )
    assert chosen is ens
    assert "pooled_site: significantly worse" in trail[0] and "utility" in trail[0]
    every_worse = [base, _cand("pooled_site", -0.03, 0.01, 0.5), _cand("stacked", -0.05, 0.001, 0.002)]
    chosen, trail = adapt_mod.pick(every_worse, alpha=0.05, allow_learned=True, order=ORDER, compare=_compare({}))
    assert chosen is base and "recalibrated base" in trail[-1]
    # Too few septic selection stays to check anything: the base whatever the figures.
    chosen, _ = adapt_mod.pick([base, ens], alpha=0.05, allow_learned=False, order=ORDER, compare=_compare({}))
    assert chosen is base


def test_a_later_recipe_replaces_the_default_only_when_significantly_better_than_it_after_bonferroni() -> None:
    base = _cand("recalibrated", 0, 1, 1)
    pooled, ens, local = (_cand(n, 0.0, 0.5, 0.5) for n in ("pooled_site", "ensemble", "local"))
    cands = [base, local, ens, pooled]
    # Two later candidates: each must reach p < 0.05 / 2 against the default.
    compare = _compare({"ensemble": 0.03, "local": 0.001})
    chosen, _ = adapt_mod.pick(cands, alpha=0.05, allow_learned=True, order=ORDER, compare=compare)
    assert chosen is local
    assert compare.calls == [("ensemble", "pooled_site"), ("local", "pooled_site")]
    chosen, _ = adapt_mod.pick(
        cands, alpha=0.05, allow_learned=True, order=ORDER, compare=_compare({"ensemble": 0.03, "local": 0.2})
    )
    assert chosen is pooled


def test_the_site_weight_gives_the_site_its_share_of_the_total_weight() -> None:
    w = adapt_mod.site_weight(0.75, n_base=1000, n_local=250)
    assert 250 * w / (250 * w + 1000) == pytest.approx(0.75)
    assert adapt_mod.site_weight(None, 1000, 250) == 1.0
    with pytest.raises(ValueError):
        adapt_mod.site_weight(1.0, 1000, 250)


@pytest.mark.parametrize("pooled_early_stopping", [False, True], ids=["fixed-iterations", "early-stopped"])
def test_the_site_augmented_pooled_candidate_never_fits_or_stops_on_a_selection_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pooled_early_stopping: bool
) -> None:
    sample = pd.read_parquet(SAMPLE_PATH)
    first = sorted(sample["patient_id"].unique())[:100]
    base_rows = sample[sample["patient_id"].isin(first)].assign(patient_id=lambda d: "base-" + d["patient_id"])
    local = sample
    # Stand-in for set A: the base model's training rows are the sample's stays under other ids (a fake of the
    # file lookup only; every fit, export and pick is the real code).
    monkeypatch.setattr(adapt_mod, "base_training_rows", lambda _base, _path: base_rows)
    seen: list[tuple[set[str], set[str]]] = []
    real_fit = adapt_mod._fit

    def spy(
        model: Any, X: np.ndarray, y: np.ndarray, *, ids: np.ndarray, held: set[str], w: Any = None, val: Any = None
    ) -> Any:
        seen.append((set(map(str, ids)), set() if val is None else set(map(str, val[2]))))
        return real_fit(model, X, y, ids=ids, held=held, w=w, val=val)

    monkeypatch.setattr(adapt_mod, "_fit", spy)
    cfg = small_config()
    cfg.min_local_septic = 3
    cfg.site_shares = (None, 0.75)
    cfg.base_negative_fraction = 0.5
    cfg.max_quiet_fit_stays = 50  # binds on the sample: the weighted, thinned local rows go through every fit
    cfg.pooled_early_stopping = pooled_early_stopping
    res = adapt(default_package_path(), local, tmp_path / "run", base_data=tmp_path / "unused", config=cfg)
    assert {"pooled_site", "local", "ensemble"} <= set(res.candidates)
    for name, fitted in res.fitted_ids.items():
        assert not fitted & res.selection_ids, name
    # The local model's inner fit (and, with pooled early stopping, the two pooled inner fits: one per site share)
    # stops early on the latest fitting stays, which lie inside the fitting part and are never among the rows those
    # inner fits learn from.
    stopped = [(fit, watched) for fit, watched in seen if watched]
    assert len(stopped) == (3 if pooled_early_stopping else 1)
    for fit, watched in stopped:
        assert watched <= res.fit_ids and not watched & fit
    inner = stopped[-1][1]
    pooled_fits = [fit for fit, _ in seen if any(i.startswith("base-") for i in fit)]
    # Two inner fits that leave the inner stays out (they choose the site weight on them), then the refit on all.
    assert len(pooled_fits) == 3
    assert [bool(fit & inner) for fit in pooled_fits] == [False, False, True]
    for fit, watched in seen:
        assert not (fit | watched) & res.selection_ids
    # The quiet base stays are thinned, the septic ones all kept.
    flags = base_rows.groupby("patient_id")["SepsisLabel"].max()
    assert set(flags.index[flags == 1]) <= res.fitted_ids["pooled_site"]
    assert not set(flags.index[flags == 0]) <= res.fitted_ids["pooled_site"]
    card = ModelPackage.load(res.package_dir).card
    assert any("quiet stays fitted on" in n for n in res.notes)
    assert card["local_data"]["fit"]["rows_fitted"] < card["local_data"]["fit"]["rows"]
    assert card["validation"]["chosen"] == res.chosen
    assert "paired stay bootstrap" in card["validation"]["pick_rule"]
    assert card["validation"]["pick_trail"]
    assert card["validation"]["candidates"]["pooled_site"]["gain_over_recalibrated"]["auroc"]["ci"] is not None
    assert "site indicator" in card["validation"]["candidates"]["pooled_site"]["description"]


def test_quiet_fitting_stays_beyond_the_cap_are_thinned_with_weights_that_keep_the_totals() -> None:
    pid = np.repeat([f"q{i}" for i in range(10)] + ["s0", "i0"], 3)
    y = np.zeros(len(pid), int)
    y[pid == "s0"] = [0, 1, 1]
    eligible = {f"q{i}" for i in range(10)} | {"s0"}  # "i0" is an inner stay: never thinned
    kept, w, note = adapt_mod._thin_quiet_rows(pid, y, eligible, max_quiet=4, seed=0)
    assert note is not None and "4 of 10 quiet stays" in note
    assert kept[pid == "s0"].all() and kept[pid == "i0"].all()
    assert len(set(pid[kept & np.char.startswith(pid.astype(str), "q")])) == 4
    # The quiet rows kept weigh as much as all quiet rows did, the others weigh 1.
    quiet = np.char.startswith(pid.astype(str), "q")
    assert w[kept & quiet].sum() == pytest.approx(quiet.sum())
    assert (w[~quiet] == 1).all()
    kept, w, note = adapt_mod._thin_quiet_rows(pid, y, eligible, max_quiet=10, seed=0)
    assert note is None and kept.all() and (w == 1).all()


def test_the_site_indicator_is_a_constant_one_inside_the_serving_graph() -> None:
    from vigil_ml.onnx_export import onnx_proba, snap_thresholds_to_float32, to_onnx_bytes
    from vigil_ml.train import build_hgb

    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 4)).astype(np.float32)
    site = (np.arange(400) % 2).astype(np.float32)[:, None]
    # The label depends on the first feature at the site only, so the trees must split on the indicator.
    y = ((X[:, 0] > 0) & (site[:, 0] == 1)).astype(int)
    model = build_hgb(0, {"max_iter": 20}).fit(np.hstack([X, site]), y)
    snap_thresholds_to_float32(model)
    graph = adapt_mod.with_site_indicator(to_onnx_bytes(model, 5), 4)
    got = onnx_proba(graph, X)
    assert np.max(np.abs(got - model.predict_proba(np.hstack([X, np.ones((400, 1), np.float32)]))[:, 1])) < 1e-5
    assert np.max(np.abs(got - model.predict_proba(np.hstack([X, np.zeros((400, 1), np.float32)]))[:, 1])) > 0.1


def test_rows_that_early_stopping_watches_are_refused_from_a_held_out_stay() -> None:
    from vigil_ml.train import build_hgb

    X = np.zeros((4, 3), dtype=np.float32)
    y = np.array([0, 1, 0, 1])
    with pytest.raises(LeakError):
        adapt_mod._fit(
            build_hgb(0, {"max_iter": 1}), X, y, ids=np.array(["a"] * 4), held={"b"}, val=(X, y, np.array(["b"] * 4))
        )


def test_learned_candidates_may_alert_up_to_the_policys_ratio_of_the_base_the_recalibrated_base_not_above_it() -> None:
    from vigil_ml.metrics import Cohort, alert_hour_rate

    frame = pd.read_parquet(SAMPLE_PATH)
    sel = Cohort.from_frame(frame)
    rng = np.random.default_rng(3)
    # An informative score: the utility rule would alert on far more hours than the base's budget allows.
    risk = frame["SepsisLabel"].to_numpy() * 0.5 + rng.random(len(frame))
    budget = 0.02
    cands = [
        adapt_mod.Candidate("recalibrated", "base", b"", 0, 0, risk=risk),
        adapt_mod.Candidate("local", "learned", b"", 10, 2, risk=risk),
    ]
    cfg = small_config()
    adapt_mod._validate_and_pick(cands, sel, budget, cfg, [])
    recal_rate, learned_rate = (alert_hour_rate(c.risk, c.threshold) for c in cands)
    assert recal_rate <= budget
    # Up to 1.2 times the budget (the policy's default), and the rule takes the room it is given here.
    assert budget < learned_rate <= budget * cfg.max_alert_rate_ratio
    cfg.max_alert_rate_ratio = 1.0
    adapt_mod._validate_and_pick(cands, sel, budget, cfg, [])
    assert alert_hour_rate(cands[1].risk, cands[1].threshold) <= budget


def test_the_pooled_fit_learns_as_its_base_did_by_default() -> None:
    # The pooled fit is the base's training run with the site's rows added: the base's recipe, from its card.
    assert AdaptConfig().pooled_hgb is None
    v4, v1, v2 = (adapt_mod.base_recipe(ModelPackage.load(default_package_path(v))) for v in ("4", "1", "2"))
    assert (v4["min_samples_leaf"], v4["l2_regularization"], v4["max_iter"]) == (1000, 10.0, 300)
    assert (v1["min_samples_leaf"], v1["l2_regularization"]) == (200, 1.0)
    assert (v2["max_iter"], v2["max_leaf_nodes"], v2["learning_rate"]) == (150, 15, 0.1)
    assert set(v4) == set(adapt_mod.HGB_DEFAULT)  # nothing but boosting hyperparameters (no seed, no counts)
