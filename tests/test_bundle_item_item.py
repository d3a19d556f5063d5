"""The EASE item-item weights in a bundle: written as safetensors and listed in the manifest,
read back into the state, refused when they do not fit, and optional (a bundle made before the
item-item source loads with the source off and serves)."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from recsys.bundle_files import ITEM_ITEM_FILE
from recsys.errors import BundleError
from recsys.recommender import Recommender


@pytest.fixture
def models_copy(models_dir, tmp_path):
    target = tmp_path / "models"
    shutil.copytree(models_dir, target)
    return target


def test_the_bundle_lists_the_weights_and_the_loaded_state_has_them(models_dir, recommender):
    manifest = json.loads((models_dir / "v1" / "manifest.json").read_text())
    assert ITEM_ITEM_FILE in manifest["files"]
    assert manifest["config"]["retrieval"]["n_item_item"] > 0
    assert {"item_item_rank", "item_item_score"} <= set(manifest["features"])
    weights = recommender.state.item_item_
    assert weights is not None and weights.matrix_.nnz > 0
    assert weights.matrix_.shape == (len(recommender.item_ids),) * 2


def test_weights_that_do_not_fit_the_catalogue_are_refused(models_copy):
    path = models_copy / "v1" / ITEM_ITEM_FILE
    save_file({"indptr": np.zeros(4, np.int64), "indices": np.zeros(0, np.int32),
               "data": np.zeros(0, np.float32)}, str(path))
    with pytest.raises(BundleError, match="item_item.safetensors"):
        Recommender.load(models_copy, verify=False)


def test_a_bundle_without_the_weights_loads_with_the_source_off_and_serves(models_copy):
    path = models_copy / "v1"
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"][ITEM_ITEM_FILE]
    del manifest["config"]["retrieval"]["n_item_item"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / ITEM_ITEM_FILE).unlink()
    loaded = Recommender.load(models_copy, verify=False)
    assert loaded.state.item_item_ is None
    assert loaded.context.retrieval.n_item_item == 0
    users = sorted(loaded.users)[:5]
    served = loaded.recommend(users, 5)
    assert all(len(r.item_ids) == 5 and r.source == "model" for r in served)
