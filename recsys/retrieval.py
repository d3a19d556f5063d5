"""Candidate retrieval: user profiles, and candidates from several sources merged into one list.

Sources: semantic nearest neighbours of the user's profile (FAISS), co-visitation with the
user's recent items, and popularity (which also serves users with no history at all).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from features import kernels
from features.build import MISSING_RANK, Candidates
from features.ragged import flatten
from features.state import BehaviourState
from recsys.index import ItemIndex

# Profile recency weighting: the k-th most recent item weighs PROFILE_DECAY ** k. Chosen on the
# amazon-scientific valid split (see docs/benchmarks.md).
PROFILE_DECAY = 0.7
PROFILE_MAX_ITEMS = 50


@dataclass
class RetrievalConfig:
    n_semantic: int = 100
    n_covisitation: int = 100
    n_popular: int = 20
    include_history: bool = True  # offer items the user already has; the ranker learns repeats
    profile_decay: float = PROFILE_DECAY

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def user_profiles(histories: Sequence[Sequence[int]], item_vectors: np.ndarray,
                  decay: float = PROFILE_DECAY) -> np.ndarray:
    """Recency-weighted mean of history item vectors, L2-normalised; zeros for empty histories."""
    dim = item_vectors.shape[1]
    profiles = np.zeros((len(histories), dim), dtype=np.float32)
    all_weights = _recency_weights(float(decay))
    for u, history in enumerate(histories):
        tail = np.asarray(list(history)[-PROFILE_MAX_ITEMS:], dtype=np.int64)
        if tail.size == 0:
            continue
        profiles[u] = all_weights[-tail.size:] @ item_vectors[tail]
    norms = np.linalg.norm(profiles, axis=1, keepdims=True)
    return np.divide(profiles, norms, out=np.zeros_like(profiles), where=norms > 0)


@functools.lru_cache(maxsize=8)
def _recency_weights(decay: float) -> np.ndarray:
    """decay ** k for the k-th most recent of PROFILE_MAX_ITEMS items, oldest first (a
    history's weights are the last len(history) of them), made once instead of per request."""
    weights = decay ** np.arange(PROFILE_MAX_ITEMS - 1, -1, -1, dtype=np.float32)
    weights.flags.writeable = False
    return weights


def retrieve(histories: Sequence[Sequence[int]], profiles: np.ndarray, index: ItemIndex,
             state: BehaviourState, config: RetrievalConfig,
             exclude: Sequence[set[int]] | None = None,
             allowed: np.ndarray | None = None,
             covis_scores: sp.csr_matrix | None = None) -> Candidates:
    """Merge the sources into one candidate list per request (each item once per request).

    `exclude[u]`: item rows never to return for request u (seen items, business rules).
    `allowed`: optional boolean mask over item rows (category filters, deleted items).

    A request's rows come in this order: its semantic hits by rank, then co-visitation items
    not yet listed, then popular ones, then (with `include_history`) its history items. Each
    row carries the rank every source gave it (MISSING_RANK where a source did not return it).
    """
    n = len(histories)
    exclude = [set() for _ in range(n)] if exclude is None else [set(e) for e in exclude]
    banned = set(np.flatnonzero(~allowed).tolist()) if allowed is not None else set()
    history_sets = [set(int(i) for i in h) for h in histories]
    has_history = np.array([len(h) > 0 for h in histories], dtype=bool)

    # The sources skip the request's exclusions and its history (history is offered separately,
    # or not at all, so it never crowds new items out of a source's quota).
    if covis_scores is None:
        covis_scores = state.covisitation.score(histories)
    skipped_items, skipped_offsets = flatten([exclude[u] | history_sets[u] for u in range(n)])
    width = 1 + max(state.n_items, index.size, covis_scores.shape[1],
                    int(skipped_items.max(initial=0)))

    semantic_users = np.zeros(0, np.int64)
    semantic_rows = np.zeros((0, 0), np.int64)
    if config.n_semantic > 0 and has_history.any():
        semantic_users = np.flatnonzero(has_history)
        source_exclude = [exclude[u] | banned | history_sets[u] for u in semantic_users]
        semantic_rows, _ = index.search(profiles[semantic_users], config.n_semantic,
                                        exclude=source_exclude)
    offered: list[list[int]] = [[] for _ in range(n)]
    if config.include_history:
        # Python set order, as the list always had it (the rows' order is the training
        # groups' order, which LightGBM's ties depend on).
        offered = [list(history_sets[u] - (exclude[u] | banned)) for u in range(n)]
    offered_items, offered_offsets = flatten(offered)
    request, item, sem_rank, covis_rank, pop_rank = kernels.merge_candidates(
        n, semantic_users, semantic_rows, covis_scores, config.n_covisitation,
        state.popular_rows_, config.n_popular, allowed, skipped_items, skipped_offsets,
        offered_items, offered_offsets, width, MISSING_RANK)
    return Candidates(request=request, item=item, sem_rank=sem_rank, covis_rank=covis_rank,
                      pop_rank=pop_rank)


def source_ranks(histories: Sequence[Sequence[int]], profiles: np.ndarray,
                 item_lists: Sequence[Sequence[int]], item_vectors: np.ndarray,
                 state: BehaviourState, covis_scores: sp.csr_matrix | None = None) -> Candidates:
    """Candidates given from outside (a logged impression list), with the rank each source
    would have given them over the whole catalogue, so features mean what they mean in training.

    A source's rank of an item is the number of items it scores strictly higher (history items
    are never returned by a source, so they neither rank nor count)."""
    n_items = item_vectors.shape[0]
    pop_rank_of = np.empty(n_items, dtype=np.float32)
    pop_rank_of[state.popular_rows_] = np.arange(n_items, dtype=np.float32)
    covis = state.covisitation.score(histories) if covis_scores is None else covis_scores
    requests, items, sem_rank, covis_rank, pop_rank = [], [], [], [], []
    for u, given in enumerate(item_lists):
        given = np.asarray(list(dict.fromkeys(int(i) for i in given)), dtype=np.int64)
        if given.size == 0:
            continue
        history = np.asarray(list(set(int(i) for i in histories[u])), dtype=np.int64)
        if history.size:
            sims = item_vectors @ profiles[u]
            sims[history] = -np.inf  # the semantic source never returns history items
            sem = np.where(np.isfinite(sims[given]), _count_above(sims, sims[given]),
                           MISSING_RANK)
            start, end = covis.indptr[u], covis.indptr[u + 1]
            cols, vals = covis.indices[start:end], covis.data[start:end]
            scored = (vals > 0) & ~np.isin(cols, history)   # what the source could return
            cols, vals = cols[scored], vals[scored]
            cov = np.full(given.size, MISSING_RANK)
            if cols.size:
                order = np.argsort(cols)
                cols, vals = cols[order], vals[order]
                at = np.minimum(np.searchsorted(cols, given), cols.size - 1)
                found = cols[at] == given
                cov[found] = _count_above(vals, vals[at[found]])
        else:
            sem = np.full(given.size, MISSING_RANK, dtype=np.float32)
            cov = sem.copy()
        requests.append(np.full(given.size, u, dtype=np.int64))
        items.append(given)
        sem_rank.append(np.minimum(sem, MISSING_RANK).astype(np.float32))
        covis_rank.append(np.minimum(cov, MISSING_RANK).astype(np.float32))
        pop_rank.append(np.minimum(pop_rank_of[given], MISSING_RANK))

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return Candidates(request=cat(requests, np.int64), item=cat(items, np.int64),
                      sem_rank=cat(sem_rank, np.float32), covis_rank=cat(covis_rank, np.float32),
                      pop_rank=cat(pop_rank, np.float32))


def _count_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many `values` are strictly greater (one sort, not a scan each)."""
    ordered = np.sort(values)
    return (ordered.size - np.searchsorted(ordered, thresholds, side="right")).astype(np.float64)
