"""Export a fitted scikit-learn classifier to ONNX, with the parity check that is part of every export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
PARITY_TOLERANCE = 1e-5


class ParityError(AssertionError):
    """The ONNX model's probabilities differ from scikit-learn's beyond the tolerance."""


def snap_thresholds_to_float32(clf: Any) -> int:
    """Round a fitted HistGradientBoosting model's split thresholds down to float32 values, in place.

    scikit-learn splits at float64 midpoints between bin edges; ONNX tree ensembles compare in float32, so a
    midpoint that rounds *up* to the next float32 value sends inputs equal to that value left in ONNX and right in
    scikit-learn (seen: a 0.02 probability difference). Replacing each threshold t by the largest float32 <= t
    changes nothing for float32 inputs (no float32 lies in between) and makes both runtimes agree exactly.
    Returns the number of thresholds changed.
    """
    changed = 0
    for stage in getattr(clf, "_predictors", []):
        for predictor in stage:
            nodes = predictor.nodes
            t = nodes["num_threshold"]
            t32 = t.astype(np.float32)
            up = t32.astype(np.float64) > t
            t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
            snapped = t32.astype(np.float64)
            changed += int(np.count_nonzero(snapped != t))
            nodes["num_threshold"] = snapped
    return changed


def to_onnx_bytes(clf: Any, n_features: int) -> bytes:
    """The classifier as an ONNX model: float32 input ``features`` [n, k]; outputs label and probabilities [n, 2]."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(
        clf,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        options={id(clf): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    return onx.SerializeToString()


def onnx_proba(model: bytes | Path, X: np.ndarray) -> np.ndarray:
    """Positive-class probabilities from an ONNX model via onnxruntime (one thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    src = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(X, dtype=np.float32)})
    return np.asarray(out[1])[:, 1].astype(np.float64)


def parity(clf: Any, model: bytes, X: np.ndarray) -> float:
    """Max |scikit-learn - onnxruntime| over the rows of X (float32); raises ParityError above the tolerance."""
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    ref = clf.predict_proba(X32)[:, 1]
    got = onnx_proba(model, X32)
    diff = float(np.max(np.abs(ref - got))) if len(X32) else 0.0
    if not diff < PARITY_TOLERANCE:
        raise ParityError(f"ONNX parity failed: max abs difference {diff:.3g} >= {PARITY_TOLERANCE}")
    return diff
