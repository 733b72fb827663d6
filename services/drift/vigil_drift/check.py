"""``vigil drift check``: the detector core over two PhysioNet-format files.

The reference file becomes a :class:`~vigil_scoring.reference.Reference` (as a model package would carry); the
current file is streamed through the same monitors the service runs, in time order. PhysioNet stays have no
calendar times, so the current file is laid on a synthetic timeline: stays are admitted one after another in
file order at a constant interval chosen so that about ``census`` stays are in the ICU at once (a unit-sized
census interleaves patients the way a live feed does), and each row happens at admission + its hour. The
first ``warmup`` hours of that timeline (the admission burst, when only early stay-hours exist) are not judged.

Scores, when the files carry a score column, feed the prediction monitor; with ``SepsisLabel`` they are
labelled and released when their stay ends (delayed labels, as in production), feeding the performance,
calibration and fairness monitors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from vigil_contracts.events import AlertRaised
from vigil_contracts.vocabulary import MEASUREMENTS
from vigil_drift.config import Thresholds
from vigil_drift.core import DriftCore, ScoreBatch
from vigil_scoring.reference import LABEL_COLUMN, Reference, build_reference, subgroups_of

T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
HOUR = 3600.0


def read_rows(path: str | Path) -> pd.DataFrame:
    """A PhysioNet-format parquet (or .csv / .psv) as a frame."""
    p = Path(path)
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    return pd.read_csv(p, sep="|" if p.suffix == ".psv" else ",")


def on_timeline(df: pd.DataFrame, census: int = 100) -> pd.DataFrame:
    """The rows in time order on a synthetic timeline (column ``t``, epoch seconds), with ``stay_end``."""
    stays = pd.unique(df["patient_id"])
    sizes = df.groupby("patient_id", sort=False).size()
    interval = float(sizes.mean()) / max(census, 1)
    admit = pd.Series(np.arange(len(stays)) * interval, index=stays)
    out = df.copy()
    hours = out["hour"].to_numpy(dtype=float)
    out["t"] = T0 + (admit.reindex(out["patient_id"]).to_numpy() + hours) * HOUR
    last = out.groupby("patient_id", sort=False)["t"].transform("max")
    out["stay_end"] = last.to_numpy()
    return out.sort_values(["t", "patient_id"], kind="mergesort").reset_index(drop=True)


def feature_matrix(df: pd.DataFrame, features: tuple[str, ...]) -> np.ndarray:
    """The rows' values in the given canonical feature order (NaN where absent or not measured)."""
    by_name = {m.name: m for m in MEASUREMENTS}
    cols = []
    for f in features:
        m = by_name[f]
        col = m.column if m.column in df.columns else f if f in df.columns else None
        cols.append(df[col].to_numpy(dtype=float, na_value=np.nan) if col else np.full(len(df), np.nan))
    return np.column_stack(cols) if cols else np.empty((len(df), 0))


@dataclass
class CheckResult:
    """What a check produced."""

    alerts: list[AlertRaised] = field(default_factory=list)
    rows: int = 0
    start: float = T0
    end: float = T0
    core: DriftCore | None = None


def _chunks(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def run_check(
    reference_df: pd.DataFrame,
    current_df: pd.DataFrame,
    *,
    thresholds: Thresholds | None = None,
    score_column: str | None = None,
    threshold: float | None = None,
    model_name: str = "model",
    census: int = 100,
    warmup_hours: float = 48.0,
    chunk_rows: int = 20000,
    reference: Reference | None = None,
) -> CheckResult:
    """Stream ``current_df`` through the detector core against ``reference_df``'s reference."""
    scored = score_column is not None and score_column in current_df.columns
    if reference is None:
        ref_scores = reference_df[score_column].to_numpy(dtype=float) if scored and score_column else None
        reference = build_reference(reference_df, ref_scores, threshold)
    th = thresholds or Thresholds()
    cur = on_timeline(current_df, census)
    warm_rows = int(np.searchsorted(cur["t"].to_numpy(), T0 + warmup_hours * HOUR))
    th = th.model_copy(update={"warmup_rows": max(th.warmup_rows, warm_rows)})
    core = DriftCore(reference, inputs_thresholds=th, model_thresholds={model_name: th})
    feats = core.inputs.features
    values = feature_matrix(cur, feats)
    times = cur["t"].to_numpy(dtype=float)
    result = CheckResult(rows=len(cur), start=float(times[0]) if len(times) else T0, core=core)
    result.end = float(times[-1]) if len(times) else T0
    groups = subgroups_of(cur)
    stay_ids = cur["patient_id"].to_numpy()
    labelled = scored and LABEL_COLUMN in cur.columns
    if scored and score_column:
        probs = cur[score_column].to_numpy(dtype=float)
        thr = threshold if threshold is not None else (reference.scores.threshold if reference.scores else None)
        alerts_flag = probs >= (thr if thr is not None else 0.5)
        latency = cur["latency_ms"].to_numpy(dtype=float) if "latency_ms" in cur else None
    if labelled:
        # labels become known when the stay ends: release each stay's labelled scores at its end time
        order = np.argsort(cur["stay_end"].to_numpy(), kind="mergesort")
        release_t = cur["stay_end"].to_numpy()[order]
        y = cur[LABEL_COLUMN].to_numpy(dtype=float)[order] > 0.5
        released = 0
    for sl in _chunks(len(cur), chunk_rows):
        t_end = times[sl.stop - 1]
        if labelled:
            stop = int(np.searchsorted(release_t, t_end, side="right"))
            if stop > released:
                idx = order[released:stop]
                result.alerts += core.labels(
                    model_name,
                    probs[idx],
                    y[released:stop],
                    alerts_flag[idx],
                    release_t[released:stop],
                    {k: v[idx] for k, v in groups.items()},
                    stays=stay_ids[idx],
                )
                released = stop
        result.alerts += core.rows(values[sl], times[sl])
        if scored:
            result.alerts += core.scores(
                ScoreBatch(
                    model=model_name,
                    version=None,
                    probability=probs[sl],
                    alert=alerts_flag[sl],
                    times=times[sl],
                    latency_ms=latency[sl] if latency is not None else None,
                )
            )
    result.alerts += core.inputs.finish(result.end)
    return result
