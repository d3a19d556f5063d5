"""The shared ranking context: retrieval plus feature rows, for any behavioural state.

Serving, batch scoring, evaluation and ranker training all build their (request, candidate)
rows here, so the rows a model learns from are made exactly as the rows it later scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numba
import numpy as np
import polars as pl

from features.build import MISSING_RANK, Candidates, Requests, feature_frame, feature_matrix
from features.state import BehaviourState
from recsys.index import ItemIndex
from recsys.interest import InterestModel
from recsys.retrieval import (
    CandidateSource,
    RetrievalConfig,
    SourceInputs,
    build_sources,
    retrieve,
    source_ranks,
    user_profiles,
)


@dataclass
class RankingContext:
    item_vectors: np.ndarray
    item_categories: np.ndarray
    index: ItemIndex
    state: BehaviourState
    retrieval: RetrievalConfig
    interest: InterestModel | None = None   # learned user side; None = recency-weighted mean
    # the candidate sources in merge order; None: the registry's, set up by `retrieval`
    sources: Sequence[CandidateSource] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.sources is None:
            self.sources = build_sources(self.retrieval, SourceInputs(
                self.index, self.state, self.item_vectors))

    def requests(self, histories: Sequence[Sequence[int]], times: np.ndarray,
                 last_times: np.ndarray) -> Requests:
        if self.interest is not None:
            profiles = self.interest.profiles(histories, self.item_vectors)
        else:
            profiles = user_profiles(histories, self.item_vectors, self.retrieval.profile_decay)
        return Requests(histories=[list(h) for h in histories], profiles=profiles,
                        times=np.asarray(times, dtype=np.float64),
                        last_event_times=np.asarray(last_times, dtype=np.float64))

    def rows(self, requests: Requests, exclude: Sequence[set[int]] | None = None,
             allowed: np.ndarray | None = None,
             given: Sequence[Sequence[int]] | None = None,
             as_frame: bool = True) -> tuple[Candidates, pl.DataFrame | np.ndarray]:
        """Candidates (retrieved, or the `given` item lists) and their feature rows: a frame
        with the `FEATURES` columns, or with `as_frame=False` the bare float32 block in that
        column order (what the ranker reads; serving skips the frame)."""
        covis_scores = requests.covisitation_scores(self.state.covisitation)
        if given is None:
            candidates = retrieve(requests.histories, requests.profiles, self.index, self.state,
                                  self.retrieval, exclude=exclude, allowed=allowed,
                                  covis_scores=covis_scores, sources=self.sources)
        else:
            candidates = source_ranks(requests.histories, requests.profiles, given,
                                      self.item_vectors, self.state, covis_scores=covis_scores,
                                      sources=self.sources)
        block = feature_matrix(requests, candidates, self.state, self.item_vectors,
                               self.item_categories)
        return candidates, feature_frame(block) if as_frame else block


def new_item_rows(state: BehaviourState) -> np.ndarray:
    """Which item rows are new to the model: no event in the state's log and created after it
    (`BehaviourState.new_`, from the catalogue's `created_at`), or added while serving."""
    rows = state.new_
    rows.flags.writeable = False
    return rows


def best_first(candidates: Candidates, scores: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Every request's rows best first (score descending, then the lower item row), each
    request's in its own slice of the rows (`Candidates.bounds`). The same order as
    `np.lexsort((item, -scores, request))`, sorted per request instead of over the whole batch."""
    return _best_first(np.ascontiguousarray(bounds, np.int64),
                       np.ascontiguousarray(scores, np.float64),
                       np.ascontiguousarray(candidates.item, np.int64))


@numba.njit(nogil=True, cache=True)
def _best_first(bounds, scores, items):
    out = np.empty(scores.size, np.int64)
    for u in range(bounds.size - 1):
        lo, hi = bounds[u], bounds[u + 1]
        by_item = np.argsort(items[lo:hi], kind="mergesort")
        # stable: equal scores keep the item order
        by_score = np.argsort(-scores[lo:hi][by_item], kind="mergesort")
        out[lo:hi] = by_item[by_score] + lo
    return out


def keep_new_items_up(best_first: np.ndarray, items: np.ndarray, sem_rank: np.ndarray,
                      is_new: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """One request's candidate positions `best_first` (ranker order), with each new item moved
    up to its semantic rank where the ranker put it lower.

    The ranker knows nothing of a new item but its text, and learned from items that had a
    history; it may promote a new item, but demoting one below where the semantic source alone
    ranks it would bury new items behind popular ones on no evidence. So the new item with
    semantic rank r (0-based) is at position r or better. `items`, `sem_rank`: per candidate
    position; `is_new`: per item row. With `scores` (per position, changed in place) a moved
    item's score becomes that of the item now below it, so scores still fall along the order.
    Returns `best_first` itself when no item moves.
    """
    best_first = np.ascontiguousarray(best_first, np.int64)
    out = keep_new_items_up_in_batch(
        best_first, np.array([0, best_first.size], np.int64), np.ascontiguousarray(items),
        np.ascontiguousarray(sem_rank, np.float32), np.ascontiguousarray(is_new, bool),
        np.zeros(0) if scores is None else scores, scores is not None)
    return best_first if np.array_equal(out, best_first) else out


@numba.njit(nogil=True, cache=True)
def keep_new_items_up_in_batch(order, bounds, items, sem_rank, is_new, scores, has_scores):
    """`keep_new_items_up` for every request of a batch at once: request u's positions are
    order[bounds[u]:bounds[u + 1]]. Returns the new order; `scores` changes in place."""
    out = order.copy()
    for u in range(bounds.size - 1):
        lo, hi = bounds[u], bounds[u + 1]
        n_moved = 0
        for p in range(hi - lo):
            r = sem_rank[order[lo + p]]
            if r < MISSING_RANK and p > r and is_new[items[order[lo + p]]]:
                n_moved += 1
        if n_moved == 0:
            continue
        # the moved positions by semantic rank (ties: the lower candidate position first)
        pinned = np.empty(n_moved, np.int64)
        ranks = np.empty(n_moved, np.int64)
        j = 0
        for p in range(hi - lo):
            position = order[lo + p]
            r = sem_rank[position]
            if r < MISSING_RANK and p > r and is_new[items[position]]:
                pinned[j], ranks[j] = position, np.int64(r)
                j += 1
        by_position = np.argsort(pinned, kind="mergesort")
        by_rank = by_position[np.argsort(ranks[by_position], kind="mergesort")]
        # each at its rank or, where an earlier one took that place, right after it; the other
        # items fill the remaining places in the ranker's order
        taken = np.zeros(hi - lo, np.bool_)
        floor = -1
        for j in range(n_moved):
            at = max(ranks[by_rank[j]], floor + 1)
            taken[at] = True
            out[lo + at] = pinned[by_rank[j]]
            floor = at
        place = 0
        for p in range(hi - lo):
            position = order[lo + p]
            r = sem_rank[position]
            if r < MISSING_RANK and p > r and is_new[items[position]]:
                continue
            while taken[place]:
                place += 1
            out[lo + place] = position
            place += 1
        if has_scores:
            best = scores[out[hi - 1]]
            for p in range(hi - 1, lo - 1, -1):
                s = scores[out[p]]
                if best == best and not best >= s:   # as np.maximum: a NaN carries on
                    best = s
                scores[out[p]] = best
    return out
