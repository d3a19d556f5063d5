"""History source: the items the user already has, offered back (the ranker learns repeats)."""

from __future__ import annotations

import numba
import numpy as np

from features.ragged import flatten
from recsys.retrieval.source import RetrievalBatch, SourceHits, missing_ranks


class HistorySource:
    """Each request's distinct history items not excluded or disallowed, in Python set order
    (the order the candidate rows always had: LightGBM's ties depend on it); rank = position.
    Its rank is no ranker feature: a candidate's presence in the history is (`in_history`)."""

    name = "history"
    rank_name = "history_rank"

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled)

    def candidates(self, batch: RetrievalBatch) -> SourceHits:
        if not self.enabled:
            return SourceHits.empty(len(batch))
        banned = batch.banned
        offered = [list(h - (e | banned)) if h else []
                   for h, e in zip(batch.history_sets, batch.exclude, strict=True)]
        items, offsets = flatten(offered)
        return SourceHits(items, positions(offsets), np.zeros(items.size, np.float32), offsets)

    def ranks_of(self, batch: RetrievalBatch, items: np.ndarray,
                 offsets: np.ndarray) -> np.ndarray:
        return missing_ranks(items.size)


@numba.njit(nogil=True, cache=True)
def positions(offsets):
    """Each entry's position within its own list, float32 (the lists' flat offsets given)."""
    out = np.empty(offsets[-1], np.float32)
    for u in range(offsets.size - 1):
        for t in range(offsets[u], offsets[u + 1]):
            out[t] = t - offsets[u]
    return out
