"""A semantic index over the bundle's items plus the items added since it was built (cold
start: a new item is retrievable at once, before the next retraining rebuilds the index)."""

from __future__ import annotations

import numpy as np

from recsys.index import ItemIndex


class FreshItemsIndex:
    """The bundle's index plus an exact search over items added since it was built.

    Same `search(queries, k, exclude)` contract as `ItemIndex`; fresh rows follow the bundle's
    (row `base.size + j` is the j-th fresh vector), so results merge by score.
    """

    def __init__(self, base: ItemIndex, fresh_vectors: np.ndarray) -> None:
        self.base = base
        self.fresh_vectors = fresh_vectors

    @property
    def size(self) -> int:
        return self.base.size + int(self.fresh_vectors.shape[0])

    @property
    def dim(self) -> int:
        return self.base.dim

    def search(self, queries: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        rows, scores = self.base.search(queries, k, exclude)
        offset, m = self.base.size, self.fresh_vectors.shape[0]
        if m == 0 or k <= 0:
            return rows, scores
        fresh_scores = queries @ self.fresh_vectors.T
        if exclude is not None:
            for q, excluded in enumerate(exclude):
                for r in excluded:
                    if offset <= int(r) < offset + m:
                        fresh_scores[q, int(r) - offset] = -np.inf
        fresh_rows = np.broadcast_to(np.arange(offset, offset + m), fresh_scores.shape)
        fresh_rows = np.where(np.isfinite(fresh_scores), fresh_rows, -1)
        all_rows = np.concatenate([rows, fresh_rows], axis=1)
        all_scores = np.concatenate([scores, fresh_scores.astype(np.float32)], axis=1)
        k = min(k, self.size)
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        return (np.take_along_axis(all_rows, order, axis=1),
                np.take_along_axis(all_scores, order, axis=1))
