"""Adaptation at a site: candidates from the site's own labelled stays, picked by temporal validation.

What transfers between hospitals is mostly the physiology, less the way a site orders tests and charts; the
measurements in issue 16 say that at a new site the ranking breaks, not the threshold. So besides the cheap fix
(the base model with its operating threshold re-chosen on local outcomes) the candidates learn the ranking anew:

- ``recalibrated``: the base model's scores, its threshold re-chosen on local outcomes within the production
  model's alert budget (the base model's alert-hour rate on the same local hours);
- ``pooled_site``: the base model's own training rows plus the local rows, with one more input, a site
  indicator (0 for the base rows, 1 for the local ones: feature augmentation, so the trees can learn splits that
  hold at this site only while sharing the rest); at serving the indicator is the constant "this site", baked into
  the ONNX graph. The site's share of the training weight is chosen on an inner temporal split of the fitting
  stays (the latest of them), then the model is refitted on all fitting stays, with the base model's own recipe;
- ``stacked``: a local model that takes the base model's score as one more input, fitted on local rows only;
  the package computes both in one ONNX graph (the base graph feeds the local one);
- ``local``: the local rows alone (iterations chosen on the same inner split), once at least
  ``min_local_septic`` septic stays exist;
- ``ensemble``: the mean of the local model's and the best partner's probabilities, one ONNX graph.

Each learned candidate's threshold is chosen on the selection stays by the robust utility rule, alerting on at most
``max_alert_rate_ratio`` times the base model's alert-hour rate there (the promotion policy's guardrail).

Local stays are ordered by ICU admission (``icu_admitted_at`` from ``vigil dataset build``; PhysioNet-format
files without it by stay id) and split in time: candidates are fitted on the earlier stays, and thresholds,
the choice among candidates and the card's figures come from the latest ``selection_fraction`` of stays, which
no candidate is ever fitted on (:func:`_fit` refuses it, for the rows fitted on and for the rows early stopping
watches). The figures are therefore on stays the models never saw, but the threshold and the pick were made on
them: an independent later evaluation is the honest check (``scripts/site_study.py`` does one on a proxy site in
set A, see docs/model.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vigil_ml import data
from vigil_ml.metrics import (
    Cohort,
    alert_hour_rate,
    choose_threshold,
    evaluate_score,
    paired_gain,
    threshold_at_specificity,
)
from vigil_ml.onnx_export import onnx_proba, parity, snap_thresholds_to_float32, to_onnx_bytes
from vigil_ml.train import HGB_DEFAULT, build_hgb
from vigil_scoring.features import FEATURE_COLUMNS, FEATURE_SET_VERSION, offline_features
from vigil_scoring.model_package import ModelPackage, write_manifest
from vigil_scoring.reference import build_reference

Progress = Callable[[str], None]


class LeakError(AssertionError):
    """A candidate was about to be fitted on a stay it is validated or compared on."""


@dataclass
class AdaptConfig:
    """Everything that decides an adaptation's result (recorded in the card)."""

    name: str = "sepsis"
    version: str = "adapted"
    seed: int = 7
    selection_fraction: float = 0.25
    """Latest share of local stays held out of fitting: thresholds, the pick and the card's figures."""
    min_local_septic: int = 100
    """Septic stays among the fitting stays before a local-only model is tried."""
    min_stacked_septic: int = 20
    """Septic stays among the fitting stays before the stacked model is tried."""
    hgb: dict[str, Any] = field(default_factory=lambda: dict(HGB_DEFAULT))
    local_hgb: dict[str, Any] = field(
        default_factory=lambda: {**HGB_DEFAULT, "max_iter": 150, "max_leaf_nodes": 15, "min_samples_leaf": 100}
    )
    """Smaller trees for the local-only and stacked models: a site has far fewer stays than set A."""
    site_shares: tuple[float | None, ...] = (None, 0.5)
    """Site weights tried for ``pooled_site`` on the inner split: the site's share of the total training weight
    (None: every hour weighs 1). The one with the better inner AUROC is refitted."""
    inner_fraction: float = 0.2
    """Latest share of the fitting stays on which the pooled model's site weight and the local model's iteration
    count (early stopping) are chosen; the chosen models are then refitted on all fitting stays."""
    pooled_hgb: dict[str, Any] | None = None
    """Pooled model's hyperparameters; None (the default): the base model's own recipe, as its card records it (the
    default v4: 300 iterations of 0.05, leaves of at least 1,000 hours, L2 10), else the training code's. The pooled
    fit is the base model's training run with the site's rows added, so it learns as the base did. With
    ``pooled_early_stopping`` ``max_iter`` is a cap instead."""
    pooled_early_stopping: bool = False
    """Choose the pooled model's iteration count by early stopping on the inner split. Off since session 11: the
    inner split is the latest 20% of a site's fitting stays (481 stays, about 50 septic, on the MICU proxy), too few
    for the loss there to say when to stop. The pooled fit stopped after 15 iterations of 0.1 (a tenth of the
    training code's boosting) and ranked 0.023 AUROC below the training code run naively on the same pooled rows
    (docs/model.md). Until then it was on, with a cap of 200 iterations of 0.1."""
    n_iter_no_change: int = 20
    """Early stopping patience (iterations without a better inner-split loss)."""
    max_alert_rate_ratio: float = 1.2
    """Learned candidates may alert on at most this factor of the base model's alert-hour rate on the selection
    hours; the recalibrated base is held to the base's own rate (issue 16: a threshold change alone must not raise
    the alarm burden). The default is the promotion policy's ``max_alert_rate_ratio``: a candidate alerting more
    would be held in shadow by that policy anyway, so adapt builds none (`vigil adapt-loop` passes the model's own
    policy value; a site that accepts more alerts raises it there, as an admin). Until session 11 every candidate
    was held to 1.0: where the base under-alerts (the MICU proxy, a sicker site than the base's) that cost every
    learned candidate the utility its better ranking had earned."""
    base_negative_fraction: float = 0.5
    """Share of the base training stays without sepsis kept in the pooled fit, each weighted by its inverse so the
    totals are unchanged (all septic stays are kept): halves the cost of every pooled fit on the base rows, which
    are mostly quiet hours of stays that never turn septic."""
    max_quiet_base_stays: int | None = 3000
    """At most this many of those quiet base stays are kept (same weighting): every fit costs in proportion to its
    rows, and with the default base half its quiet stays are 6,402 (237,000 hours), two thirds of the pooled rows
    at a 10,000-stay site; 3,000 bound them whatever the base (docs/model.md, "Cost")."""
    max_quiet_fit_stays: int | None = 3000
    """At most this many quiet local fitting stays outside the inner split are fitted on, a seeded draw weighted by
    its inverse share (every septic stay and every inner stay kept): bounds the fits' rows at a large site and
    thins nothing at a small one (the SICU proxy has 1,900)."""
    local_full: bool = True
    """The local-only model with the training code's own hyperparameters (``hgb``), as `vigil model train` fits."""
    local_max_iter: int = 400
    """Iteration cap of the local-only model; early stopping on the inner split cuts it (600 until session 7; the
    default model's own fit is 300 iterations on 14,000 stays)."""
    n_boot: int = 200
    robust_threshold: bool = True
    high_specificity: float = 0.99
    alpha: float = 0.05
    """One-sided level of the pick's paired tests (see :func:`pick`): a learned candidate is set aside when it is
    worse than the recalibrated base at this level on AUROC or on utility; a later one in ``pick_order`` replaces
    the first one kept only when it is better than it on both at this level (Bonferroni over those comparisons)."""
    pick_order: tuple[str, ...] = ("pooled_site", "ensemble", "stacked", "local")
    """The a-priori order of the learned recipes, from the one whose fit rests on the most stays (the base model's
    training stays plus the local ones) to the one resting on the local stays alone; fixed before any figure."""
    min_selection_septic: int = 30
    """Septic selection stays below which no learned candidate can be picked: with fewer, the selection stays
    cannot tell a harmful candidate from a good one (an AUROC interval about 0.1 wide either side)."""


