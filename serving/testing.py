"""Helpers for tests and soak scripts: copies of a bundle under a new version, intact or broken."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from recsys.bundle_versions import MANIFEST, sha256_file


def copy_models(models_dir: Path, target: Path) -> Path:
    """A private copy of a models directory (the session fixture must stay untouched)."""
    shutil.copytree(models_dir, target)
    return target


def copy_bundle(models_dir: Path, source: str, version: str,
                change: Callable[[Path], None] | None = None, *, reseal: bool = True) -> Path:
    """Copy bundle `source` to `version`, apply `change` to the copy, and (with `reseal`) rewrite
    its manifest's version and checksums, so only the change itself can make it fail."""
    target = models_dir / version
    shutil.copytree(models_dir / source, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["version"] = version
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if change is not None:
        change(target)
    if reseal:
        manifest = json.loads((target / MANIFEST).read_text())
        manifest["files"] = {name: sha256_file(target / name) for name in manifest["files"]
                             if (target / name).exists()}
        (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return target


__all__ = ["copy_bundle", "copy_models"]
