"""Row-by-row predictions through the serving path: shared feature code, then the package's ONNX session."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vigil_scoring.features import offline_features
from vigil_scoring.model_package import ModelPackage


def predict_rows(package: ModelPackage, df: pd.DataFrame) -> pd.DataFrame:
    """patient_id, hour, risk (probability) and alert (0/1 at the package's operating threshold), one per input row.

    Rows keep the input's order; features are computed per stay over all rows given, so each row sees only its
    stay's earlier and same-hour data.
    """
    X = offline_features(df).to_numpy(dtype=np.float32)
    risk = package.predict(X)
    return pd.DataFrame(
        {
            "patient_id": df["patient_id"].astype(str).to_numpy(),
            "hour": df["hour"].to_numpy(),
            "risk": risk,
            "alert": (risk >= package.operating_threshold).astype(np.int8),
        }
    )