@dataclass
class Candidate:
    """One adapted model: how it scores, which stays it was fitted on, its figures on the selection stays."""

    name: str
    description: str
    onnx: bytes
    fitted_stays: int
    fitted_septic: int
    risk: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    threshold: float = float("nan")
    figures: dict[str, Any] = field(default_factory=dict)
    gain: dict[str, Any] = field(default_factory=dict)
    """Paired-bootstrap gain over the recalibrated base on the selection stays (see metrics.paired_gain)."""


@dataclass
class AdaptResult:
    """Where the package went, which candidate won and the stays each part used (as sets of ids, never logged)."""

    package_dir: Path
    chosen: str
    candidates: dict[str, dict[str, Any]]
    fit_ids: set[str]
    selection_ids: set[str]
    fitted_ids: dict[str, set[str]]
    onnx: dict[str, bytes] = field(default_factory=dict, repr=False)
    """Every candidate's graph (for studies that evaluate them all on later stays)."""
    notes: list[str] = field(default_factory=list)


def temporal_order(df: pd.DataFrame) -> list[str]:
    """Stay ids from the earliest to the latest ICU admission (stay id order when no admission time is given)."""
    ids = df["patient_id"].astype(str)
    if "icu_admitted_at" in df and df["icu_admitted_at"].notna().all():
        first = df.assign(_id=ids).groupby("_id")["icu_admitted_at"].min()
        return list(first.sort_values(kind="stable").index)
    return sorted(ids.unique())


def temporal_split(df: pd.DataFrame, selection_fraction: float) -> tuple[set[str], set[str]]:
    """(earlier stays to fit on, latest stays to select and validate on)."""
    order = temporal_order(df)
    n_sel = max(1, round(len(order) * selection_fraction))
    if n_sel >= len(order):
        raise ValueError(f"{len(order)} local stays are too few to hold out the latest {selection_fraction:.0%}")
    return set(order[:-n_sel]), set(order[-n_sel:])


