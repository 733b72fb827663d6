"""Model packages: an ONNX model with its card, manifest and checksums, loaded and scored with onnxruntime.

A package is a folder::

    model.onnx      the model (float32 input [n, k], outputs label and probabilities [n, 2])
    card.json       model card (intended use, data and citation, metrics with CIs, threshold, subgroups, limits)
    card.md         the card for people
    manifest.json   name, version, feature_set_version, input_schema, sha256 of model.onnx, sha256 of every file,
                    created_at, thresholds {operating, medium, high}
    reference.json  optional: reference distributions for drift monitoring

The repository ships a default package (``default_package_path()``, version "4") trained on PhysioNet 2019
set A, so the stack runs on a fresh clone, and three more: "1" (the default until session 11: version 4 is its
recipe with stronger regularisation, which ranked better across set A's ICU units in both directions, see
docs/model.md), "2" and "3" (the demo's production model and candidate).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vigil_contracts.registry import PackageRejected
from vigil_scoring.features import FEATURE_COLUMNS, FEATURE_SET_VERSION

ASSETS = Path(__file__).resolve().parent / "assets" / "models"
DEFAULT_MODEL_NAME = "sepsis"
DEFAULT_VERSION = "4"
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"


class ModelPackageError(Exception):
    """A package is malformed, tampered with or incompatible with this feature code."""


def sha256_of_file(path: Path) -> str:
    """Hex sha256 of one file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_of_dir(path: str | Path) -> str:
    """A folder's digest: sha256 over its files' relative paths and sha256s, in sorted order.

    A tarball (a file) is digested as the file itself.
    """
    p = Path(path)
    if p.is_file():
        return sha256_of_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{sha256_of_file(f)}\n".encode())
    return h.hexdigest()


def default_package_path(version: str = DEFAULT_VERSION, name: str = DEFAULT_MODEL_NAME) -> Path:
    """The committed default package of ``name`` at ``version`` (trained on PhysioNet 2019 set A)."""
    return ASSETS / name / version


@dataclass
class ModelPackage:
    """A loaded, verified model package ready to score feature matrices."""

    path: Path
    name: str
    version: str
    sha256: str
    feature_set_version: str
    columns: tuple[str, ...]
    thresholds: dict[str, float]
    card: dict[str, Any]
    manifest: dict[str, Any]
    _session: Any = field(default=None, repr=False)
    _input: str = field(default="", repr=False)

    @classmethod
    def load(cls, path: str | Path, *, expected_sha256: str | None = None) -> ModelPackage:
        """Load and verify a package folder.

        Checks every file against the manifest's sha256, ``expected_sha256`` (when given) against the model's
        sha256 or the folder digest (:func:`sha256_of_dir`), and that the input columns are this code's
        FEATURE_COLUMNS when the feature-set version matches. A package of another feature-set version loads (a
        registry may hold it) but :meth:`predict` refuses feature vectors of a different width.
        """
        p = Path(path)
        try:
            manifest = json.loads((p / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise ModelPackageError(f"cannot read {MANIFEST} in {p}: {e}") from e
        model = p / MODEL_FILE
        if not model.is_file():
            raise ModelPackageError(f"{MODEL_FILE} missing in {p}")
        actual = sha256_of_file(model)
        if actual != manifest.get("sha256"):
            raise ModelPackageError("model.onnx does not match the manifest's sha256")
        for fname, digest in manifest.get("files", {}).items():
            f = p / fname
            if not f.is_file() or sha256_of_file(f) != digest:
                raise ModelPackageError(f"{fname} is missing or does not match the manifest")
        if expected_sha256 is not None and expected_sha256 not in (actual, sha256_of_dir(p)):
            raise ModelPackageError("package does not match the expected sha256")
        columns = tuple(manifest.get("input_schema", {}).get("columns", []))
        fsv = str(manifest.get("feature_set_version", ""))
        if fsv == FEATURE_SET_VERSION and columns != FEATURE_COLUMNS:
            raise ModelPackageError("input_schema columns differ from FEATURE_COLUMNS of the same feature-set version")
        thresholds = {k: float(v) for k, v in manifest.get("thresholds", {}).items()}
        if "operating" not in thresholds:
            raise ModelPackageError("manifest has no operating threshold")
        thresholds.setdefault("medium", thresholds["operating"])
        thresholds.setdefault("high", thresholds["operating"])
        card_path = p / "card.json"
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        return cls(
            path=p,
            name=str(manifest["name"]),
            version=str(manifest["version"]),
            sha256=actual,
            feature_set_version=fsv,
            columns=columns,
            thresholds=thresholds,
            card=card,
            manifest=manifest,
        )

    def _sess(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            # One thread: scorers run several models side by side on small machines; batching gives the speed.
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(
                str(self.path / MODEL_FILE), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            self._input = self._session.get_inputs()[0].name
        return self._session

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Probabilities of the positive class (float64, shape (n,)) for a float32 matrix (n, len(columns))."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.shape[1] != len(self.columns):
            raise ModelPackageError(f"expected {len(self.columns)} features, got {X.shape[1]}")
        sess = self._sess()
        outputs = sess.run(None, {self._input: np.ascontiguousarray(X)})
        proba = outputs[1] if len(outputs) > 1 else outputs[0]
        proba = np.asarray(proba)
        return (proba[:, 1] if proba.ndim == 2 else proba).astype(np.float64)

    @property
    def operating_threshold(self) -> float:
        """The card's operating threshold: an alert is raised at or above it."""
        return self.thresholds["operating"]

    def alert(self, p: float) -> bool:
        """True when the probability reaches the operating threshold."""
        return bool(p >= self.thresholds["operating"])

    def risk_level(self, p: float) -> Literal["low", "medium", "high"]:
        """The risk band: "low" below ``medium``, "high" at or above ``high``, else "medium"."""
        if p >= self.thresholds["high"]:
            return "high"
        if p >= self.thresholds["medium"]:
            return "medium"
        return "low"


def write_manifest(
    path: Path,
    *,
    name: str,
    version: str,
    thresholds: dict[str, float],
    created_at: str,
    feature_set_version: str = FEATURE_SET_VERSION,
    columns: tuple[str, ...] = FEATURE_COLUMNS,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write manifest.json for the files already in ``path`` (model.onnx first) and return it."""
    files = {f.name: sha256_of_file(f) for f in sorted(path.iterdir()) if f.is_file() and f.name != MANIFEST}
    manifest = {
        "name": name,
        "version": version,
        "feature_set_version": feature_set_version,
        "input_schema": {"columns": list(columns), "dtype": "float32"},
        "sha256": files[MODEL_FILE],
        "files": files,
        "created_at": created_at,
        "thresholds": thresholds,
        **(extra or {}),
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_package(
    path: Path, *, artifact_sha256: str | None, package_sha256: str | None, archive_sha: str | None = None
) -> ModelPackage:
    """Load a package folder, refusing it unless every digest the registry gave matches it."""
    try:
        package = ModelPackage.load(path)
    except Exception as error:
        raise PackageRejected(f"package does not load: {type(error).__name__}: {error}") from error
    accepted = {package.sha256, archive_sha, sha256_of_dir(path)} - {None}
    for given in (artifact_sha256, package_sha256):
        if given and given not in accepted:
            raise PackageRejected("sha256 mismatch: the package is not the one the registry announced")
    if package.feature_set_version != FEATURE_SET_VERSION or tuple(package.columns) != tuple(FEATURE_COLUMNS):
        # A package of another feature-set version loads (a registry may hold it) but this scorer cannot feed it.
        raise PackageRejected("the package's input schema is not this scorer's feature pipeline")
    return package
