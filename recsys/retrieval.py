"""Candidate retrieval: user profiles, and candidates from several sources merged into one list.

Sources: semantic nearest neighbours of the user's profile (FAISS), co-visitation with the
user's recent items, and popularity (which also serves users with no history at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from features.build import MISSING_RANK, Candidates
from features.ragged import PairSet, flatten, owners
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
    for u, history in enumerate(histories):
        tail = np.asarray(list(history)[-PROFILE_MAX_ITEMS:], dtype=np.int64)
        if tail.size == 0:
            continue
        weights = decay ** np.arange(tail.size - 1, -1, -1, dtype=np.float32)
        profiles[u] = weights @ item_vectors[tail]
    norms = np.linalg.norm(profiles, axis=1, keepdims=True)
    return np.divide(profiles, norms, out=np.zeros_like(profiles), where=norms > 0)


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
    # or not at all, so it never crowds new items out of a source's quota). Membership is
    # tested on arrays: banned rows through `allowed`, the rest as (request, item) pairs.
    if covis_scores is None:
        covis_scores = state.covisitation.score(histories)
    history_items, history_offsets = flatten(histories)
    exclude_items, exclude_offsets = flatten(exclude)
    width = 1 + max(state.n_items, index.size, covis_scores.shape[1],
                    int(history_items.max(initial=0)), int(exclude_items.max(initial=0)))
    skipped = PairSet(np.concatenate([owners(exclude_offsets), owners(history_offsets)]),
                      np.concatenate([exclude_items, history_items]), width)

    def eligible(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keep = ~skipped.contains(users, items)
        if allowed is not None:
            keep &= allowed[items]
        return keep

    # Each source as flat (request, item, rank) arrays, grouped by request, best rank first.
    sources = []
    if config.n_semantic > 0 and has_history.any():
        users = np.flatnonzero(has_history)
        source_exclude = [exclude[u] | banned | history_sets[u] for u in users]
        rows, _ = index.search(profiles[users], config.n_semantic, exclude=source_exclude)
        at, rank = np.nonzero(rows >= 0)
        sources.append((users[at], rows[at, rank], rank))
    else:
        sources.append(_empty_source())
    sources.append(_top_covisitation(covis_scores, config.n_covisitation, eligible))
    sources.append(_top_popular(state.popular_rows_, config.n_popular, n, eligible,
                                skipped.max_per_owner(), allowed))
    if config.include_history:
        # Python set order, as the list always had it (the rows' order is the training
        # groups' order, which LightGBM's ties depend on).
        offered = [list(history_sets[u] - (exclude[u] | banned)) for u in range(n)]
        items, offsets = flatten(offered)
        sources.append((owners(offsets), items, np.full(items.size, MISSING_RANK)))
    return _merge(sources, width)


def _empty_source() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def _merge(sources, width: int) -> Candidates:
    """One row per (request, item), ordered by request and then by first appearance across
    the sources in order; each row gets each source's rank (the last one if a source repeats
    an item, as a dict update would)."""
    users = np.concatenate([s[0] for s in sources]).astype(np.int64)
    items = np.concatenate([s[1] for s in sources]).astype(np.int64)
    kind = np.concatenate([np.full(len(s[0]), j, dtype=np.int64) for j, s in enumerate(sources)])
    rank = np.concatenate([np.asarray(s[2], dtype=np.float32) for s in sources])
    order = np.argsort(users, kind="stable")
    users, items, kind, rank = users[order], items[order], kind[order], rank[order]
    _, first, which = np.unique(users * width + items, return_index=True, return_inverse=True)
    position = np.empty(first.size, dtype=np.int64)
    position[np.argsort(first, kind="stable")] = np.arange(first.size)
    row_of = position[which]                   # output row of each source entry
    picked = np.sort(first)
    ranks = np.full((3, first.size), MISSING_RANK, dtype=np.float32)
    for source in range(3):
        # reversed, so np.unique's first occurrence is the source's last entry (a dict update)
        entries = np.flatnonzero(kind == source)[::-1]
        rows, last = np.unique(row_of[entries], return_index=True)
        ranks[source, rows] = rank[entries[last]]
    return Candidates(request=users[picked], item=items[picked], sem_rank=ranks[0],
                      covis_rank=ranks[1], pop_rank=ranks[2])


def _top_covisitation(scores: sp.csr_matrix, n: int, eligible):
    """Each request's `n` best eligible items by score (ties: lower item row first)."""
    if n <= 0:
        return _empty_source()
    users = owners(scores.indptr.astype(np.int64))
    cols, vals = scores.indices.astype(np.int64), scores.data
    order = np.lexsort((cols, -vals, users))
    users, cols = users[order], cols[order]
    keep = eligible(users, cols)
    users, cols = users[keep], cols[keep]
    rank = np.arange(users.size) - np.searchsorted(users, users)
    top = rank < n
    return users[top], cols[top], rank[top]


def _top_popular(popular: np.ndarray, n: int, n_users: int, eligible, max_skipped: int,
                 allowed: np.ndarray | None):
    """Each request's first `n` eligible items in popularity order, ranked by their position in
    that order. Only a prefix is examined: `n` plus a request's skipped items suffice."""
    if n <= 0 or n_users == 0:
        return _empty_source()
    need = n + max_skipped
    positions = _allowed_prefix(popular, need, allowed)
    out_users, out_items, out_ranks = [], [], []
    block = max(1, (1 << 22) // max(positions.size, 1))  # bounds the [users, prefix] grid
    for start in range(0, n_users, block):
        users = np.arange(start, min(start + block, n_users), dtype=np.int64)
        grid_users = np.repeat(users, positions.size)
        grid_pos = np.tile(positions, users.size)
        keep = eligible(grid_users, popular[grid_pos]).reshape(users.size, positions.size)
        taken = np.cumsum(keep, axis=1)
        keep &= taken <= n
        at_user, at_pos = np.nonzero(keep)
        out_users.append(users[at_user])
        out_items.append(popular[positions[at_pos]])
        out_ranks.append(positions[at_pos])
    return np.concatenate(out_users), np.concatenate(out_items), np.concatenate(out_ranks)


def _allowed_prefix(popular: np.ndarray, need: int, allowed: np.ndarray | None) -> np.ndarray:
    """Positions in `popular` of its first `need` allowed items (fewer if it has fewer)."""
    if allowed is None:
        return np.arange(min(need, popular.size), dtype=np.int64)
    scan = need
    while True:
        head = popular[:scan]
        positions = np.flatnonzero(allowed[head])
        if positions.size >= need or scan >= popular.size:
            return positions[:need].astype(np.int64)
        scan *= 4


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
    cat = (lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts
           else np.zeros(0, dtype=dtype))
    return Candidates(request=cat(requests, np.int64), item=cat(items, np.int64),
                      sem_rank=cat(sem_rank, np.float32), covis_rank=cat(covis_rank, np.float32),
                      pop_rank=cat(pop_rank, np.float32))


def _count_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many `values` are strictly greater (one sort, not a scan each)."""
    ordered = np.sort(values)
    return (ordered.size - np.searchsorted(ordered, thresholds, side="right")).astype(np.float64)