def _fit(
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    *,
    ids: np.ndarray,
    held: set[str],
    w: Any = None,
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Any:
    """The one place adaptation fits a model: refuses any row of a held-out (selection or evaluation) stay.

    ``val`` (features, labels, stay ids) are the rows early stopping watches: they choose the iteration count, so
    they are refused too when they belong to a held-out stay.
    """
    seen = set(map(str, np.unique(ids)))
    if val is not None:
        seen |= set(map(str, np.unique(val[2])))
    leaked = seen & held
    if leaked:
        raise LeakError(f"{len(leaked)} held-out stays among the rows to fit on")
    kw: dict[str, Any] = {} if w is None else {model_step(model) + "sample_weight": w}
    if val is not None:
        kw.update(X_val=val[0], y_val=val[1])
    model.fit(X, y, **kw)
    return model


def base_recipe(base: ModelPackage) -> dict[str, Any]:
    """The boosting hyperparameters the base model was trained with (its card), the training code's for any missing."""
    recorded = base.card.get("hyperparameters") or {}
    return {k: recorded.get(k, v) for k, v in HGB_DEFAULT.items()}


def build_early_stopped(seed: int, params: dict[str, Any], patience: int) -> Any:
    """The training code's gradient-boosted model, stopped when the loss on the given validation rows stalls."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        **params, early_stopping=True, n_iter_no_change=patience, scoring="loss", random_state=seed
    )


def best_iterations(model: Any) -> int:
    """Iterations at the best validation loss of an early-stopped model (it runs ``patience`` past it)."""
    scores = np.asarray(getattr(model, "validation_score_", []))
    return max(1, int(np.argmax(scores))) if len(scores) else int(model.n_iter_)


def with_site_indicator(model_onnx: bytes, n_features: int) -> bytes:
    """One ONNX graph taking the serving features: a column of ones (the site indicator) is appended inside.

    The pooled_site model was fitted with the indicator 0 on the base rows and 1 on the local ones; at this site
    it is always 1, so the package keeps the serving input contract (float32 [n, k] named ``features``).
    """
    import onnx
    from onnx import compose, helper

    m = compose.add_prefix(onnx.load_from_string(model_onnx), "site_")
    m_in = m.graph.input[0].name
    glue = [
        helper.make_node("Shape", ["features"], ["site_in_shape"], start=0, end=1),
        helper.make_node("Constant", [], ["site_one_col"], value=helper.make_tensor("c", 7, [1], [1])),
        helper.make_node("Concat", ["site_in_shape", "site_one_col"], ["site_ind_shape"], axis=0),
        helper.make_node(
            "ConstantOfShape",
            ["site_ind_shape"],
            ["site_indicator"],
            value=helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0]),
        ),
        helper.make_node("Concat", ["features", "site_indicator"], [m_in], axis=1),
    ]
    tail = [
        helper.make_node("Identity", [m.graph.output[0].name], ["label"]),
        helper.make_node("Identity", [m.graph.output[1].name], ["probabilities"]),
    ]
    graph = helper.make_graph(
        glue + list(m.graph.node) + tail,
        "site_indicator",
        [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [None, n_features])],
        [
            helper.make_tensor_value_info("label", onnx.TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [None, 2]),
        ],
        initializer=list(m.graph.initializer),
    )
    model = helper.make_model(graph, opset_imports=list(m.opset_import))
    model.ir_version = m.ir_version
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def model_step(model: Any) -> str:
    """Prefix of fit parameters for a pipeline's last step ('' for a plain estimator)."""
    steps = getattr(model, "steps", None)
    return f"{steps[-1][0]}__" if steps else ""


def base_training_rows(base: ModelPackage, base_data: Path) -> pd.DataFrame:
    """The base model's own training rows, found again from its card (seed, split digest) and verified.

    The card records the training split as a digest of the sorted stay ids; the split is recomputed on
    ``base_data`` (with and without the bundled sample held out, as training does) and used only if its digest
    matches, so the pooled candidate learns from exactly the rows the base model learned from.
    """
    card = base.card
    split = card.get("training_data", {}).get("split", {})
    want = split.get("train", {}).get("ids_sha256")
    seed = int(card.get("hyperparameters", {}).get("random_state", 7))
    if not want:
        raise ValueError("the base package's card does not record its training split")
    df = data.load(base_data)
    tries = [df]
    if data.SAMPLE_PATH.exists():
        sample = pd.read_parquet(data.SAMPLE_PATH, columns=["patient_id"])["patient_id"].astype(str).unique()
        tries.insert(0, df.loc[~df["patient_id"].isin(sample)].reset_index(drop=True))
    for frame in tries:
        parts = data.split_patients(frame, seed=seed)
        if hashlib.sha256("\n".join(sorted(map(str, parts.train))).encode()).hexdigest() == want:
            return frame.loc[frame["patient_id"].isin(parts.train)].reset_index(drop=True)
    raise ValueError(f"{base_data.name} does not hold the base model's training split (digest mismatch)")


def stack_onnx(base_onnx: bytes, local_onnx: bytes, n_features: int) -> bytes:
    """One ONNX graph: the base model's positive-class probability appended to the features feeds the local model.

    Both graphs keep their own nodes (names prefixed ``base_`` / ``local_``); the local model's input is
    ``Concat(features, base probability[:, 1:2])``.
    """
    import onnx
    from onnx import compose, helper

    base = compose.add_prefix(onnx.load_from_string(base_onnx), "base_")
    local = compose.add_prefix(onnx.load_from_string(local_onnx), "local_")
    b_in, l_in = base.graph.input[0].name, local.graph.input[0].name
    b_prob = base.graph.output[1].name
    glue = [
        helper.make_node("Constant", [], ["stack_idx_start"], value=helper.make_tensor("s", 7, [1], [1])),
        helper.make_node("Constant", [], ["stack_idx_end"], value=helper.make_tensor("e", 7, [1], [2])),
        helper.make_node("Constant", [], ["stack_axis"], value=helper.make_tensor("a", 7, [1], [1])),
        helper.make_node("Slice", [b_prob, "stack_idx_start", "stack_idx_end", "stack_axis"], ["stack_base_p"]),
        helper.make_node("Concat", ["features", "stack_base_p"], [l_in], axis=1),
    ]
    nodes = []
    for node in base.graph.node:
        node.input[:] = ["features" if i == b_in else i for i in node.input]
        nodes.append(node)
    nodes += glue + list(local.graph.node)
    outputs = [
        helper.make_tensor_value_info("label", onnx.TensorProto.INT64, [None]),
        helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [None, 2]),
    ]
    tail = [
        helper.make_node("Identity", [local.graph.output[0].name], ["label"]),
        helper.make_node("Identity", [local.graph.output[1].name], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes + tail,
        "stacked",
        [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [None, n_features])],
        outputs,
        initializer=list(base.graph.initializer) + list(local.graph.initializer),
    )
    model = helper.make_model(graph, opset_imports=list(base.opset_import))
    model.ir_version = base.ir_version
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def average_onnx(graphs: list[bytes], n_features: int) -> bytes:
    """One ONNX graph whose probabilities are the mean of several models' probabilities on the same features.

    Each model keeps its own nodes (names prefixed ``m0_``, ``m1_``, ...); the label is the argmax of the mean.
    """
    import onnx
    from onnx import compose, helper

    nodes, inits, probs = [], [], []
    opset = None
    ir = None
    for i, raw in enumerate(graphs):
        m = compose.add_prefix(onnx.load_from_string(raw), f"m{i}_")
        opset, ir = opset or list(m.opset_import), ir or m.ir_version
        m_in = m.graph.input[0].name
        for node in m.graph.node:
            node.input[:] = ["features" if x == m_in else x for x in node.input]
            nodes.append(node)
        inits += list(m.graph.initializer)
        probs.append(m.graph.output[1].name)
    nodes += [
        helper.make_node("Mean", probs, ["probabilities"]),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "average",
        [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, [None, n_features])],
        [
            helper.make_tensor_value_info("label", onnx.TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [None, 2]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=opset)
    model.ir_version = ir or model.ir_version
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def site_weight(share: float | None, n_base: int, n_local: int) -> float:
    """Weight of each local hour so that the site carries ``share`` of the total weight (None: 1, naive pooling)."""
    if share is None:
        return 1.0
    if not 0 < share < 1:
        raise ValueError(f"site share {share} must lie strictly between 0 and 1")
    return share / (1 - share) * n_base / max(n_local, 1)


Compare = Callable[["Candidate", "Candidate"], dict[str, Any]]
"""Paired gain of the first candidate over the second on the selection stays (``metrics.paired_gain``)."""


def pick(
    cands: list[Candidate],
    *,
    alpha: float,
    allow_learned: bool,
    order: tuple[str, ...],
    compare: Compare,
) -> tuple[Candidate, list[str]]:
    """The learned recipe first in the a-priori ``order`` that is not significantly worse than the recalibrated base.

    (chosen candidate, the reasons in the order they were decided). Each candidate's ``gain`` is its paired gain
    over the recalibrated base on the selection stays. A candidate is set aside when that gain is significantly
    below 0 (one-sided p < ``alpha`` that the gain is >= 0) on AUROC or on utility; the first one in ``order`` that
    is not set aside is the default. A later candidate in the order replaces it only when ``compare`` shows it
    significantly better than the default on both metrics (one-sided p < ``alpha`` divided by the number of such
    comparisons). When every learned candidate is set aside, or ``allow_learned`` is false, the recalibrated base.

    Why this and not "the base unless a candidate is significantly better": the selection stays are a safeguard
    against a candidate that broke, not the evidence that a recipe learning from more stays is worth using; a
    superiority test on a few dozen septic stays has little power, so that rule keeps the base's ranking at
    almost every site whatever the local outcomes say (docs/model.md, "The pick"). The order is fixed before
    any figure is seen, so no chance lead on the selection stays decides among recipes.
    """
    base = next(c for c in cands if c.name == "recalibrated")
    if not allow_learned:
        return base, ["too few septic selection stays to check a learned candidate: the recalibrated base"]
    trail: list[str] = []
    ranked = sorted(
        (c for c in cands if c.name != "recalibrated" and c.gain),
        key=lambda c: order.index(c.name) if c.name in order else len(order),
    )
    kept: list[Candidate] = []
    for c in ranked:
        worse = [k for k in ("auroc", "utility") if c.gain[k]["p_one_sided_worse"] < alpha]
        if worse:
            figures = ", ".join(f"{k} {c.gain[k]['gain']:+.3f} (p {c.gain[k]['p_one_sided_worse']:.3f})" for k in worse)
            trail.append(f"{c.name}: significantly worse than the recalibrated base on {figures}: set aside")
        else:
            kept.append(c)
    if not kept:
        trail.append("every learned candidate is significantly worse: the recalibrated base")
        return base, trail
    default, later = kept[0], kept[1:]
    trail.append(
        f"{default.name}: first in the a-priori order not significantly worse than the recalibrated base "
        f"(gain AUROC {default.gain['auroc']['gain']:+.3f}, utility {default.gain['utility']['gain']:+.3f})"
    )
    level = alpha / max(1, len(later))
    for c in later:
        g = compare(c, default)
        better = all(g[k]["p_one_sided"] < level for k in ("auroc", "utility"))
        trail.append(
            f"{c.name} over {default.name}: AUROC {g['auroc']['gain']:+.3f} (p {g['auroc']['p_one_sided']:.3f}), "
            f"utility {g['utility']['gain']:+.3f} (p {g['utility']['p_one_sided']:.3f}), level {level:.3g}: "
            + ("significantly better on both, replaces it" if better else "not significantly better on both")
        )
        if better:
            return c, trail
    return default, trail


def adapt(
    base_path: str | Path,
    local: pd.DataFrame,
    out_dir: str | Path,
    *,
    base_data: Path | None = None,
    config: AdaptConfig | None = None,
    manifest_path: Path | None = None,
    progress: Progress = lambda _msg: None,
) -> AdaptResult:
    """Build the candidates, pick one by temporal validation and write its package into ``out_dir/package``."""
    cfg = config or AdaptConfig()
    t0 = time.monotonic()

    def step(msg: str) -> None:
        progress(f"[{time.monotonic() - t0:6.1f}s] {msg}")

    base = ModelPackage.load(base_path)
    if tuple(base.columns) != tuple(FEATURE_COLUMNS):
        raise ValueError(f"base {base.name} v{base.version} uses other features than this code")
    local = local.copy()
    local["patient_id"] = local["patient_id"].astype(str)
    local = local.sort_values(["patient_id", "hour"], kind="stable").reset_index(drop=True)
    fit_ids, sel_ids = temporal_split(local, cfg.selection_fraction)
    pid = local["patient_id"].to_numpy()
    in_fit, in_sel = data.rows_of(pid, fit_ids), data.rows_of(pid, sel_ids)
    step(f"local: {len(fit_ids)} stays to fit on, the latest {len(sel_ids)} to select and validate on")
    X = offline_features(local).to_numpy(dtype=np.float32)
    y = local["SepsisLabel"].to_numpy().astype(int)
    sel_frame = local.loc[in_sel].reset_index(drop=True)
    sel = Cohort.from_frame(sel_frame)
    X_sel = X[in_sel]
    septic_fit = int(local.loc[in_fit].groupby("patient_id")["SepsisLabel"].max().sum())
    base_onnx = (Path(base.path) / "model.onnx").read_bytes()
    base_sel = base.predict(X_sel).astype(np.float64)
    budget_rate = alert_hour_rate(base_sel, base.operating_threshold)
    held = set(sel_ids)

    cands: list[Candidate] = [
        Candidate(
            "recalibrated",
            "the base model, its operating threshold re-chosen on local outcomes within the alert budget",
            base_onnx,
            0,
            0,
        )
    ]
    cands[0].risk = base_sel
    fitted: dict[str, set[str]] = {"recalibrated": set()}

    def fitted_hgb(name: str, params: dict[str, Any], Xf: np.ndarray, yf: np.ndarray, ids: np.ndarray, w: Any):
        step(f"fitting {name} on {len(np.unique(ids))} stays ({len(yf)} hours)")
        model = _fit(build_hgb(cfg.seed, params), Xf, yf, ids=ids, held=held, w=w)
        snap_thresholds_to_float32(model)
        fitted[name] = set(map(str, np.unique(ids)))
        return model

    # The inner split: the latest fitting stays choose the site weight and the iteration counts (early stopping);
    # the selection stays stay untouched for the pick, the thresholds and the card's figures.
    fit_order = temporal_order(local.loc[in_fit])
    inner_ids = set(fit_order[-max(1, round(len(fit_order) * cfg.inner_fraction)) :])
    in_inner = data.rows_of(pid, inner_ids)
    inner_frame = local.loc[in_inner].reset_index(drop=True)
    inner = Cohort.from_frame(inner_frame)
    step(f"inner split: the latest {len(inner_ids)} fitting stays choose site weights and iteration counts")
    notes: list[str] = []
    # Rows fitted on: every fitting row, less the quiet stays beyond the cap (weighted so that totals hold).
    kept, w_loc, thinned = _thin_quiet_rows(
        pid, y, fit_ids - inner_ids, max_quiet=cfg.max_quiet_fit_stays, seed=cfg.seed
    )
    fit_rows = in_fit & kept
    w_fit = w_loc[fit_rows]
    w_fit_or_none = None if thinned is None else w_fit
    if thinned is not None:
        notes.append(f"Local fitting stays outside the inner split: {thinned}.")
        step(notes[-1])

    def early_stopped(
        name: str, params: dict[str, Any], Xf: np.ndarray, yf: np.ndarray, ids: np.ndarray, w: Any, watch: np.ndarray
    ) -> tuple[Any, int]:
        """Fit on the rows not watched, stop on the watched ones (the inner split); (model, best iterations)."""
        step(f"inner fit {name} on {len(np.unique(ids[~watch]))} stays, stopping on {len(np.unique(ids[watch]))}")
        model = _fit(
            build_early_stopped(cfg.seed, params, cfg.n_iter_no_change),
            Xf[~watch],
            yf[~watch],
            ids=ids[~watch],
            held=held,
            w=None if w is None else w[~watch],
            val=(Xf[watch], yf[watch], ids[watch]),
        )
        n_best = best_iterations(model)
        step(f"inner fit {name}: best at {n_best} iterations (ran {model.n_iter_})")
        return model, n_best

    pooled: list[Candidate] = []
    if base_data is not None:
        step("finding the base model's training rows")
        bdf = base_training_rows(base, base_data)
        bdf = bdf.loc[~bdf["patient_id"].isin(held)].reset_index(drop=True)
        n_base_stays = bdf["patient_id"].nunique()
        bdf, base_w, kept_quiet = _thin_quiet_stays(
            bdf, cfg.base_negative_fraction, cfg.seed, max_quiet=cfg.max_quiet_base_stays
        )
        Xb = offline_features(bdf).to_numpy(dtype=np.float32)
        yb = bdf["SepsisLabel"].to_numpy().astype(int)
        n_b = len(yb)
        base_total = round(float(base_w.sum()))
        # The site indicator: 0 on the base rows, 1 on the local ones (feature augmentation).
        Xp = np.vstack(
            [
                np.hstack([Xb, np.zeros((n_b, 1), np.float32)]),
                np.hstack([X[fit_rows], np.ones((int(fit_rows.sum()), 1), np.float32)]),
            ]
        )
        del Xb
        yp = np.r_[yb, y[fit_rows]]
        ids_p = np.r_[bdf["patient_id"].to_numpy().astype(str), pid[fit_rows]]
        watch = np.r_[np.zeros(n_b, bool), in_inner[fit_rows]]
        X_inner = np.hstack([X[in_inner], np.ones((in_inner.sum(), 1), np.float32)])
        tried: list[tuple[float, float | None, int]] = []
        pooled_hgb = cfg.pooled_hgb if cfg.pooled_hgb is not None else base_recipe(base)
        for share in cfg.site_shares:
            # Weights are set on the rows each fit learns from, so the share holds in the inner fit and the refit.
            n_tr = round(float(w_fit[~watch[n_b:]].sum()))
            inner_w = np.r_[base_w, np.where(watch[n_b:], 1.0, site_weight(share, base_total, n_tr) * w_fit)]
            label = "unweighted" if share is None else f"site share {share:.0%}"
            if cfg.pooled_early_stopping:
                model, n_best = early_stopped(f"pooled_site ({label})", pooled_hgb, Xp, yp, ids_p, inner_w, watch)
            else:
                n_best = int(pooled_hgb["max_iter"])
                step(f"inner fit pooled_site ({label}) on {len(np.unique(ids_p[~watch]))} stays, {n_best} iterations")
                model = _fit(
                    build_hgb(cfg.seed, pooled_hgb),
                    Xp[~watch],
                    yp[~watch],
                    ids=ids_p[~watch],
                    held=held,
                    w=inner_w[~watch],
                )
            auroc = _auroc(inner, model.predict_proba(X_inner)[:, 1])
            step(f"  inner AUROC {auroc:.3f}")
            tried.append((auroc, share, n_best))
        auroc, share, n_best = max(tried, key=lambda t: t[0])
        site_w = site_weight(share, base_total, round(float(w_fit.sum())))
        wp = np.r_[base_w, site_w * w_fit]
        model = fitted_hgb("pooled_site", {**pooled_hgb, "max_iter": n_best}, Xp, yp, ids_p, wp)
        del Xp
        onx = with_site_indicator(to_onnx_bytes(model, X.shape[1] + 1), X.shape[1])
        parity_ref = model.predict_proba(np.hstack([X_sel, np.ones((len(X_sel), 1), np.float32)]))[:, 1]
        c = Candidate(
            "pooled_site",
            f"retrained on the base model's {n_base_stays} training stays ({kept_quiet}) plus the local rows with a "
            f"site indicator (constant 1 here), each local hour weighted {site_w:.2f} "
            f"({'unweighted' if share is None else f'the site {share:.0%} of the weight'}), {n_best} iterations; "
            + ("weight and iterations" if cfg.pooled_early_stopping else "weight")
            + " chosen on the inner split ("
            + ", ".join(f"{'unweighted' if s is None else f'{s:.0%}'}: AUROC {a:.3f} at {n}" for a, s, n in tried)
            + ")",
            onx,
            len(fit_ids),
            septic_fit,
        )
        c.risk = onnx_proba(onx, X_sel)
        _check_graph("pooled_site", parity_ref, c.risk)
        pooled.append(c)
        cands.append(c)
    else:
        notes.append(
            "The base model's training data was not available: no pooled candidate (only recalibrated, stacked, "
            "local and their ensemble); pass --base-data to add it."
        )
        step(notes[-1])

    if septic_fit >= cfg.min_stacked_septic:
        base_fit = base.predict(X[fit_rows]).astype(np.float32)[:, None]
        Xs = np.hstack([X[fit_rows], base_fit])
        model = fitted_hgb("stacked", cfg.local_hgb, Xs, y[fit_rows], pid[fit_rows], w_fit_or_none)
        local_onx = to_onnx_bytes(model, Xs.shape[1])
        onx = stack_onnx(base_onnx, local_onx, X.shape[1])
        c = Candidate(
            "stacked",
            "a local model on the features plus the base model's score, fitted on the local rows only",
            onx,
            len(fit_ids),
            septic_fit,
        )
        c.risk = onnx_proba(onx, X_sel)
        ref = model.predict_proba(np.hstack([X_sel, base_sel.astype(np.float32)[:, None]]))[:, 1]
        diff = float(np.max(np.abs(ref - c.risk))) if len(ref) else 0.0
        if diff > 1e-4:  # the base probability passes through float32 once more in the graph than here
            raise AssertionError(f"stacked ONNX graph differs from its parts by {diff:.3g}")
        cands.append(c)

    local_c: Candidate | None = None
    if septic_fit >= cfg.min_local_septic:
        params = {**(cfg.hgb if cfg.local_full else cfg.local_hgb), "max_iter": cfg.local_max_iter}
        Xf, yf, idf = X[fit_rows], y[fit_rows], pid[fit_rows]
        _, n_best = early_stopped("local", params, Xf, yf, idf, w_fit_or_none, in_inner[fit_rows])
        model = fitted_hgb("local", {**params, "max_iter": n_best}, Xf, yf, idf, w_fit_or_none)
        onx = to_onnx_bytes(model, X.shape[1])
        parity(model, onx, X_sel)
        local_c = Candidate(
            "local", f"fitted on the local rows only, {n_best} iterations (inner split)", onx, len(fit_ids), septic_fit
        )
        local_c.risk = onnx_proba(onx, X_sel)
        cands.append(local_c)

    ens = _ensemble(pooled or [c for c in cands if c.name == "stacked"], local_c, sel, X_sel)
    if ens is not None:
        fitted["ensemble"] = fitted[ens[1]] | fitted["local"]
        cands.append(ens[0])

    step(f"validating {len(cands)} candidates on the latest {len(sel_ids)} stays ({sel.n_stays} stays)")
    base_fig = evaluate_score(sel, base_sel, base.operating_threshold, n_boot=cfg.n_boot, seed=cfg.seed)
    chosen, trail = _validate_and_pick(cands, sel, budget_rate, cfg, notes)
    for line in trail:
        step(f"pick: {line}")
    step(
        f"chosen: {chosen.name} (validation AUROC {chosen.figures['auroc']['value']:.3f}, "
        f"utility {chosen.figures['utility']['value']:.3f})"
    )

    run_dir = Path(out_dir)
    pkg = run_dir / "package"
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    (pkg / "model.onnx").write_bytes(chosen.onnx)
    high = max(chosen.threshold, threshold_at_specificity(sel, chosen.risk, cfg.high_specificity))
    thresholds = {"operating": chosen.threshold, "medium": chosen.threshold, "high": high}
    created = datetime.now(UTC).isoformat(timespec="seconds")
    dataset = _dataset_lineage(manifest_path)
    summary = {
        c.name: {
            "description": c.description,
            "fitted_stays": len(fitted.get(c.name, set())),
            "threshold": c.threshold,
            "validation": {k: c.figures[k] for k in ("auroc", "auprc", "utility", "sensitivity", "ppv")},
            "gain_over_recalibrated": c.gain or None,
        }
        for c in cands
    }
    card = {
        "name": cfg.name,
        "version": cfg.version,
        "created_at": created,
        "sha256": hashlib.sha256(chosen.onnx).hexdigest(),
        "model_type": f"adapted at a site: {chosen.name} ({chosen.description})",
        "feature_set_version": FEATURE_SET_VERSION,
        "features": list(FEATURE_COLUMNS),
        "lineage": {
            "base": {"name": base.name, "version": base.version, "sha256": base.sha256},
            "dataset": dataset,
            "base_training_data_used": base_data is not None,
        },
        "local_data": {
            "stays": len(fit_ids) + len(sel_ids),
            "septic_stays": int(local.groupby("patient_id")["SepsisLabel"].max().sum()),
            "fit": {
                "stays": len(fit_ids),
                "septic_stays": septic_fit,
                "rows": int(in_fit.sum()),
                "rows_fitted": int(fit_rows.sum()),
            },
            "selection": {"stays": len(sel_ids), "septic_stays": int(sel.septic.sum()), "rows": int(in_sel.sum())},
            "split_rule": (
                f"by ICU admission time: the latest {cfg.selection_fraction:.0%} of stays are held out of every "
                "fit; thresholds, the pick among candidates and the figures below come from them"
            ),
        },
        "alert_budget": {
            "reference": {"name": base.name, "version": base.version, "sha256": base.sha256},
            "reference_alert_rate": budget_rate,
            "learned_candidates_max_ratio": cfg.max_alert_rate_ratio,
            "rule": (
                "the recalibrated base alerts on at most the reference's alert-hour rate on the selection hours; a "
                f"learned candidate on at most {cfg.max_alert_rate_ratio:g} times it (the promotion policy's "
                "max_alert_rate_ratio)"
            ),
            "alert_rate": alert_hour_rate(chosen.risk, chosen.threshold),
        },
        "operating_threshold": {"value": chosen.threshold, "thresholds": thresholds},
        "validation": {
            "stays": "the latest local stays (never fitted on); thresholds chosen on them too",
            "bootstrap": f"{cfg.n_boot} stay resamples, 95% CIs",
            "base": {"threshold": base.operating_threshold, **base_fig},
            "chosen": chosen.name,
            "pick_rule": (
                f"the first learned candidate in the a-priori order {', '.join(cfg.pick_order)} that is not "
                "significantly worse than the recalibrated base on the selection stays, on AUROC or on utility "
                f"(paired stay bootstrap, one-sided p < {cfg.alpha}); a later one replaces it only if significantly "
                "better than it on both (Bonferroni over those comparisons); the recalibrated base if every learned "
                f"candidate is significantly worse or fewer than {cfg.min_selection_septic} selection stays are septic"
            ),
            "pick_trail": trail,
            "candidates": summary,
        },
        "notes": notes,
        "config": asdict(cfg),
        "limitations": [
            "Validation figures are on the latest local stays, on which the threshold and the pick were also made: "
            "confirm on stays admitted after this package (the shadow comparison does).",
            "A small site sample gives wide intervals. The pick takes the recipe preferred before any figure unless "
            "the selection stays show it worse; it does not show that the candidate is better than the base: the "
            "shadow comparison on later stays and a clinical approver decide that.",
        ],
    }
    (pkg / "card.json").write_text(json.dumps(card, indent=2, default=float) + "\n")
    (pkg / "card.md").write_text(card_markdown(card))
    build_reference(sel_frame, chosen.risk, chosen.threshold).save(pkg / "reference.json")
    lineage = {"lineage": card["lineage"]}
    write_manifest(pkg, name=cfg.name, version=cfg.version, thresholds=thresholds, created_at=created, extra=lineage)
    ModelPackage.load(pkg)
    step(f"package in {pkg}")
    return AdaptResult(
        package_dir=pkg,
        chosen=chosen.name,
        candidates=summary,
        fit_ids=fit_ids,
        selection_ids=sel_ids,
        fitted_ids=fitted,
        onnx={c.name: c.onnx for c in cands},
        notes=notes,
    )


def _validate_and_pick(
    cands: list[Candidate], sel: Cohort, budget_rate: float, cfg: AdaptConfig, notes: list[str]
) -> tuple[Candidate, list[str]]:
    """Thresholds, figures and paired gains over the recalibrated base on the selection stays, then the pick."""
    for c in cands:
        cap = budget_rate if c.name == "recalibrated" else budget_rate * cfg.max_alert_rate_ratio
        c.threshold, _ = choose_threshold(sel, c.risk, robust=cfg.robust_threshold, max_alert_rate=cap)
        c.figures = evaluate_score(sel, c.risk, c.threshold, n_boot=cfg.n_boot, seed=cfg.seed)
    recal = cands[0]
    for c in cands[1:]:
        c.gain = paired_gain(sel, c.risk, c.threshold, recal.risk, recal.threshold, n_boot=cfg.n_boot, seed=cfg.seed)
    septic_sel = int(sel.septic.sum())
    allow = septic_sel >= cfg.min_selection_septic
    if not allow:
        notes.append(
            f"Only {septic_sel} septic stays to select on (fewer than {cfg.min_selection_septic}): the recalibrated "
            "base is kept whatever the other candidates scored."
        )
    return pick(
        cands,
        alpha=cfg.alpha,
        allow_learned=allow,
        order=cfg.pick_order,
        compare=lambda c, ref: paired_gain(
            sel, c.risk, c.threshold, ref.risk, ref.threshold, n_boot=cfg.n_boot, seed=cfg.seed
        ),
    )


def _ensemble(
    partners: list[Candidate], local_c: Candidate | None, sel: Cohort, X_sel: np.ndarray
) -> tuple[Candidate, str] | None:
    """The best partner (by validation AUROC: a pooled model, else the stacked one) and the local model averaged.

    Two models that err differently (one knows the physiology from many stays, the other the site's habits) can
    rank better together than either alone; whether they do is measured on the selection stays like any candidate.
    """
    if local_c is None or not partners:
        return None
    partner = max(partners, key=lambda c: _auroc(sel, c.risk))
    onx = average_onnx([partner.onnx, local_c.onnx], X_sel.shape[1])
    c = Candidate(
        "ensemble",
        f"the mean of the {partner.name} and local models' probabilities",
        onx,
        local_c.fitted_stays,
        local_c.fitted_septic,
    )
    c.risk = onnx_proba(onx, X_sel)
    ref = (partner.risk + local_c.risk) / 2
    diff = float(np.max(np.abs(ref - c.risk))) if len(ref) else 0.0
    if diff > 1e-5:
        raise AssertionError(f"ensemble ONNX graph differs from its members by {diff:.3g}")
    return c, partner.name


def _thin_quiet_stays(
    df: pd.DataFrame, fraction: float, seed: int, *, max_quiet: int | None = None
) -> tuple[pd.DataFrame, np.ndarray, str]:
    """Every septic stay and a seeded ``fraction`` of the others (at most ``max_quiet``), weighted by the inverse.

    The kept quiet stays weigh the inverse of the share kept, so the totals are unchanged.
    """
    septic = df.groupby("patient_id")["SepsisLabel"].max()
    quiet = np.sort(septic.index[septic == 0].to_numpy().astype(str))
    n_keep = max(1, round(len(quiet) * min(fraction, 1.0)))
    if max_quiet is not None:
        n_keep = min(n_keep, max_quiet)
    if n_keep >= len(quiet):
        return df, np.ones(len(df)), "every stay"
    keep = np.random.default_rng(seed).choice(quiet, size=n_keep, replace=False)
    ids = df["patient_id"].astype(str)
    df = df.loc[ids.isin(set(keep)) | ids.isin(set(septic.index[septic == 1].astype(str)))].reset_index(drop=True)
    is_quiet = df["patient_id"].astype(str).isin(set(keep)).to_numpy()
    w_quiet = len(quiet) / n_keep
    w = np.where(is_quiet, w_quiet, 1.0)
    return df, w, f"all septic stays and {n_keep} of {len(quiet)} others, weighted {w_quiet:.3g}"


def _thin_quiet_rows(
    pid: np.ndarray, y: np.ndarray, eligible: set[str], *, max_quiet: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(rows kept, row weights, description or None when nothing is thinned) for the local fitting rows.

    Among the ``eligible`` stays, the quiet ones (never septic) beyond ``max_quiet`` are dropped by a seeded draw
    and the kept ones weighted by the inverse of the share kept; every other row is kept with weight 1.
    """
    rows = pd.DataFrame({"pid": pid, "y": y})
    flag = rows.groupby("pid")["y"].max()
    quiet = np.sort([p for p in flag.index[flag == 0].astype(str) if p in eligible])
    keep_rows, weights = np.ones(len(pid), bool), np.ones(len(pid))
    if max_quiet is None or len(quiet) <= max_quiet:
        return keep_rows, weights, None
    keep = set(np.random.default_rng(seed).choice(quiet, size=max_quiet, replace=False))
    dropped = data.rows_of(pid, set(quiet) - keep)
    keep_rows[dropped] = False
    weights[data.rows_of(pid, keep)] = len(quiet) / max_quiet
    return (
        keep_rows,
        weights,
        f"{max_quiet} of {len(quiet)} quiet stays fitted on, weighted {len(quiet) / max_quiet:.3g}",
    )


def _check_graph(name: str, ref: np.ndarray, got: np.ndarray) -> None:
    diff = float(np.max(np.abs(ref - got))) if len(ref) else 0.0
    if diff > 1e-5:
        raise AssertionError(f"{name} ONNX graph differs from its model by {diff:.3g}")


def _auroc(cohort: Cohort, risk: np.ndarray) -> float:
    return float(evaluate_score(cohort, risk, 1.0, n_boot=0)["auroc"]["value"])


def _dataset_lineage(manifest_path: Path | None) -> dict[str, Any] | None:
    if manifest_path is None or not manifest_path.is_file():
        return None
    m = json.loads(manifest_path.read_text())
    return {
        "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        "content_sha256": m.get("content_sha256"),
        "window": m.get("window"),
    }


def _fmt(fig: dict[str, Any]) -> str:
    ci = fig.get("ci") or [float("nan"), float("nan")]
    return f"{fig['value']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def _gain(c: dict[str, Any], k: str) -> str:
    g = (c.get("gain_over_recalibrated") or {}).get(k)
    return f"{g['gain']:+.3f} ({g['p_one_sided']:.3f})" if g else ""


def card_markdown(card: dict[str, Any]) -> str:
    """Readable Markdown of an adapted package's card."""
    v = card["validation"]
    lines = [
        f"# Model card: {card['name']} version {card['version']} (adapted at a site)",
        "",
        f"{card['model_type']}. Model sha256 `{card['sha256']}`; created {card['created_at']}.",
        "",
        "## Lineage",
        "",
        f"Base: {card['lineage']['base']['name']} version {card['lineage']['base']['version']} "
        f"(sha256 `{card['lineage']['base']['sha256']}`). Dataset: `{json.dumps(card['lineage']['dataset'])}`.",
        "",
        "## Local data",
        "",
        f"{card['local_data']['stays']} stays ({card['local_data']['septic_stays']} septic); "
        f"{card['local_data']['split_rule']}.",
        "",
        f"## Validation on the latest local stays ({v['bootstrap']})",
        "",
        "| model | AUROC | normalised utility | threshold | AUROC gain (p) | utility gain (p) |",
        "|---|---|---|---|---|---|",
        f"| base | {_fmt(v['base']['auroc'])} | {_fmt(v['base']['utility'])} | {v['base']['threshold']:.4g} | | |",
        *(
            f"| {n}{' (chosen)' if n == v['chosen'] else ''} | {_fmt(c['validation']['auroc'])} | "
            f"{_fmt(c['validation']['utility'])} | {c['threshold']:.4g} | {_gain(c, 'auroc')} | "
            f"{_gain(c, 'utility')} |"
            for n, c in v["candidates"].items()
        ),
        "",
        f"Pick rule: {v['pick_rule']}.",
        "",
        *(f"- {x}" for x in v.get("pick_trail", [])),
        "",
        *(f"Note: {x}" for x in card.get("notes", [])),
        "",
        "## Limitations",
        "",
        *(f"- {x}" for x in card["limitations"]),
        "",
    ]
    return "\n".join(lines)
