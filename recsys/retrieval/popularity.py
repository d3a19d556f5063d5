"""Popularity source: the most clicked items (the state's popularity order), the same list for
every request less what it skips; it also serves users with no history at all."""

from __future__ import annotations

import numba
import numpy as np

from features.build import MISSING_RANK
from features.state import BehaviourState
from recsys.retrieval import _item_sets as sets
from recsys.retrieval.source import RetrievalBatch, SourceHits, missing_ranks


class PopularitySource:
    """The first `n` eligible items of the popularity order; rank = position in that order
    (so an item's rank does not depend on what the request skips)."""

    name = "popularity"
    rank_name = "pop_rank"

    def __init__(self, state: BehaviourState, n: int) -> None:
        self.state = state
        self.n = int(n)

    def candidates(self, batch: RetrievalBatch) -> SourceHits:
        if self.n <= 0:
            return SourceHits.empty(len(batch))
        skipped, skipped_offsets = batch.skipped
        allowed = batch.allowed
        return SourceHits(*most_popular(
            self.state.popular_rows_, np.asarray(self.state.clicks_, dtype=np.float32), self.n,
            skipped, skipped_offsets, sets.NO_MASK if allowed is None else allowed,
            allowed is not None))

    def ranks_of(self, batch: RetrievalBatch, items: np.ndarray,
                 offsets: np.ndarray) -> np.ndarray:
        popular = self.state.popular_rows_
        size = max(int(popular.max(initial=-1)), int(items.max(initial=-1))) + 1
        rank_of = missing_ranks(size)
        rank_of[popular] = np.arange(popular.size, dtype=np.float32)
        return np.minimum(rank_of[items], np.float32(MISSING_RANK))


@numba.njit(nogil=True, cache=True)
def most_popular(popular, clicks, n_take, skipped, skipped_offsets, allowed, has_allowed):
    """(items, ranks, scores, offsets): per request, the first `n_take` of `popular` that it
    does not skip and that are allowed; score = the item's clicks."""
    n = skipped_offsets.size - 1
    capacity = n * min(n_take, popular.size)
    items = np.empty(capacity, np.int64)
    ranks = np.empty(capacity, np.float32)
    scores = np.empty(capacity, np.float32)
    offsets = np.zeros(n + 1, np.int64)
    keys = np.empty(sets.table_size(sets.longest(skipped_offsets)), np.int64)
    used = 0
    for u in range(n):
        offsets[u] = used
        sets.fill(keys, skipped, skipped_offsets[u], skipped_offsets[u + 1])
        taken = 0
        for p in range(popular.size):
            if taken == n_take:
                break
            item = np.int64(popular[p])
            if item < 0 or (has_allowed and item >= allowed.size) or item >= clicks.size:
                raise IndexError("popular item outside the catalogue")
            if keys[sets.slot_of(keys, item)] == item or (has_allowed and not allowed[item]):
                continue
            items[used] = item
            ranks[used] = p
            scores[used] = clicks[item]
            used += 1
            taken += 1
    offsets[n] = used
    return items[:used], ranks[:used], scores[:used], offsets
