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
    """
    n = len(histories)
    exclude = [set() for _ in range(n)] if exclude is None else [set(e) for e in exclude]
    if allowed is not None:
        banned = set(np.flatnonzero(~allowed).tolist())
        exclude = [e | banned for e in exclude]
    history_sets = [set(int(i) for i in h) for h in histories]
    # The semantic and co-visitation sources skip history items: history is offered separately
    # (or not at all), so it never crowds new items out of a source's quota.
    source_exclude = [e | h for e, h in zip(exclude, history_sets)]

    has_history = np.array([len(h) > 0 for h in histories])
    sem_rows = np.full((n, 0), -1, dtype=np.int64)
    if config.n_semantic > 0 and has_history.any():
        sem_rows = np.full((n, config.n_semantic), -1, dtype=np.int64)
        users = np.flatnonzero(has_history)
        rows, _ = index.search(profiles[users], config.n_semantic,
                               exclude=[source_exclude[u] for u in users])
        sem_rows[users] = rows

    if covis_scores is None:
        covis_scores = state.covisitation.score(histories)
    covis_lists = _top_covisitation(covis_scores, config.n_covisitation, source_exclude)
    popular = state.popular_rows_

    requests, items, sem_rank, covis_rank, pop_rank = [], [], [], [], []
    for u in range(n):
        ranks: dict[int, list[float]] = {}
        for r, item in enumerate(sem_rows[u]):
            if item >= 0:
                ranks.setdefault(int(item), [MISSING_RANK] * 3)[0] = r
        for r, item in enumerate(covis_lists[u]):
            ranks.setdefault(int(item), [MISSING_RANK] * 3)[1] = r
        taken = 0
        for r, item in enumerate(popular):
            if taken >= config.n_popular:
                break
            item = int(item)
            if item in exclude[u] or item in history_sets[u]:
                continue
            ranks.setdefault(item, [MISSING_RANK] * 3)[2] = r
            taken += 1
        if config.include_history:
            for item in history_sets[u] - exclude[u]:
                ranks.setdefault(item, [MISSING_RANK] * 3)
        for item, (s, c, p) in ranks.items():
            requests.append(u)
            items.append(item)
            sem_rank.append(s)
            covis_rank.append(c)
            pop_rank.append(p)
    return Candidates(
        request=np.asarray(requests, dtype=np.int64), item=np.asarray(items, dtype=np.int64),
        sem_rank=np.asarray(sem_rank, dtype=np.float32),
        covis_rank=np.asarray(covis_rank, dtype=np.float32),
        pop_rank=np.asarray(pop_rank, dtype=np.float32))


def _top_covisitation(scores: sp.csr_matrix, n: int,
                      exclude: Sequence[set[int]]) -> list[list[int]]:
    if n <= 0:
        return [[] for _ in range(scores.shape[0])]
    out = []
    for u in range(scores.shape[0]):
        start, end = scores.indptr[u], scores.indptr[u + 1]
        cols, vals = scores.indices[start:end], scores.data[start:end]
        order = np.lexsort((cols, -vals))
        picked = [int(c) for c in cols[order] if int(c) not in exclude[u]][:n]
        out.append(picked)
    return out


def source_ranks(histories: Sequence[Sequence[int]], profiles: np.ndarray,
                 item_lists: Sequence[Sequence[int]], item_vectors: np.ndarray,
                 state: BehaviourState, covis_scores: sp.csr_matrix | None = None) -> Candidates:
    """Candidates given from outside (a logged impression list), with the rank each source
    would have given them over the whole catalogue, so features mean what they mean in training."""
    n_items = item_vectors.shape[0]
    pop_rank_of = np.empty(n_items, dtype=np.float32)
    pop_rank_of[state.popular_rows_] = np.arange(n_items, dtype=np.float32)
    covis = state.covisitation.score(histories) if covis_scores is None else covis_scores
    requests, items, sem_rank, covis_rank, pop_rank = [], [], [], [], []
    for u, given in enumerate(item_lists):
        given = np.asarray(list(dict.fromkeys(int(i) for i in given)), dtype=np.int64)
        if given.size == 0:
            continue
        history = set(int(i) for i in histories[u])
        if len(history):
            sims = item_vectors @ profiles[u]
            sims[list(history)] = -np.inf  # the semantic source never returns history items
            sem = np.array([(sims > sims[i]).sum() for i in given], dtype=np.float32)
            sem = np.where(np.isfinite(sims[given]), sem, MISSING_RANK)
            row = np.asarray(covis[u].todense()).ravel()
            row[list(history)] = 0.0
            cov = np.array([(row > row[i]).sum() if row[i] > 0 else MISSING_RANK for i in given],
                           dtype=np.float32)
        else:
            sem = np.full(given.size, MISSING_RANK, dtype=np.float32)
            cov = sem.copy()
        requests.append(np.full(given.size, u, dtype=np.int64))
        items.append(given)
        sem_rank.append(np.minimum(sem, MISSING_RANK))
        covis_rank.append(np.minimum(cov, MISSING_RANK))
        pop_rank.append(np.minimum(pop_rank_of[given], MISSING_RANK))
    cat = (lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts
           else np.zeros(0, dtype=dtype))
    return Candidates(request=cat(requests, np.int64), item=cat(items, np.int64),
                      sem_rank=cat(sem_rank, np.float32), covis_rank=cat(covis_rank, np.float32),
                      pop_rank=cat(pop_rank, np.float32))
