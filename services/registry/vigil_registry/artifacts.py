"""Model packages: validation, the content-addressed store, and the archive scorers download.

A package is a folder (see shared/scoring/vigil_scoring/model_package.py): ``model.onnx``, ``card.json``, ``card.md``,
``manifest.json`` and optionally ``reference.json``. The registry checks the manifest's digests itself (it does
not load the model: onnxruntime is the scorers' dependency, not the registry's) and stores the folder under
its package digest: ``<root>/<digest[:2]>/<digest>/``. The package digest is the sha256 of the sorted lines
``<relative path> NUL <file sha256> LF``, so it changes when any file does; ``artifact_sha256`` is the sha256 of
``model.onnx``, which ``ModelPackage.load(path, expected_sha256=...)`` verifies on the scorer's side.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vigil_registry.errors import InvalidPackage, StoreCorrupted

REQUIRED_FILES = ("model.onnx", "card.json", "manifest.json")
REQUIRED_MANIFEST_KEYS = ("name", "version", "feature_set_version", "input_schema", "sha256")
LINEAGE_KEYS = (
    "training_data_sha256",
    "training_data_hash",
    "training_data",
    "parameters",
    "run_parameters",
    "hyperparameters",
    "run",
    "trained_at",
    "code_version",
)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_digest(folder: Path) -> str:
    """The package's content address: a digest over every file's relative path and sha256."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        lines.append(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@dataclass
class PackageInfo:
    """What the registry records from a valid package."""

    folder: Path
    name: str
    version: str
    artifact_sha256: str
    package_sha256: str
    feature_set_version: str
    input_schema: dict[str, Any]
    thresholds: dict[str, Any]
    card: dict[str, Any]
    lineage: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InvalidPackage(f"{path.name} is not valid JSON: {type(error).__name__}") from error
    if not isinstance(value, dict):
        raise InvalidPackage(f"{path.name} must hold a JSON object")
    return value


def read_package(folder: Path) -> PackageInfo:
    """Validate a package folder: required files, manifest keys, and every digest the manifest lists."""
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise InvalidPackage(f"package lacks {', '.join(missing)}")
    manifest = _load_json(folder / "manifest.json")
    absent = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if absent:
        raise InvalidPackage(f"manifest.json lacks {', '.join(absent)}")
    onnx_sha = file_sha256(folder / "model.onnx")
    if onnx_sha != manifest["sha256"]:
        raise InvalidPackage("model.onnx does not match the manifest's sha256")
    files = manifest.get("files") or {}
    if not isinstance(files, dict):
        raise InvalidPackage("manifest.json 'files' must map file names to sha256 digests")
    for name, digest in files.items():
        target = folder / name
        if not _inside(folder, target) or not target.is_file():
            raise InvalidPackage(f"manifest lists {name!r}, which the package lacks")
        if file_sha256(target) != digest:
            raise InvalidPackage(f"{name} does not match the manifest's digest")
    schema = manifest["input_schema"]
    if not isinstance(schema, dict) or not isinstance(schema.get("columns"), list) or not schema["columns"]:
        raise InvalidPackage("manifest input_schema must hold a non-empty 'columns' list")
    card = _load_json(folder / "card.json")
    # Lineage may sit in the card or the manifest, as a "lineage" object or as top-level keys: take all.
    lineage: dict[str, Any] = {}
    for source in (manifest, card):
        if isinstance(source.get("lineage"), dict):
            lineage.update(source["lineage"])
        lineage.update({k: source[k] for k in LINEAGE_KEYS if k in source})
    metrics = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    tags = [str(t) for t in card.get("tags", []) if isinstance(t, str | int | float)]
    name, version = str(manifest["name"]), str(manifest["version"])
    if not name or not version or "/" in name or "/" in version:
        raise InvalidPackage("manifest name and version must be non-empty and contain no '/'")
    return PackageInfo(
        folder=folder,
        name=name,
        version=version,
        artifact_sha256=onnx_sha,
        package_sha256=package_digest(folder),
        feature_set_version=str(manifest["feature_set_version"]),
        input_schema=schema,
        thresholds=dict(manifest.get("thresholds") or {}),
        card=card,
        lineage=lineage,
        metrics=dict(metrics or {}),
        tags=tags,
    )


def _inside(root: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _safe_member(name: str) -> bool:
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and not name.startswith("\\")


def unpack_archive(data: bytes, dest: Path, *, max_bytes: int) -> Path:
    """Extract a tar.gz, tar or zip upload into ``dest``; returns the folder holding manifest.json.

    Refuses absolute paths, ``..``, links and devices (a hostile archive must not write outside ``dest``).
    """
    total = 0
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if not _safe_member(info.filename):
                    raise InvalidPackage(f"unsafe path in archive: {info.filename!r}")
                total += info.file_size
                if total > max_bytes:
                    raise InvalidPackage("archive too large once extracted")
            archive.extractall(dest)  # noqa: S202 - every member checked above
    else:
        try:
            archive_tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 - closed below
        except tarfile.TarError as error:
            raise InvalidPackage("the upload is neither a tar(.gz) nor a zip archive") from error
        with archive_tar:
            members = archive_tar.getmembers()
            for member in members:
                if not _safe_member(member.name) or not (member.isfile() or member.isdir()):
                    raise InvalidPackage(f"unsafe member in archive: {member.name!r}")
                total += member.size
                if total > max_bytes:
                    raise InvalidPackage("archive too large once extracted")
            archive_tar.extractall(dest, filter="data")
    manifests = sorted(dest.rglob("manifest.json"), key=lambda p: len(p.parts))
    if not manifests:
        raise InvalidPackage("archive holds no manifest.json")
    return manifests[0].parent


def pack_folder(folder: Path) -> bytes:
    """A deterministic tar.gz of a package folder (sorted names, zero times and owners): same files, same bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            with path.open("rb") as handle:
                archive.addfile(info, handle)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


class ArtifactStore:
    """A content-addressed folder store: a package lives at ``root/<digest[:2]>/<digest>/`` and never changes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, package_sha256: str) -> Path:
        """Where the package with this digest lives."""
        return self.root / package_sha256[:2] / package_sha256

    def put(self, info: PackageInfo) -> Path:
        """Copy a validated package into the store (atomic rename; a no-op when already present)."""
        target = self.path(info.package_sha256)
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target.parent))
        try:
            shutil.copytree(info.folder, staging, dirs_exist_ok=True)
            if package_digest(staging) != info.package_sha256:
                raise InvalidPackage("the package changed while it was being stored")
            try:
                os.rename(staging, target)
            except OSError:
                if not target.is_dir():  # another writer storing the same digest won the race: fine
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return target

    def archive(self, package_sha256: str) -> bytes:
        """The stored package as a deterministic tar.gz, after re-checking its digest (bit rot, tampering)."""
        folder = self.path(package_sha256)
        if not folder.is_dir():
            raise FileNotFoundError(package_sha256)
        if package_digest(folder) != package_sha256:
            raise StoreCorrupted(f"stored package {package_sha256} no longer matches its digest")
        return pack_folder(folder)
