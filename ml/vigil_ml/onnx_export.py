"""Export a fitted scikit-learn classifier to ONNX, with the parity check that is part of every export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
PARITY_TOLERANCE = 1e-5


class ParityError(AssertionError):
    """The ONNX model's probabilities differ from scikit-learn's beyond the tolerance."""


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
