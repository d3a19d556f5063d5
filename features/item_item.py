"""EASE item-item weights: what a user's clicked items say about every other item.

EASE (Steck 2019) is the closed-form linear item-item model: with X the user-item click matrix
and G = X^T X + lambda * I, the weights are B = I - P / diag(P) with P = G^-1 (zero diagonal),
and a user's score of item j is the sum of B[i, j] over the items i they clicked. Fitted on the
items that have a click (the inverse costs items^3, so a catalogue with more clicked items than
`MAX_ITEMS` gets no weights and the source offers nothing). Each row keeps its `top` largest
positive weights, so a bundle stores a sparse matrix, not a dense items x items one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from features.ragged import flatten

# Largest number of clicked items EASE is fitted for: the Gram matrix and its inverse are dense
# float64 (8,000 items: 2 x 512 MB, seconds to invert).
MAX_ITEMS = 8000
# lambda 200: the re-run reference EASE's on amazon-scientific (not tuned here); the top 100 per
# row keep a bundle's file small (4,385 items: 440k weights instead of 19M).
DEFAULT_LAMBDA = 200.0
DEFAULT_TOP = 100


class ItemItem:
    """The sparse [n_items, n_items] EASE weights, row = clicked item, column = scored item."""

    def __init__(self, matrix: sp.csr_matrix) -> None:
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"item-item weights are {matrix.shape}, not square")
        self.matrix_ = matrix

    @property
    def n_items(self) -> int:
        return int(self.matrix_.shape[0])

    @classmethod
    def empty(cls, n_items: int) -> ItemItem:
        return cls(sp.csr_matrix((n_items, n_items), dtype=np.float32))

    @classmethod
    def fit(cls, clicks: pl.DataFrame, n_items: int, lam: float = DEFAULT_LAMBDA,
            top: int = DEFAULT_TOP) -> ItemItem:
        """EASE on the (user_id, item) pairs of `clicks` (repeats count once)."""
        pairs = clicks.select("user_id", "item").unique()
        items = pairs["item"].to_numpy().astype(np.int64)
        active = np.unique(items)
        if active.size == 0 or active.size > MAX_ITEMS:
            return cls.empty(n_items)
        users = pairs["user_id"].rank("dense").to_numpy().astype(np.int64) - 1
        column = np.searchsorted(active, items)
        x = sp.csr_matrix((np.ones(items.size), (users, column)),
                          shape=(int(users.max()) + 1, active.size))
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += lam
        p = np.linalg.inv(gram)
        weights = -p / np.diag(p)[None, :]
        np.fill_diagonal(weights, 0.0)
        return cls(_top_per_row(weights, active, n_items, top))

    def resized(self, n_items: int) -> ItemItem:
        """The same weights over a catalogue grown to `n_items` (new items have none)."""
        m = self.matrix_
        return ItemItem(sp.csr_matrix((m.data, m.indices, np.concatenate(
            [m.indptr, np.full(n_items - self.n_items, m.indptr[-1])])), shape=(n_items, n_items)))

    def score(self, histories: Sequence[Sequence[int]]) -> sp.csr_matrix:
        """Sparse [n_users, n_items] EASE scores (float32), positive entries only: each user's
        distinct history items' rows summed."""
        items, offsets = flatten(histories)
        users = np.repeat(np.arange(len(histories), dtype=np.int64), np.diff(offsets))
        x = sp.csr_matrix((np.ones(items.size, np.float32), (users, items)),
                          shape=(len(histories), self.n_items))
        x.sum_duplicates()
        x.data[:] = 1.0
        scores = (x @ self.matrix_).tocsr()
        scores.data[scores.data <= 0] = 0.0
        scores.eliminate_zeros()
        scores.sort_indices()
        return scores

    def save(self, path: Path) -> None:
        m = self.matrix_
        save_file({"indptr": m.indptr.astype(np.int64), "indices": m.indices.astype(np.int32),
                   "data": m.data.astype(np.float32)}, str(path))

    @classmethod
    def load(cls, path: Path, n_items: int) -> ItemItem:
        arrays = load_file(str(path))
        indptr, indices, data = arrays["indptr"], arrays["indices"], arrays["data"]
        if indptr.shape != (n_items + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0) \
                or indptr[-1] != indices.size or indices.size != data.size \
                or (indices.size and (indices.min() < 0 or indices.max() >= n_items)):
            raise ValueError(f"{path.name}: item-item weights do not fit {n_items} items")
        return cls(sp.csr_matrix((data, indices, indptr), shape=(n_items, n_items)))


def _top_per_row(weights: np.ndarray, active: np.ndarray, n_items: int, top: int) -> sp.csr_matrix:
    """The `top` largest positive weights of each row, at catalogue rows and columns."""
    k = min(top, weights.shape[1])
    best = np.argpartition(-weights, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(weights, best, axis=1)
    keep = values > 0
    rows = np.repeat(active, k).reshape(-1, k)[keep]
    matrix = sp.csr_matrix((values[keep].astype(np.float32), (rows, active[best[keep]])),
                           shape=(n_items, n_items))
    matrix.sort_indices()
    return matrix
