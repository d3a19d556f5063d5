"""Model bundles: one immutable, versioned directory per trained model, and the CURRENT pointer.

    models/<version>/manifest.json        versions, config, data range, metrics, sha256 of
                                          every file
    models/<version>/encoder/             the text encoder (safetensors)
    models/<version>/items.parquet        item ids and fields; row = embedding row = index row
    models/<version>/item_vectors.safetensors
    models/<version>/index.faiss
    models/<version>/features/            behavioural state at training time (Parquet + JSON)
    models/<version>/ranker.txt           LightGBM text format
    models/<version>/interest.safetensors the learned user side, when fine-tuning trained one
    models/CURRENT                        the live version (temp file + fsync + rename)

A bundle is written under a hidden temporary name and renamed into place only when complete, so
a crash while publishing never leaves a half bundle under a real version name.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.atomic_files import fsync_dir, write_json, write_text
from recsys.errors import BundleError, NotFoundError

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
HISTORY = "promotions.json"  # versions in the order they were made CURRENT
FORMAT_VERSION = 1
# an unpublished bundle folder untouched this long was left by a killed run (a real `train`
# writes into its draft every few minutes at most: embedding, index, ranker, parts)
ABANDONED_AFTER_S = 6 * 3600
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
REQUIRED_FILES = ("items.parquet", "item_vectors.safetensors", "index.faiss", "ranker.txt",
                  "features/state.json", "features/items.parquet",
                  "features/covisitation.parquet", "features/users.parquet",
                  "encoder/config.json")


def check_version_name(version: str) -> str:
    """Refuse names that could escape the models directory (`..`, `a/b`, empty)."""
    if not isinstance(version, str) or not VERSION_PATTERN.match(version) or version in {".", ".."}:
        raise BundleError(f"invalid model version name {version!r}: use letters, digits, "
                          "'.', '_', '-'")
    return version


def new_version_name(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("v%Y%m%d-%H%M%S-%f")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("recsys", "torch", "transformers", "sentence-transformers", "polars",
                 "faiss-cpu", "lightgbm", "numpy", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


class BundleWriter:
    """Collects a bundle's files in a temporary directory; `publish` seals and renames it."""

    def __init__(self, models_dir: str | os.PathLike[str], version: str | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.version = check_version_name(version or new_version_name())
        self.models_dir.mkdir(parents=True, exist_ok=True)
        if (self.models_dir / self.version).exists():
            raise BundleError(f"model version {self.version} already exists in {self.models_dir}")
        self.path = self.models_dir / f".tmp-{self.version}"
        shutil.rmtree(self.path, ignore_errors=True)
        remove_abandoned_drafts(self.models_dir)
        self.path.mkdir(parents=True)

    def publish(self, manifest: dict[str, Any], *, make_current: bool = True) -> Path:
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        for required in REQUIRED_FILES:
            if not (self.path / required).exists():
                raise BundleError(f"bundle is missing {required}; not publishing")
        manifest = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "created_at": datetime.now(UTC).isoformat(),
            "libraries": library_versions(),
            "files": {str(p.relative_to(self.path)): sha256_file(p) for p in files},
        }
        write_json(manifest, self.path / MANIFEST)
        for p in files:
            with open(p, "rb") as handle:
                os.fsync(handle.fileno())
        final = self.models_dir / self.version
        os.replace(self.path, final)
        fsync_dir(self.models_dir)
        if make_current:
            set_current(self.models_dir, self.version)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def remove_abandoned_drafts(models_dir: Path, *, older_than_s: float = ABANDONED_AFTER_S,
                            now: float | None = None) -> list[str]:
    """Remove unpublished bundle folders (`.tmp-VERSION`) that nothing has written to for
    `older_than_s`: what a killed `train` leaves behind. They are never served, but they hold
    a bundle's worth of disk. A draft still being written (another `train` in the same folder)
    is younger than that and is kept. Returns the names removed."""
    now = time.time() if now is None else now
    removed = []
    for draft in models_dir.glob(".tmp-*"):
        if not draft.is_dir():
            continue
        try:
            newest = max([draft.stat().st_mtime] +
                         [p.stat().st_mtime for p in draft.rglob("*")])
        except FileNotFoundError:  # removed or published meanwhile
            continue
        if now - newest > older_than_s:
            shutil.rmtree(draft, ignore_errors=True)
            removed.append(draft.name)
    return removed


