"""Typed entry points to the compiled loops of the ranking path (features/_loops.py, numba).

Retrieval and the feature rows run a few dozen numpy calls per batch; for one request's ~200
candidates their call overhead cost more than their arithmetic. These loops do the same work in
one call each, with the GIL released. Training, evaluation, batch scoring and serving all call
them, so offline and online rows still come from one path. The arrays are converted here (no
copy when they already have the dtype), and the loops check sizes and bounds again.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from features import _loops

_NOTHING_ALLOWED = np.zeros(0, dtype=bool)  # with allowed=None, a placeholder the loop never reads


def _ints(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.int64)


def _floats(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32)


def _csr_index(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """indptr and indices of one integer type (scipy keeps them alike; the loops take int32 or
    int64 for both)."""
    if matrix.indptr.dtype == matrix.indices.dtype and matrix.indptr.dtype in (np.int32,
                                                                                np.int64):
        return np.ascontiguousarray(matrix.indptr), np.ascontiguousarray(matrix.indices)
    return _ints(matrix.indptr), _ints(matrix.indices)


def similarities(profiles: np.ndarray, history_items: np.ndarray, offsets: np.ndarray,
                 request: np.ndarray, item: np.ndarray, item_vectors: np.ndarray,
                 recent: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per candidate row: (its vector . its request's profile, . the request's last history
    item, the best . over its last `recent` history items); the last two are 0 for an empty
    history. float32, summed in one fixed order (see `_loops._dot`)."""
    m = len(item)
    sem = np.empty(m, np.float32)
    last = np.empty(m, np.float32)
    best = np.empty(m, np.float32)
    _loops.similarities(_floats(profiles), _ints(history_items), _ints(offsets), _ints(request),
                          _ints(item), _floats(item_vectors), int(recent), sem, last, best)
    return sem, last, best


def csr_values(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`matrix[rows[j], cols[j]]` as float32, 0 where not stored or rows[j] < 0; IndexError
    for a row or column past the matrix. The lookup is a binary search, so a matrix without
    sorted, unique columns in each row is first summed into that form (scipy caches whether it
    is, so a canonical matrix costs nothing here)."""
    if not matrix.has_canonical_format:
        matrix = matrix.copy()
        matrix.sum_duplicates()
    rows = _ints(rows)
    out = np.empty(rows.size, np.float32)
    indptr, indices = _csr_index(matrix)
    _loops.csr_lookup(indptr, indices, _floats(matrix.data), matrix.shape[1], rows, _ints(cols),
                      out)
    return out


def covisitation_scores(history_items: np.ndarray, offsets: np.ndarray, decay: np.ndarray,
                        matrix: sp.csr_matrix) -> sp.csr_matrix:
    """[histories, items] scores: each history's last len(decay) items' rows of `matrix`, the
    k-th most recent weighted decay[k], summed in scipy's order (see
    `_loops.covisitation_scores`)."""
    n_items = matrix.shape[0]
    matrix_indptr, matrix_indices = _csr_index(matrix)
    indptr, indices, data = _loops.covisitation_scores(
        _ints(history_items), _ints(offsets), _floats(decay), matrix_indptr, matrix_indices,
        _floats(matrix.data), n_items)
    if max(n_items, indices.size) < 2**31:
        indptr, indices = indptr.astype(np.int32), indices.astype(np.int32)
    out = sp.csr_matrix((data, indices, indptr), shape=(len(offsets) - 1, n_items))
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out


def history_features(history_items: np.ndarray, offsets: np.ndarray, request: np.ndarray,
                     item: np.ndarray, item_categories: np.ndarray,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per candidate row, float32: how often its item is in its request's history, the share
    of that history in the item's category, and whether the last history item shares it."""
    m = len(item)
    in_history = np.empty(m, np.float32)
    cat_share = np.empty(m, np.float32)
    cat_last = np.empty(m, np.float32)
    _loops.history_features(_ints(history_items), _ints(offsets), _ints(request), _ints(item),
                            _ints(item_categories), in_history, cat_share, cat_last)
    return in_history, cat_share, cat_last


def distinct_in_range(items: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """For each list (items[offsets[u]:offsets[u + 1]]), its distinct values in [0, width)."""
    offsets = _ints(offsets)
    out = np.empty(offsets.size - 1, np.int64)
    _loops.distinct_in_range(_ints(items), offsets, int(width), out)
    return out


def filter_hits(rows: np.ndarray, scores: np.ndarray, queries: np.ndarray,
                skipped_items: np.ndarray, skipped_offsets: np.ndarray, k: int, last_try: bool,
                out_rows: np.ndarray, out_scores: np.ndarray) -> np.ndarray:
    """Search hits without each query's skipped rows: writes the first k of query j's into
    out_rows[queries[j]] / out_scores[queries[j]] when it has k (or on the last try), and
    returns how many each query kept."""
    found = np.empty(len(queries), np.int64)
    _loops.filter_hits(_ints(rows), _floats(scores), _ints(queries), _ints(skipped_items),
                       _ints(skipped_offsets), int(k), bool(last_try), out_rows, out_scores, found)
    return found


__all__ = ["covisitation_scores", "csr_values", "distinct_in_range", "filter_hits",
           "history_features", "similarities"]
