"""Semantic source: the items nearest to the user's profile vector in an item index (FAISS, or
the index plus fresh items, fresh_index.py)."""

from __future__ import annotations

import numba
import numpy as np

from features.build import MISSING_RANK
from recsys.retrieval.source import RetrievalBatch, SourceHits, missing_ranks


class SemanticSource:
    """The `n` best-scoring items of `index` for each request with a history (a profile);
    rank = position in the search result. `item_vectors` (row = item row) serve `ranks_of`."""

    name = "semantic"
    rank_name = "sem_rank"

    def __init__(self, index, n: int, item_vectors: np.ndarray | None = None) -> None:
        self.index = index
        self.n = int(n)
        self.item_vectors = item_vectors

    def candidates(self, batch: RetrievalBatch) -> SourceHits:
        n = len(batch)
        if self.n <= 0 or not batch.has_history.any():
            return SourceHits.empty(n)
        users = np.flatnonzero(batch.has_history)
        banned, history_sets = batch.banned, batch.history_sets
        source_exclude = [batch.exclude[u] | banned | history_sets[u] for u in users]
        rows, scores = self.index.search(batch.profiles[users], self.n, exclude=source_exclude)
        return SourceHits(*found_rows(n, users, np.asarray(rows, np.int64),
                                      np.asarray(scores, np.float32)))

    def ranks_of(self, batch: RetrievalBatch, items: np.ndarray,
                 offsets: np.ndarray) -> np.ndarray:
        """How many items score strictly higher than each given one (history items are never
        returned, so they neither rank nor count)."""
        if self.item_vectors is None:
            raise ValueError("the semantic source needs the item vectors to rank given items")
        out = missing_ranks(items.size)
        for u in range(len(batch)):
            given = items[offsets[u]:offsets[u + 1]]
            history = np.asarray(list(batch.history_sets[u]), dtype=np.int64)
            if given.size == 0 or history.size == 0:
                continue
            sims = self.item_vectors @ batch.profiles[u]
            sims[history] = -np.inf
            sem = np.where(np.isfinite(sims[given]), count_above(sims, sims[given]),
                           MISSING_RANK)
            out[offsets[u]:offsets[u + 1]] = np.minimum(sem, MISSING_RANK)
        return out


def count_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many `values` are strictly greater (one sort, not a scan each)."""
    ordered = np.sort(values)
    return (ordered.size - np.searchsorted(ordered, thresholds, side="right")).astype(np.float64)


@numba.njit(nogil=True, cache=True)
def found_rows(n_requests, users, rows, scores):
    """(items, ranks, scores, offsets) of search results `rows` [len(users), k] (-1: none),
    row j answering request users[j]; rank = column."""
    found = 0
    for j in range(rows.shape[0]):
        for c in range(rows.shape[1]):
            found += rows[j, c] >= 0
    items = np.empty(found, np.int64)
    ranks = np.empty(found, np.float32)
    out_scores = np.empty(found, np.float32)
    counts = np.zeros(n_requests + 1, np.int64)
    used = 0
    for j in range(rows.shape[0]):
        for c in range(rows.shape[1]):
            if rows[j, c] >= 0:
                items[used] = rows[j, c]
                ranks[used] = c
                out_scores[used] = scores[j, c]
                used += 1
                counts[users[j] + 1] += 1
    return items, ranks, out_scores, np.cumsum(counts)
