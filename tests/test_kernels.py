"""The compiled loops (features/_loops.py) on their own: values against plain Python
references, answers that do not depend on batch order, and bad input refused with an
exception instead of a crash or a read outside an array.

tests/test_vectorized_equality.py checks the same loops through retrieval and the feature
rows against the per-request code they replaced."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from features import _loops, kernels
from features.ragged import flatten


def _histories(rng, n, n_items, longest=12):
    return [list(rng.integers(0, n_items, rng.integers(0, longest))) for _ in range(n)]


# -- similarities ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [8, 13, 384])
def test_similarities_match_a_float64_reference(dim):
    rng = np.random.default_rng(dim)
    vectors = rng.standard_normal((60, dim)).astype(np.float32)
    histories = _histories(rng, 7, 60)
    profiles = rng.standard_normal((7, dim)).astype(np.float32)
    request = rng.integers(0, 7, 90)
    item = rng.integers(0, 60, 90)
    items, offsets = flatten(histories)
    sem, last, best = kernels.similarities(profiles, items, offsets, request, item, vectors, 5)
    for r in range(90):
        v = vectors[item[r]].astype(np.float64)
        tail = histories[request[r]][-5:]
        assert sem[r] == pytest.approx(v @ profiles[request[r]], rel=1e-5, abs=1e-5)
        if tail:
            sims = [v @ vectors[t] for t in tail]
            assert last[r] == pytest.approx(sims[-1], rel=1e-5, abs=1e-5)
            assert best[r] == pytest.approx(max(sims), rel=1e-5, abs=1e-5)
        else:
            assert last[r] == 0 and best[r] == 0


def test_similarities_of_a_row_do_not_depend_on_the_rest_of_the_batch():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((80, 384)).astype(np.float32)
    histories = _histories(rng, 10, 80)
    profiles = rng.standard_normal((10, 384)).astype(np.float32)
    items, offsets = flatten(histories)
    request, item = rng.integers(0, 10, 200), rng.integers(0, 80, 200)
    whole = kernels.similarities(profiles, items, offsets, request, item, vectors, 5)
    order = rng.permutation(200)
    shuffled = kernels.similarities(profiles, items, offsets, request[order], item[order],
                                    vectors, 5)
    for a, b in zip(whole, shuffled, strict=True):
        np.testing.assert_array_equal(a[order], b)
    # one request alone, in a batch of its own
    u = int(request[0])
    alone_items, alone_offsets = flatten([histories[u]])
    rows = np.flatnonzero(request == u)
    alone = kernels.similarities(profiles[u:u + 1], alone_items, alone_offsets,
                                 np.zeros(rows.size, np.int64), item[rows], vectors, 5)
    for a, b in zip(whole, alone, strict=True):
        np.testing.assert_array_equal(a[rows], b)


def eight_lane_dot(v: np.ndarray, q: np.ndarray) -> np.float32:
    """v . q in float32 the way the loop sums it: element i goes to partial sum i % 8, each
    product rounded before it is added, the sums combined ((0+4) + (2+6)) + ((1+5) + (3+7))."""
    products = v.astype(np.float32) * q.astype(np.float32)
    sums = np.zeros(8, np.float32)
    for start in range(0, len(products), 8):
        chunk = products[start:start + 8]
        sums[:len(chunk)] += chunk
    return ((sums[0] + sums[4]) + (sums[2] + sums[6])) + ((sums[1] + sums[5]) + (sums[3] + sums[7]))


@pytest.mark.parametrize("dim", [5, 16, 77, 384])
def test_similarities_sum_in_the_fixed_eight_lane_order_bit_for_bit(dim):
    """The fixed order is what makes a bundle score alike in training and serving and on any
    machine: a fused multiply-add or a reordered sum would change the last bits."""
    rng = np.random.default_rng(dim + 1)
    vectors = rng.standard_normal((50, dim)).astype(np.float32)
    histories = _histories(rng, 5, 50) + [[]]
    profiles = rng.standard_normal((6, dim)).astype(np.float32)
    request, item = rng.integers(0, 6, 120), rng.integers(0, 50, 120)
    items, offsets = flatten(histories)
    sem, last, best = kernels.similarities(profiles, items, offsets, request, item, vectors, 5)
    for r in range(120):
        v, tail = vectors[item[r]], histories[request[r]][-5:]
        assert sem[r].view(np.int32) == eight_lane_dot(v, profiles[request[r]]).view(np.int32)
        sims = [eight_lane_dot(v, vectors[t]) for t in tail] or [np.float32(0)]
        assert last[r].view(np.int32) == sims[-1].view(np.int32)
        assert best[r].view(np.int32) == max(sims).view(np.int32)


# -- CSR lookups and co-visitation ----------------------------------------------------------------
def test_csr_values_read_stored_entries_and_zero_elsewhere():
    rng = np.random.default_rng(2)
    dense = np.where(rng.random((30, 50)) < 0.2, rng.random((30, 50)), 0).astype(np.float32)
    matrix = sp.csr_matrix(dense)
    rows = rng.integers(-1, 30, 500)
    cols = rng.integers(0, 50, 500)
    want = np.where(rows >= 0, dense[np.maximum(rows, 0), cols], 0)
    np.testing.assert_array_equal(kernels.csr_values(matrix, rows, cols), want)


def test_covisitation_scores_sum_in_the_sparse_products_order():
    rng = np.random.default_rng(3)
    dense = np.where(rng.random((40, 40)) < 0.3, rng.random((40, 40)), 0).astype(np.float32)
    matrix = sp.csr_matrix(dense)
    histories = _histories(rng, 12, 40) + [[5, 5, 5], []]
    decay = np.array([1.0, 0.6, 0.36], np.float32)
    items, offsets = flatten(histories)
    got = kernels.covisitation_scores(items, offsets, decay, matrix)
    rows, cols, vals = [], [], []
    for u, history in enumerate(histories):
        for k, item in enumerate(history[-3:][::-1]):
            rows.append(u)
            cols.append(item)
            vals.append(decay[k])
    weights = sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)),
                            shape=(len(histories), 40))
    want = (weights @ matrix).tocsr()
    np.testing.assert_array_equal(got.toarray().view(np.int32), want.toarray().view(np.int32))
    assert got.nnz == want.nnz  # zero sums are dropped, as scipy drops them


# -- history features -----------------------------------------------------------------------------
def test_history_features_do_not_need_rows_grouped_by_request():
    rng = np.random.default_rng(4)
    categories = rng.integers(-1, 5, 50)
    histories = _histories(rng, 9, 50)
    items, offsets = flatten(histories)
    request, item = rng.integers(0, 9, 300), rng.integers(0, 50, 300)
    in_history, share, last = kernels.history_features(items, offsets, request, item, categories)
    for r in range(300):
        history, c = histories[request[r]], categories[item[r]]
        assert in_history[r] == history.count(item[r])
        same = sum(1 for h in history if categories[h] == c) if c >= 0 else 0
        assert share[r] == np.float32(same / max(len(history), 1))
        assert last[r] == float(c >= 0 and bool(history) and categories[history[-1]] == c)


# -- search filtering -----------------------------------------------------------------------------
def test_distinct_in_range_counts_each_value_once():
    items, offsets = flatten([[1, 1, 2, 9], [], [-1, 3, 3]])
    assert kernels.distinct_in_range(items, offsets, 5).tolist() == [2, 0, 1]


def test_filter_hits_skips_and_packs_only_finished_queries():
    rows = np.array([[4, 1, 2, -1], [7, 8, 9, 6]])
    scores = np.array([[0.9, 0.8, 0.7, -np.inf], [0.9, 0.8, 0.7, 0.6]], np.float32)
    skipped, offsets = flatten([[1], [], [8]])
    out_rows = np.full((3, 3), -1, np.int64)
    out_scores = np.full((3, 3), -np.inf, np.float32)
    found = kernels.filter_hits(rows, scores, np.array([0, 2]), skipped, offsets, 3, False,
                                out_rows, out_scores)
    assert found.tolist() == [2, 3]
    # query 0 has only 2 of 3 and this is not the last try: its row is left for the next
    assert out_rows.tolist() == [[-1, -1, -1], [-1, -1, -1], [7, 9, 6]]
    kernels.filter_hits(rows, scores, np.array([0, 2]), skipped, offsets, 3, True,
                        out_rows, out_scores)
    assert out_rows[0].tolist() == [4, 2, -1]
    assert out_scores[0].tolist() == pytest.approx([0.9, 0.7, -np.inf])


# -- bad input ------------------------------------------------------------------------------------
def test_out_of_range_indices_raise_instead_of_reading_past_an_array():
    vectors = np.zeros((5, 8), np.float32)
    items, offsets = flatten([[1, 2]])
    with pytest.raises(IndexError, match="item"):
        kernels.similarities(np.zeros((1, 8), np.float32), items, offsets, np.array([0]),
                             np.array([5]), vectors, 5)
    with pytest.raises(IndexError, match="history_items"):
        kernels.similarities(np.zeros((1, 8), np.float32), np.array([7]), np.array([0, 1]),
                             np.array([0]), np.array([1]), vectors, 5)
    with pytest.raises(IndexError, match="request"):
        kernels.history_features(items, offsets, np.array([1]), np.array([0]), np.zeros(5))
    with pytest.raises(IndexError, match="rows"):
        kernels.csr_values(sp.csr_matrix((3, 3), dtype=np.float32), np.array([3]),
                           np.array([0]))
    with pytest.raises(IndexError, match="cols"):
        kernels.csr_values(sp.csr_matrix((3, 3), dtype=np.float32), np.array([0]),
                           np.array([3]))


def test_the_compiled_functions_refuse_arrays_of_the_wrong_type():
    """Explicit signatures: a wrong element type or a read-only output is refused, not
    compiled anew or written through."""
    indptr, indices = np.array([0, 0], np.int32), np.zeros(0, np.int32)
    data = np.zeros(0, np.float32)
    out = np.empty(1, np.float32)
    with pytest.raises(TypeError, match="No matching definition"):
        _loops.csr_lookup(indptr, indices, data, 1, np.array([0.0]), np.array([0]), out)
    with pytest.raises(TypeError, match="No matching definition"):
        _loops.csr_lookup(indptr, indices, data, 1, np.array([0]), np.array([0]),
                          np.empty(1, np.float64))
    with pytest.raises(TypeError, match="No matching definition"):
        readonly = np.empty(1, np.float32)
        readonly.flags.writeable = False
        _loops.csr_lookup(indptr, indices, data, 1, np.array([0]), np.array([0]), readonly)
    with pytest.raises(ValueError, match="lengths"):
        _loops.csr_lookup(indptr, indices, data, 1, np.array([0, 0]), np.array([0]), out)
    assert len(_loops.csr_lookup.signatures) == 2  # int32 and int64 indices, nothing compiled


def test_read_only_inputs_are_accepted():
    """Bundle arrays can be read-only (memory-mapped); the loops only read their inputs."""
    matrix = sp.csr_matrix(np.array([[0, 2], [3, 0]], np.float32))
    for array in (matrix.indptr, matrix.indices, matrix.data):
        array.flags.writeable = False
    rows, cols = np.array([0, 1, -1]), np.array([1, 0, 0])
    rows.flags.writeable = cols.flags.writeable = False
    assert kernels.csr_values(matrix, rows, cols).tolist() == [2, 3, 0]


def test_without_a_writable_cache_folder_the_loops_compile_for_the_process(monkeypatch, caplog):
    """numba refuses cache=True where neither the package's folder nor ~/.cache is writable
    (an installed, read-only site-packages in a container): the import must still work."""
    real_njit = _loops.numba.njit

    def njit_without_a_cache_folder(*args, cache=False, **kwargs):
        if cache:
            raise RuntimeError("cannot cache function 'add_one': no locator available for file")
        return real_njit(*args, **kwargs)

    monkeypatch.setattr(_loops.numba, "njit", njit_without_a_cache_folder)

    def add_one(x):
        return x + 1

    with caplog.at_level("WARNING", logger="features._loops"):
        compiled = _loops._compiled([_loops.INT(_loops.INT)])(add_one)
    assert compiled(41) == 42
    assert "NUMBA_CACHE_DIR" in caplog.text


# -- the per-item feature table -------------------------------------------------------------------
def test_item_feature_columns_follow_the_states_arrays():
    from features.state import BehaviourState

    state = BehaviourState(n_items=4)
    state.clicks_ = np.array([0, 1, 5, 2], np.float32)
    state.shown_ = np.array([0, 3, 5, 9], np.float32)
    state.ctr_ = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    state.window_clicks_ = np.array([[0, 0, 0], [1, 1, 1], [2, 3, 5], [0, 1, 2]], np.float32)
    table = state.item_feature_columns()
    np.testing.assert_array_equal(table[:, 0], np.log1p(state.clicks_))
    np.testing.assert_array_equal(table[:, 3], np.log1p(state.window_clicks_[:, 2].copy()))
    np.testing.assert_array_equal(table[:, 4], np.array([np.nan, 0.2, np.nan, 0.4], np.float32))
    assert state.item_feature_columns() is table               # made once
    state.clicks_ = np.array([0, 1, 5, 2, 7], np.float32)       # replaced, as with new items
    state.shown_ = np.zeros(5, np.float32)
    state.ctr_ = np.zeros(5, np.float32)
    state.window_clicks_ = np.zeros((5, 3), np.float32)
    assert state.item_feature_columns().shape == (5, 5)
