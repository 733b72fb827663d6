"""Data helpers: loading PhysioNet-format parquet, content hashes, patient-level splits and the bundled sample."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_SET_A = REPO_ROOT.parent / "shared" / "data" / "physionet2019_setA.parquet"
"""Set A in the read-only kit beside the repository (absent on a user's fresh clone)."""
SAMPLE_PATH = REPO_ROOT / "data" / "sample" / "physionet_sample.parquet"
"""The bundled sample of real set A stays (held out of the default model's training)."""

SAMPLE_SEED = 20190
SAMPLE_STAYS = 300
SAMPLE_SEPTIC_FRACTION = 0.15


def load(path: str | Path) -> pd.DataFrame:
    """A PhysioNet-format parquet, sorted by patient and hour (the order the feature code expects)."""
    df = pd.read_parquet(path)
    missing = {"patient_id", "hour"} - set(df.columns)
    if missing:
        raise ValueError(f"not PhysioNet-format rows: missing {sorted(missing)}")
    df["patient_id"] = df["patient_id"].astype(str)
    return df.sort_values(["patient_id", "hour"], kind="stable").reset_index(drop=True)


def rows_of(patient_ids: Any, stays: Any) -> np.ndarray:
    """Boolean mask of the rows whose stay id is among ``stays``.

    pandas' hash-based ``isin``: ``np.isin`` on string (object) ids compares every row with every id, which on
    10,000 stays (390,000 rows, 7,500 ids) cost about two minutes of CPU in `vigil model adapt` alone.
    """
    return pd.Series(np.asarray(patient_ids), copy=False).isin(set(stays)).to_numpy()


def file_sha256(path: str | Path) -> str:
    """sha256 of a data file (recorded with every run instead of any patient identifier)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def septic_stays(df: pd.DataFrame) -> pd.Series:
    """Per patient: True when any hour is labelled septic."""
    return df.groupby("patient_id", sort=True)["SepsisLabel"].max().astype(bool)


@dataclass(frozen=True)
class Split:
    """Patient ids of each part; no patient is in two parts."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def split_patients(df: pd.DataFrame, *, seed: int, valid: float = 0.15, test: float = 0.15) -> Split:
    """A seeded split by patient, stratified by whether the stay is septic (never by row)."""
    sep = septic_stays(df)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    for flag in (False, True):
        ids = np.sort(sep.index[sep.to_numpy() == flag].to_numpy())
        ids = ids[rng.permutation(len(ids))]
        n_test, n_valid = round(len(ids) * test), round(len(ids) * valid)
        parts["test"].append(ids[:n_test])
        parts["valid"].append(ids[n_test : n_test + n_valid])
        parts["train"].append(ids[n_test + n_valid :])
    return Split(**{k: np.sort(np.concatenate(v)) for k, v in parts.items()})


def sample_patients(df: pd.DataFrame, *, n: int = SAMPLE_STAYS, seed: int = SAMPLE_SEED) -> np.ndarray:
    """A seeded random draw of ``n`` patients, stratified so that about 15% have sepsis (set A: 8.8%)."""
    sep = septic_stays(df)
    rng = np.random.default_rng(seed)
    septic = np.sort(sep.index[sep.to_numpy()].to_numpy())
    other = np.sort(sep.index[~sep.to_numpy()].to_numpy())
    n_sep = round(n * SAMPLE_SEPTIC_FRACTION)
    chosen = np.concatenate(
        [rng.choice(septic, size=n_sep, replace=False), rng.choice(other, size=n - n_sep, replace=False)]
    )
    return np.sort(chosen)
