"""The rows a package's drift reference (``reference.json``) is built from: its validation split.

The reference is built from the package's own validation split (held out of training) of PhysioNet-format rows,
with the model's scores on them, by :func:`vigil_scoring.reference.build_reference`: per-feature value bins and
samples, missingness and measurement frequency, and the score baseline. The split is recomputed from the
package's recorded seed and fractions, and checked against the digest of the validation ids in its card.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd

from vigil_ml import data


def validation_rows(package: Path, data_path: Path) -> pd.DataFrame:
    """The package's validation split, recomputed and verified against the card's id digest."""
    card = json.loads((package / "card.json").read_text())
    training = card["training_data"]
    found = re.search(r"seed (\d+)", training.get("split_rule", ""))
    if found is None:
        raise ValueError(f"the card of {package} does not record its split seed")
    seed = int(found.group(1))
    df = data.load(data_path)
    if data.SAMPLE_PATH.exists():
        sample_ids = pd.read_parquet(data.SAMPLE_PATH, columns=["patient_id"])["patient_id"].astype(str).unique()
        df = df.loc[~df["patient_id"].isin(sample_ids)].reset_index(drop=True)
    split = data.split_patients(df, seed=seed, valid=0.15, test=0.15)
    expected = training["split"]["valid"]["ids_sha256"]
    got = hashlib.sha256("\n".join(sorted(map(str, split.valid))).encode()).hexdigest()
    if got != expected:
        raise ValueError(f"validation split of {package} does not reproduce (seed {seed}): {got} != {expected}")
    return df.loc[df["patient_id"].isin(split.valid)].reset_index(drop=True)
