"""Helpers for the benchmarks and the tests: stays as events, a model package, a fake registry.

Not used by the service itself (scikit-learn and skl2onnx are imported only when a package has to be built).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vigil_contracts.events import EncounterRecorded, ObservationRecorded
from vigil_scoring.features import FEATURE_COLUMNS, offline_features
from vigil_scoring.model_package import ModelPackage, default_package_path, write_manifest
from vigil_scoring.physionet import ICU_EPOCH, stay_events

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "physionet2019_setA.parquet"


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder for a bench's service logs: removed when the block finishes, kept when it fails.

    Kept on failure (its path on stderr) because the services' logs are then what explains it; removed otherwise,
    since a bench repeated for a comparison would leave a folder of logs and model caches behind at every turn.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException:
        print(f"bench: logs kept in {path}", file=sys.stderr)
        raise
    shutil.rmtree(path, ignore_errors=True)


def load_stays(n: int, *, first: int = 1, data: Path = DATA) -> pd.DataFrame:
    """``n`` consecutive set A stays (p000001 onward from ``first``), PhysioNet format."""
    ids = [f"p{i:06d}" for i in range(first, first + n)]
    return pd.read_parquet(data, filters=[("patient_id", "in", ids)])


def encounter_of(patient_id: str, tag: str = "") -> str:
    """The encounter id a test gives a stay."""
    return f"enc-{tag}{patient_id}"


def events_of(stays: pd.DataFrame, *, tag: str = "") -> list[EncounterRecorded | ObservationRecorded]:
    """All stays' canonical events, each stay in time order, stays interleaved hour by hour like a live feed."""
    per_stay = [
        stay_events(stay, encounter=encounter_of(str(pid), tag), patient=str(pid), icu_admitted_at=ICU_EPOCH)
        for pid, stay in stays.groupby("patient_id", sort=True)
    ]
    keyed = []
    for s, evs in enumerate(per_stay):
        for i, e in enumerate(evs):
            at = e.observed_at if isinstance(e, ObservationRecorded) else e.occurred_at
            keyed.append((at, s, i, e))
    keyed.sort(key=lambda t: (t[0], t[1], t[2]))
    return [e for *_, e in keyed]


def offline_predictions(stays: pd.DataFrame, package: ModelPackage, *, tag: str = "") -> dict[tuple[str, int], float]:
    """``vigil model predict``'s answer for every stay-hour: ModelPackage.predict on offline_features."""
    X = offline_features(stays).to_numpy(dtype=np.float32)
    p = package.predict(X)
    return {
        (encounter_of(str(pid), tag), int(h)): float(v)
        for pid, h, v in zip(stays["patient_id"], stays["hour"], p, strict=True)
    }


def build_package(dest: Path, *, version: str, n_stays: int = 400, seed: int = 0, data: Path = DATA) -> Path:
    """Train a small HistGradientBoosting model on set A stays and write it as a model package at ``dest``."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from vigil_ml.onnx_export import to_onnx_bytes

    df = load_stays(n_stays, first=1000 + 500 * seed, data=data)
    X = offline_features(df).to_numpy(dtype=np.float32)
    y = df["SepsisLabel"].to_numpy()
    clf = HistGradientBoostingClassifier(max_iter=40 + 20 * seed, max_depth=4, early_stopping=False, random_state=seed)
    clf.fit(X, y)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model.onnx").write_bytes(to_onnx_bytes(clf, len(FEATURE_COLUMNS)))
    (dest / "card.json").write_text(json.dumps({"name": "sepsis", "version": version, "intended_use": "tests only"}))
    write_manifest(
        dest,
        name="sepsis",
        version=version,
        thresholds={"operating": 0.05, "medium": 0.05, "high": 0.2},
        created_at=datetime.now(UTC).isoformat(),
    )
    return dest


def package_path(version: str = "1", *, cache: Path | None = None) -> Path:
    """The repository's default package of ``version`` when committed, else a small one built once into ``cache``."""
    default = default_package_path(version)
    if (default / "manifest.json").exists():
        return default
    root = cache or Path(__file__).resolve().parents[3] / ".vigil" / "scorer" / "test-packages"
    target = root / version
    if not (target / "manifest.json").exists():
        build_package(target, version=version, seed=int(version) - 1 if version.isdigit() else 0)
    return target


def tarball(folder: Path) -> bytes:
    """A package folder as a gzipped tar (the registry's artifact form)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for f in sorted(folder.iterdir()):
            archive.add(f, arcname=f.name)
    return buffer.getvalue()


class FakeRegistry:
    """A tiny HTTP registry: ``GET /models/{name}/production`` and ``GET /artifacts/{version}.tar.gz``."""

    def __init__(self) -> None:
        self.production: dict[str, Any] | None = None
        self.artifacts: dict[str, bytes] = {}
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def publish(self, version: str, folder: Path, *, production: bool = True) -> dict[str, Any]:
        """Store a package and (by default) make it the production version; returns its lifecycle facts."""
        data = tarball(folder)
        self.artifacts[version] = data
        facts = {
            "model_name": "sepsis",
            "version": version,
            "artifact_sha256": ModelPackage.load(folder).sha256,
            "package_sha256": hashlib.sha256(data).hexdigest(),
            "artifact_url": f"/artifacts/{version}.tar.gz",
        }
        if production:
            self.production = facts
        return facts

    @contextmanager
    def serve(self) -> Iterator[FakeRegistry]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/models/") and self.path.endswith("/production"):
                    if registry.production is None:
                        self._send(404, b'{"detail": "no production version"}', "application/json")
                    else:
                        self._send(200, json.dumps(registry.production).encode(), "application/json")
                elif self.path.startswith("/artifacts/"):
                    version = self.path.rsplit("/", 1)[-1].removesuffix(".tar.gz")
                    data = registry.artifacts.get(version)
                    self._send(200 if data else 404, data or b"", "application/gzip")
                else:
                    self._send(404, b"{}", "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
