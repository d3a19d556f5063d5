"""Bundles: sealed with checksums, verified on load, published atomically, rolled back."""

import json
import os
import shutil
import time

import pytest

from recsys import bundle_versions as bundle
from recsys.errors import BundleError, NotFoundError
from recsys.recommender import Recommender


@pytest.fixture
def models_copy(models_dir, tmp_path):
    target = tmp_path / "models"
    shutil.copytree(models_dir, target)
    return target


def test_manifest_records_versions_checksums_and_metrics(models_dir):
    manifest = bundle.read_manifest(models_dir / "v1")
    assert manifest["version"] == "v1"
    assert manifest["libraries"]["lightgbm"]
    assert set(bundle.REQUIRED_FILES) <= set(manifest["files"])
    assert manifest["embedding_dim"] == 384
    assert "valid_ndcg@10_candidates" in manifest["metrics"]
    assert manifest["dataset"]["protocol"] == "leave_one_out"
    assert bundle.current_version(models_dir) == "v1"


@pytest.mark.parametrize("damage", ["truncate_ranker", "flip_vectors", "delete_index", "manifest"])
def test_damaged_bundle_is_refused_with_the_reason(models_copy, damage):
    path = models_copy / "v1"
    if damage == "truncate_ranker":
        text = (path / "ranker.txt").read_text()
        (path / "ranker.txt").write_text(text[: len(text) // 2])
        expected = "ranker.txt"
    elif damage == "flip_vectors":
        data = bytearray((path / "item_vectors.safetensors").read_bytes())
        data[-10] ^= 0xFF
        (path / "item_vectors.safetensors").write_bytes(bytes(data))
        expected = "item_vectors.safetensors"
    elif damage == "delete_index":
        (path / "index.faiss").unlink()
        expected = "index.faiss"
    else:
        (path / "manifest.json").write_text("{not json")
        expected = "manifest.json"
    with pytest.raises(BundleError, match=expected):
        Recommender.load(models_copy)


def test_wrong_vector_dimension_is_refused_even_without_checksums(models_copy):
    path = models_copy / "v1"
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["embedding_dim"] = 768
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="dimension"):
        Recommender.load(models_copy, verify=False)


@pytest.mark.parametrize("name", ["../x", "a/b", "", "..", ".hidden", "x" * 200])
def test_version_names_cannot_escape_the_models_dir(name):
    with pytest.raises(BundleError):
        bundle.check_version_name(name)


def test_promote_and_rollback(models_copy):
    shutil.copytree(models_copy / "v1", models_copy / "v2")
    manifest = json.loads((models_copy / "v2" / "manifest.json").read_text())
    manifest["version"] = "v2"
    (models_copy / "v2" / "manifest.json").write_text(json.dumps(manifest))
    bundle.set_current(models_copy, "v2")
    assert bundle.current_version(models_copy) == "v2"
    assert Recommender.load(models_copy).version == "v2"
    assert bundle.rollback(models_copy) == "v1"
    assert bundle.current_version(models_copy) == "v1"
    with pytest.raises(NotFoundError):
        bundle.rollback(models_copy)
    with pytest.raises(NotFoundError):
        bundle.set_current(models_copy, "v9")


def test_unfinished_bundles_are_invisible(models_copy):
    writer = bundle.BundleWriter(models_copy, "v3")
    (writer.path / "ranker.txt").write_text("partial")
    with pytest.raises(BundleError, match="missing"):
        writer.publish({})
    assert not (models_copy / "v3").exists()
    assert [v["version"] for v in bundle.list_versions(models_copy)] == ["v1"]
    writer.discard()
    assert not writer.path.exists()


def test_missing_models_dir_says_what_to_do(tmp_path):
    with pytest.raises(NotFoundError, match="no model bundle"):
        Recommender.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="recsys train"):
        Recommender.load(tmp_path / "empty")


def test_a_new_bundle_removes_drafts_abandoned_by_killed_runs(tmp_path):
    models = tmp_path / "models"
    old, fresh = models / ".tmp-v-killed", models / ".tmp-v-running"
    for draft in (old, fresh):
        (draft / "part").mkdir(parents=True)
        (draft / "part" / "vectors.bin").write_bytes(b"x")
    stale = time.time() - bundle.ABANDONED_AFTER_S - 60
    for path in (old, old / "part", old / "part" / "vectors.bin"):
        os.utime(path, (stale, stale))
    writer = bundle.BundleWriter(models, "v2")
    assert not old.exists()          # a killed run's draft goes
    assert fresh.exists()            # another run still writing keeps its draft
    assert writer.path.is_dir()
