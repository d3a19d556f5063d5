"""The generic merge: any number of sources' hits into one candidate list per request.

Per request, the sources in their priority order, each item once, at its first appearance;
every row carries every source's rank (MISSING_RANK where a source did not return the item).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from features.build import MISSING_RANK, Candidates
from recsys.retrieval import _item_sets as sets
from recsys.retrieval.source import CandidateSource, RetrievalBatch, SourceHits

_MISSING = np.float32(MISSING_RANK)


@dataclass
class MergedCandidates:
    """Candidate rows grouped by request: request index, item row, and each source's rank by
    the source's `rank_name`."""

    request: np.ndarray
    item: np.ndarray
    ranks: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.item.shape[0])

    def candidates(self) -> Candidates:
        """The rows as the feature builder reads them: the ranks the ranker's features read
        (a source absent here: MISSING_RANK); other sources' ranks stay in `ranks`."""
        def rank(name: str) -> np.ndarray:
            found = self.ranks.get(name)
            return found if found is not None else np.full(len(self), MISSING_RANK, np.float32)

        return Candidates(request=self.request, item=self.item, sem_rank=rank("sem_rank"),
                          covis_rank=rank("covis_rank"), pop_rank=rank("pop_rank"),
                          item_item_rank=rank("item_item_rank"))


def retrieve_from(batch: RetrievalBatch, sources: Sequence[CandidateSource]) -> MergedCandidates:
    """Every source's candidates for `batch`, merged in the order of `sources`."""
    names = [source.rank_name for source in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"two sources share a rank name: {names}")
    return merge_sources(len(batch), [source.candidates(batch) for source in sources], names)


def merge_sources(n_requests: int, hits: Sequence[SourceHits],
                  names: Sequence[str]) -> MergedCandidates:
    """The sources' `hits` (in priority order, named by `names`) merged per request."""
    if len(hits) != len(names):
        raise ValueError(f"{len(hits)} sources' hits for {len(names)} names")
    if not hits:
        return MergedCandidates(np.zeros(0, np.int64), np.zeros(0, np.int64), {})
    # the hits' dtypes are the protocol's (int64 items and offsets, float32 ranks), so they
    # go in as they are: this runs once per request batch
    request, item, merged = merge_ranked(
        n_requests, tuple([h.items for h in hits]), tuple([h.ranks for h in hits]),
        tuple([h.offsets for h in hits]), _MISSING)
    return MergedCandidates(request, item, dict(zip(names, merged, strict=True)))


@numba.njit(nogil=True, cache=True)
def merge_ranked(n_requests, items, ranks, offsets, missing):
    """(request, item, ranks [sources, rows]): per request u, the items
    items[s][offsets[s][u]:offsets[s][u + 1]] of each source s in order, each item once at its
    first appearance, with the rank each source gave it (the last, if a source repeats it)."""
    n_sources = len(items)
    capacity = 0
    for s in range(n_sources):
        if offsets[s].size != n_requests + 1 or ranks[s].size != items[s].size \
                or offsets[s][0] < 0 or offsets[s][n_requests] > items[s].size:
            raise ValueError("a source's hits do not match the batch's requests")
        for u in range(n_requests):
            if offsets[s][u + 1] < offsets[s][u]:
                raise ValueError("a source's hit offsets decrease")
        capacity += offsets[s][n_requests] - offsets[s][0]
    most = 0
    for u in range(n_requests):
        rows = 0
        for s in range(n_sources):
            rows += offsets[s][u + 1] - offsets[s][u]
        most = max(most, rows)
    request = np.empty(capacity, np.int64)
    item = np.empty(capacity, np.int64)
    merged = np.empty((n_sources, capacity), np.float32)
    keys = np.empty(sets.table_size(most), np.int64)
    row_of = np.empty(keys.size, np.int64)
    used = 0
    for u in range(n_requests):
        keys[:] = sets.EMPTY
        for s in range(n_sources):
            source_items, source_ranks = items[s], ranks[s]
            for t in range(offsets[s][u], offsets[s][u + 1]):
                it = source_items[t]
                if it < 0:
                    raise IndexError("a source returned a negative item row")
                slot = sets.slot_of(keys, it)
                if keys[slot] == it:
                    at = row_of[slot]
                else:
                    keys[slot] = it
                    row_of[slot] = used
                    at = used
                    request[used] = u
                    item[used] = it
                    merged[:, used] = missing
                    used += 1
                merged[s, at] = source_ranks[t]
    return request[:used], item[:used], merged[:, :used]