def set_current(models_dir: str | os.PathLike[str], version: str) -> None:
    """Point CURRENT at `version` (atomically) and record the promotion for rollback."""
    models_dir = Path(models_dir)
    check_version_name(version)
    if not (models_dir / version / MANIFEST).exists():
        raise NotFoundError(f"no model version {version} in {models_dir}")
    history = promotion_history(models_dir)
    if not history or history[-1] != version:
        history.append(version)
    write_json(history[-100:], models_dir / HISTORY)
    write_text(version + "\n", models_dir / CURRENT)


def promotion_history(models_dir: str | os.PathLike[str]) -> list[str]:
    path = Path(models_dir) / HISTORY
    if not path.exists():
        return []
    return [v for v in json.loads(path.read_text()) if isinstance(v, str)]


def rollback(models_dir: str | os.PathLike[str]) -> str:
    """Make the previously promoted version CURRENT again; returns it."""
    models_dir = Path(models_dir)
    history = promotion_history(models_dir)
    current = current_version(models_dir)
    while history and history[-1] == current:
        history.pop()
    while history and not (models_dir / history[-1] / MANIFEST).exists():
        history.pop()
    if not history:
        raise NotFoundError(f"no earlier promoted version in {models_dir} to roll back to")
    previous = history[-1]
    write_json(history, models_dir / HISTORY)
    write_text(previous + "\n", models_dir / CURRENT)
    return previous


def current_version(models_dir: str | os.PathLike[str]) -> str:
    pointer = Path(models_dir) / CURRENT
    if not pointer.exists():
        raise NotFoundError(f"no {CURRENT} model in {models_dir}: train one with `recsys train`")
    return check_version_name(pointer.read_text().strip())


def list_versions(models_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete bundle, oldest first, with its manifest's headline fields."""
    models_dir = Path(models_dir)
    out = []
    if not models_dir.exists():
        return out
    for path in sorted(models_dir.iterdir()):
        if path.name.startswith(".") or not (path / MANIFEST).exists():
            continue
        manifest = json.loads((path / MANIFEST).read_text())
        out.append({"version": path.name, "created_at": manifest.get("created_at"),
                    "metrics": manifest.get("metrics", {})})
    return sorted(out, key=lambda m: (m["created_at"] or "", m["version"]))


def check_models_folder(models_dir: str | os.PathLike[str]) -> Path:
    """MODELS as a folder holding at least one complete bundle; otherwise one line saying what
    the path is instead."""
    models_dir = Path(models_dir)
    if not models_dir.exists():
        raise NotFoundError(f"{models_dir}: no such models folder")
    if not models_dir.is_dir():
        raise NotFoundError(f"{models_dir}: not a folder")
    if (models_dir / MANIFEST).exists():
        raise NotFoundError(f"{models_dir} is one model bundle: give the models folder that "
                            f"holds it ({models_dir.parent})")
    if not list_versions(models_dir):
        raise NotFoundError(f"{models_dir}: holds no model bundle (train one with "
                            f"`recsys train DATASET --out {models_dir}`)")
    return models_dir


def resolve_bundle(path: str | os.PathLike[str]) -> Path:
    """Accept MODELS (use CURRENT) or MODELS/VERSION; return the bundle directory."""
    path = Path(path)
    if (path / MANIFEST).exists():
        return path
    if path.is_dir():
        return path / current_version(path)
    raise NotFoundError(f"{path}: no model bundle or models directory there")


def read_manifest(bundle: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """Read a bundle's manifest; with `verify`, check every file exists and matches its sha256."""
    bundle = Path(bundle)
    manifest_path = bundle / MANIFEST
    if not manifest_path.exists():
        raise BundleError(f"{bundle}: no {MANIFEST}, not a complete bundle")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{bundle}: bundle format {manifest.get('format_version')} is not "
                          f"{FORMAT_VERSION}; retrain with this version of recsys")
    for required in REQUIRED_FILES:
        if not (bundle / required).exists():
            raise BundleError(f"{bundle}: missing file {required}")
    if verify:
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise BundleError(f"{bundle}: manifest has no file list to verify")
        # an empty or partial list must not turn verification off for what it leaves out
        unlisted = [name for name in REQUIRED_FILES if name not in files]
        if unlisted:
            raise BundleError(f"{bundle}: manifest does not list {', '.join(unlisted)}; "
                              "every required file must be listed with its checksum")
        for name, expected in files.items():
            file = bundle / name
            if not file.exists():
                raise BundleError(f"{bundle}: missing file {name}")
            if sha256_file(file) != expected:
                raise BundleError(f"{bundle}: checksum mismatch for {name}")
    return manifest
