"""Co-visitation source: items often clicked with the user's recent items (features/covisitation.py
scores them), best score first."""

from __future__ import annotations

import numba
import numpy as np

from features.build import MISSING_RANK
from features.state import BehaviourState
from recsys.retrieval import _item_sets as sets
from recsys.retrieval.semantic import count_above
from recsys.retrieval.source import RetrievalBatch, SourceHits, missing_ranks


class CovisitationSource:
    """The `n` best co-visitation scores of each request's row (score descending, then item
    row ascending) among the eligible items; rank = position among the eligible."""

    name = "covisitation"
    rank_name = "covis_rank"

    def __init__(self, state: BehaviourState, n: int) -> None:
        self.state = state
        self.n = int(n)

    def scores(self, batch: RetrievalBatch):
        if batch.covis_scores is None:
            batch.covis_scores = self.state.covisitation.score(batch.histories)
        return batch.covis_scores

    def candidates(self, batch: RetrievalBatch) -> SourceHits:
        if self.n <= 0:
            return SourceHits.empty(len(batch))
        scores = self.scores(batch)
        skipped, skipped_offsets = batch.skipped
        allowed = batch.allowed
        data = np.ascontiguousarray(scores.data, dtype=np.float32)
        return SourceHits(*best_covisited(
            scores.indptr, scores.indices, data, data.view(np.int32), self.n, skipped,
            skipped_offsets, sets.NO_MASK if allowed is None else allowed, allowed is not None))

    def ranks_of(self, batch: RetrievalBatch, items: np.ndarray,
                 offsets: np.ndarray) -> np.ndarray:
        """How many of the items the source could return (score > 0, not in the history) score
        strictly higher than each given one."""
        covis = self.scores(batch)
        out = missing_ranks(items.size)
        for u in range(len(batch)):
            given = items[offsets[u]:offsets[u + 1]]
            history = np.asarray(list(batch.history_sets[u]), dtype=np.int64)
            if given.size == 0 or history.size == 0:
                continue
            start, end = covis.indptr[u], covis.indptr[u + 1]
            cols, vals = covis.indices[start:end], covis.data[start:end]
            scored = (vals > 0) & ~np.isin(cols, history)
            cols, vals = cols[scored], vals[scored]
            if cols.size == 0:
                continue
            cov = np.full(given.size, MISSING_RANK)
            order = np.argsort(cols)
            cols, vals = cols[order], vals[order]
            at = np.minimum(np.searchsorted(cols, given), cols.size - 1)
            found = cols[at] == given
            cov[found] = count_above(vals, vals[at[found]])
            out[offsets[u]:offsets[u + 1]] = np.minimum(cov, MISSING_RANK)
        return out


@numba.njit(nogil=True, cache=True, inline="always")
def _descending_key(bits: int, column: int) -> int:
    """One int64 that sorts (value descending, column ascending), from the float32 value's
    bits: made monotonic (-0.0 as 0.0), flipped, above the column (columns < 2**31)."""
    bits = np.int64(bits)
    if bits == -2**31:
        bits = 0
    elif bits < 0:
        bits = bits ^ 0x7FFFFFFF
    return ((np.int64(2**31 - 1) - bits) << 31) | column


@numba.njit(nogil=True, cache=True)
def best_covisited(indptr, indices, data, data_bits, n_take, skipped, skipped_offsets, allowed,
                   has_allowed):
    """(items, ranks, scores, offsets): per request row of the CSR scores, the `n_take` best
    entries not skipped by the request and allowed."""
    n = indptr.size - 1
    capacity = 0
    widest = 0
    for u in range(n):
        width = indptr[u + 1] - indptr[u]
        capacity += min(width, n_take)
        widest = max(widest, width)
    items = np.empty(capacity, np.int64)
    ranks = np.empty(capacity, np.float32)
    scores = np.empty(capacity, np.float32)
    offsets = np.zeros(n + 1, np.int64)
    keys = np.empty(sets.table_size(sets.longest(skipped_offsets)), np.int64)
    sort_keys = np.empty(widest, np.int64)
    used = 0
    for u in range(n):
        offsets[u] = used
        lo, hi = indptr[u], indptr[u + 1]
        if hi == lo:
            continue
        sets.fill(keys, skipped, skipped_offsets[u], skipped_offsets[u + 1])
        m = hi - lo
        for e in range(m):
            column = np.int64(indices[lo + e])
            if column < 0 or column >= 2**31 or (has_allowed and column >= allowed.size):
                raise IndexError("co-visitation column outside the catalogue")
            sort_keys[e] = _descending_key(data_bits[lo + e], column)
        order = np.argsort(sort_keys[:m])
        taken = 0
        for j in range(m):
            e = lo + order[j]
            column = np.int64(indices[e])
            if keys[sets.slot_of(keys, column)] == column or (has_allowed and not allowed[column]):
                continue
            items[used] = column
            ranks[used] = taken
            scores[used] = data[e]
            used += 1
            taken += 1
            if taken == n_take:
                break
    offsets[n] = used
    return items[:used], ranks[:used], scores[:used], offsets
