"""Files the engine writes follow the process umask (a server running as another user must be able
to read a bundle, CURRENT, a dataset and the embedding cache), never a private 0600."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys import bundle_versions as bundle
from recsys.atomic_files import process_umask, write_json, write_parquet, write_text
from recsys.data.importers import import_dataset
from recsys.embedding_cache import encode_cached
from tests.conftest import FIXTURES


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class FakeEncoder:
    """Just what the embedding cache reads of an encoder."""

    fingerprint, max_length, resolved_precision = "fake", 8, "fp32"

    def encode(self, texts, *, show_progress=None):
        return np.ones((len(texts), 4), dtype=np.float32)


def test_process_umask_is_read_without_changing_it(umask):
    assert process_umask() == umask
    assert os.umask(umask) == umask


def test_atomic_writers_follow_the_umask(umask, tmp_path):
    expected = 0o666 & ~umask
    write_json({"a": 1}, tmp_path / "a.json")
    write_text("x\n", tmp_path / "a.txt")
    write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "a.parquet")
    for name in ("a.json", "a.txt", "a.parquet"):
        assert mode(tmp_path / name) == expected, name


def test_current_manifest_dataset_and_cache_follow_the_umask(umask, models_dir, tmp_path):
    expected = 0o666 & ~umask
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    bundle.set_current(models, "v1")
    assert mode(models / bundle.CURRENT) == expected
    assert mode(models / bundle.HISTORY) == expected

    dataset = import_dataset("recbole", FIXTURES / "recbole", tmp_path / "data")
    for name in ("items.parquet", "events.parquet", "dataset.json"):
        assert mode(dataset.path / name) == expected, name

    cache = tmp_path / "cache"
    encode_cached(FakeEncoder(), ["one", "two"], cache)
    [cache_file] = cache.iterdir()
    assert mode(cache_file) == expected


def test_a_published_manifest_follows_the_umask(umask, models_dir, tmp_path):
    expected = 0o666 & ~umask
    writer = bundle.BundleWriter(tmp_path / "models", "v2")
    for name in bundle.REQUIRED_FILES:
        source = models_dir / "v1" / name
        (writer.path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, writer.path / name)
    published = writer.publish({"note": "copied"}, make_current=True)
    assert mode(published / bundle.MANIFEST) == expected
    assert mode(tmp_path / "models" / bundle.CURRENT) == expected
