"""The item index contract, run against every index kind (STYLE.md item 3)."""

import numpy as np
import pytest

from recsys.errors import BundleError
from recsys.index import ItemIndex

KINDS = ["flat", "hnsw", "ivf"]


def unit_vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(params=KINDS)
def index(request):
    settings = {"ivf_lists": 8, "ivf_probe": 8} if request.param == "ivf" else {}
    return ItemIndex(request.param, **settings).fit(unit_vectors(300))


def test_each_item_is_its_own_nearest_neighbour(index):
    vectors = index.vectors()
    rows, scores = index.search(vectors[:50], k=1)
    assert rows[:, 0].tolist() == list(range(50))
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_search_returns_k_sorted_by_score(index):
    rows, scores = index.search(index.vectors()[:5], k=20)
    assert rows.shape == (5, 20) and (rows >= 0).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert all(len(set(r)) == 20 for r in rows.tolist())


def test_exclusions_are_never_returned_and_k_is_still_met(index):
    query = index.vectors()[:1]
    top, _ = index.search(query, k=10)
    excluded = set(top[0].tolist())
    rows, _ = index.search(query, k=10, exclude=[excluded])
    assert not excluded & set(rows[0].tolist())
    assert (rows[0] >= 0).all()


def test_heavy_filtering_returns_min_k_eligible(index):
    # RELIABILITY row 9: exclude 90% of the catalogue
    n = index.size
    excluded = set(range(int(n * 0.9)))
    rows, scores = index.search(index.vectors()[:1], k=50, exclude=[excluded])
    returned = rows[0][rows[0] >= 0]
    assert len(returned) == min(50, n - len(excluded))
    assert not excluded & set(returned.tolist())
    rows, scores = index.search(index.vectors()[:1], k=50, exclude=[set(range(n - 3))])
    assert sorted(rows[0][rows[0] >= 0].tolist()) == [n - 3, n - 2, n - 1]
    assert np.isneginf(scores[0][3:]).all()


def test_flat_search_matches_brute_force():
    vectors = unit_vectors(200, seed=1)
    index = ItemIndex("flat").fit(vectors)
    query = unit_vectors(3, seed=2)
    rows, _ = index.search(query, k=5)
    expected = np.argsort(-(query @ vectors.T), axis=1)[:, :5]
    assert rows.tolist() == expected.tolist()


def test_save_and_load_round_trip(index, tmp_path):
    path = tmp_path / "index.faiss"
    index.save(path)
    loaded = ItemIndex.load(path)
    query = index.vectors()[:3]
    assert loaded.search(query, 7)[0].tolist() == index.search(query, 7)[0].tolist()


def test_load_refuses_a_corrupt_file(tmp_path):
    path = tmp_path / "index.faiss"
    path.write_bytes(b"not a faiss index")
    with pytest.raises(BundleError, match="index.faiss"):
        ItemIndex.load(path)


def test_auto_picks_exact_below_threshold_and_hnsw_above():
    assert ItemIndex("auto", exact_threshold=100).resolved_kind(99) == "flat"
    assert ItemIndex("auto", exact_threshold=100).resolved_kind(100) == "hnsw"


def test_rejects_bad_vectors():
    with pytest.raises(ValueError, match="NaN"):
        ItemIndex().fit(np.array([[np.nan, 1.0]], dtype=np.float32))
    with pytest.raises(ValueError, match="kind"):
        ItemIndex("annoy")


def test_a_query_gets_the_same_hits_alone_and_in_a_batch():
    """The batch fetches k plus the largest exclusion set for every query; the hits of a query
    must not depend on that, so a request the server coalesces with others (or the batch
    scorer) gets what it would get alone."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ItemIndex("hnsw", hnsw_m=8, ef_construction=20, ef_search=16).fit(vectors)
    queries = vectors[rng.choice(3000, 12, replace=False)] + 0.3
    exclude = [set(rng.choice(3000, size, replace=False).tolist())
               for size in (0, 1, 40, 200, 3, 0, 500, 7, 40, 2, 900, 60)]
    rows, scores = index.search(queries, 30, exclude=exclude)
    for q in range(len(queries)):
        alone_rows, alone_scores = index.search(queries[q:q + 1], 30, exclude=[exclude[q]])
        np.testing.assert_array_equal(rows[q], alone_rows[0])
        np.testing.assert_array_equal(scores[q], alone_scores[0])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_vectors_are_shared_with_the_index_that_stores_them(kind, tmp_path):
    import gc

    from recsys.index import shared_vectors

    vectors = np.random.default_rng(3).standard_normal((300, 8)).astype(np.float32)
    ItemIndex(kind=kind).fit(vectors).save(tmp_path / "index.faiss")
    loaded = ItemIndex.load(tmp_path / "index.faiss")
    shared = shared_vectors(loaded, vectors)
    assert shared is not vectors and not shared.flags.owndata and not shared.flags.writeable
    assert np.array_equal(shared, vectors)
    rows, _ = loaded.search(shared[:2], 1)
    assert rows[:, 0].tolist() == [0, 1]
    del loaded
    gc.collect()
    assert np.array_equal(shared, vectors)  # the view keeps the index's memory alive
    with pytest.raises(ValueError):
        shared[0, 0] = 1.0


def test_vectors_stay_their_own_copy_when_the_index_has_other_ones():
    from recsys.index import shared_vectors

    vectors = np.random.default_rng(4).standard_normal((300, 8)).astype(np.float32)
    index = ItemIndex(kind="flat").fit(vectors)
    other = vectors + 1.0
    assert shared_vectors(index, other) is other
    part = vectors[:200]
    assert shared_vectors(index, part) is part
