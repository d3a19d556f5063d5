"""The vectorised candidate and feature paths against the straightforward per-request loops they
replaced (kept below as the reference), on randomised inputs: every candidate row, its order,
every source rank and every feature value must be bit-identical (the three similarity features:
equal to float32 rounding, as they come from one matrix product per request).

The references are the code as it was before vectorisation: a Python dict merge of the sources,
scipy's sparse product for co-visitation, per-request dicts for history and category counts.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from features.build import (
    FEATURES,
    MISSING_RANK,
    RECENT_FOR_SIMILARITY,
    Candidates,
    Requests,
    candidate_features,
)
from features.covisitation import RECENCY_DECAY, RECENT_ITEMS, Covisitation, pair_scores
from features.state import BehaviourState
from recsys.index import ItemIndex
from recsys.retrieval import RetrievalConfig, retrieve, source_ranks, user_profiles

N_ITEMS = 400
SIMILARITIES = ("sem_score", "sim_last", "sim_max_recent")
N_CATEGORIES = 7


# -- references: the per-request loops --------------------------------------------------------
def reference_covisitation(covis: Covisitation, histories, recent=RECENT_ITEMS) -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    for u, history in enumerate(histories):
        for k, item in enumerate(list(history)[-recent:][::-1]):
            rows.append(u)
            cols.append(int(item))
            vals.append(RECENCY_DECAY ** k)
    weights = sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)),
                            shape=(len(histories), covis.n_items), dtype=np.float32)
    return (weights @ covis.matrix_).tocsr()


def reference_retrieve(histories, profiles, index, state, config, exclude=None, allowed=None):
    n = len(histories)
    exclude = [set() for _ in range(n)] if exclude is None else [set(e) for e in exclude]
    if allowed is not None:
        banned = set(np.flatnonzero(~allowed).tolist())
        exclude = [e | banned for e in exclude]
    history_sets = [set(int(i) for i in h) for h in histories]
    source_exclude = [e | h for e, h in zip(exclude, history_sets, strict=True)]
    has_history = np.array([len(h) > 0 for h in histories])
    sem_rows = np.full((n, 0), -1, dtype=np.int64)
    if config.n_semantic > 0 and has_history.any():
        sem_rows = np.full((n, config.n_semantic), -1, dtype=np.int64)
        users = np.flatnonzero(has_history)
        rows, _ = index.search(profiles[users], config.n_semantic,
                               exclude=[source_exclude[u] for u in users])
        sem_rows[users] = rows
    scores = reference_covisitation(state.covisitation, histories)
    covis_lists = []
    for u in range(n):
        if config.n_covisitation <= 0:
            covis_lists.append([])
            continue
        start, end = scores.indptr[u], scores.indptr[u + 1]
        cols, vals = scores.indices[start:end], scores.data[start:end]
        order = np.lexsort((cols, -vals))
        covis_lists.append([int(c) for c in cols[order]
                            if int(c) not in source_exclude[u]][:config.n_covisitation])
    ease = reference_item_item(state, histories)
    ease_lists = []
    for u in range(n):
        eligible = [i for i in np.flatnonzero(ease[u] > 0).tolist() if i not in source_exclude[u]]
        eligible.sort(key=lambda i: (-ease[u, i], i))
        ease_lists.append(eligible[:config.n_item_item])
    requests, items, sem_rank, covis_rank, pop_rank, ease_rank = [], [], [], [], [], []
    for u in range(n):
        ranks: dict[int, list[float]] = {}
        for r, item in enumerate(sem_rows[u]):
            if item >= 0:
                ranks.setdefault(int(item), [MISSING_RANK] * 4)[0] = r
        for r, item in enumerate(covis_lists[u]):
            ranks.setdefault(int(item), [MISSING_RANK] * 4)[1] = r
        for r, item in enumerate(ease_lists[u]):
            ranks.setdefault(int(item), [MISSING_RANK] * 4)[3] = r
        taken = 0
        for r, item in enumerate(state.popular_rows_):
            if taken >= config.n_popular:
                break
            item = int(item)
            if item in exclude[u] or item in history_sets[u]:
                continue
            ranks.setdefault(item, [MISSING_RANK] * 4)[2] = r
            taken += 1
        if config.include_history:
            for item in history_sets[u] - exclude[u]:
                ranks.setdefault(item, [MISSING_RANK] * 4)
        for item, (s, c, p, e) in ranks.items():
            requests.append(u)
            items.append(item)
            sem_rank.append(s)
            covis_rank.append(c)
            pop_rank.append(p)
            ease_rank.append(e)
    return Candidates(
        request=np.asarray(requests, dtype=np.int64), item=np.asarray(items, dtype=np.int64),
        sem_rank=np.asarray(sem_rank, dtype=np.float32),
        covis_rank=np.asarray(covis_rank, dtype=np.float32),
        pop_rank=np.asarray(pop_rank, dtype=np.float32),
        item_item_rank=np.asarray(ease_rank, dtype=np.float32))


def reference_item_item(state, histories) -> np.ndarray:
    """Dense EASE scores [requests, items]: the distinct history items' weight rows summed."""
    weights = state.item_item_.matrix_.toarray().astype(np.float64)
    return np.stack([weights[sorted(set(h))].sum(axis=0) if h else np.zeros(weights.shape[1])
                     for h in histories])


def reference_source_ranks(histories, profiles, item_lists, item_vectors, state) -> Candidates:
    n_items = item_vectors.shape[0]
    pop_rank_of = np.empty(n_items, dtype=np.float32)
    pop_rank_of[state.popular_rows_] = np.arange(n_items, dtype=np.float32)
    covis = reference_covisitation(state.covisitation, histories)
    ease = reference_item_item(state, histories)
    requests, items, sem_rank, covis_rank, pop_rank, ease_rank = [], [], [], [], [], []
    for u, given in enumerate(item_lists):
        given = np.asarray(list(dict.fromkeys(int(i) for i in given)), dtype=np.int64)
        if given.size == 0:
            continue
        history = set(int(i) for i in histories[u])
        if len(history):
            sims = item_vectors @ profiles[u]
            sims[list(history)] = -np.inf
            sem = np.array([(sims > sims[i]).sum() for i in given], dtype=np.float32)
            sem = np.where(np.isfinite(sims[given]), sem, MISSING_RANK)
            row = np.asarray(covis[u].todense()).ravel()
            row[list(history)] = 0.0
            cov = np.array([(row > row[i]).sum() if row[i] > 0 else MISSING_RANK for i in given],
                           dtype=np.float32)
            row = ease[u].copy()
            row[list(history)] = 0.0
            eas = np.array([(row > row[i]).sum() if row[i] > 0 else MISSING_RANK for i in given],
                           dtype=np.float32)
        else:
            sem = np.full(given.size, MISSING_RANK, dtype=np.float32)
            cov = sem.copy()
            eas = sem.copy()
        requests.append(np.full(given.size, u, dtype=np.int64))
        items.append(given)
        sem_rank.append(np.minimum(sem, MISSING_RANK))
        covis_rank.append(np.minimum(cov, MISSING_RANK))
        pop_rank.append(np.minimum(pop_rank_of[given], MISSING_RANK))
        ease_rank.append(np.minimum(eas, MISSING_RANK))

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return Candidates(request=cat(requests, np.int64), item=cat(items, np.int64),
                      sem_rank=cat(sem_rank, np.float32), covis_rank=cat(covis_rank, np.float32),
                      pop_rank=cat(pop_rank, np.float32),
                      item_item_rank=cat(ease_rank, np.float32))


def reference_per_request_features(histories, profiles, req, item, item_vectors,
                                   item_categories):
    """The similarities, in_history, cat_share and cat_last with a loop and dicts per request."""
    vectors = item_vectors[item]
    sem = np.einsum("ij,ij->i", profiles[req], vectors)
    last_items = np.array([h[-1] if len(h) else -1 for h in histories], dtype=np.int64)[req]
    sim_last = np.where(last_items >= 0, np.einsum(
        "ij,ij->i", item_vectors[np.maximum(last_items, 0)], vectors), 0.0).astype(np.float32)
    best = np.zeros(len(req), dtype=np.float32)
    counts: dict[tuple[int, int], int] = {}
    shares: list[dict[int, float]] = []
    last_category = np.full(len(histories), -2, dtype=np.int64)
    for u, history in enumerate(histories):
        rows = np.flatnonzero(req == u)
        tail = np.asarray(list(history)[-RECENT_FOR_SIMILARITY:], dtype=np.int64)
        if tail.size and rows.size:
            best[rows] = (vectors[rows] @ item_vectors[tail].T).max(axis=1)
        for h in history:
            counts[(u, int(h))] = counts.get((u, int(h)), 0) + 1
        cats = item_categories[np.asarray(history, dtype=np.int64)] if len(history) \
            else np.zeros(0, np.int64)
        values, n = np.unique(cats[cats >= 0], return_counts=True)
        shares.append(dict(zip(values.tolist(), (n / max(len(history), 1)).tolist(), strict=True)))
        if len(history) and cats[-1] >= 0:
            last_category[u] = cats[-1]
    cand_cats = item_categories[item]
    return {
        "sem_score": sem,
        "sim_last": sim_last,
        "sim_max_recent": best,
        "in_history": np.array([counts.get((int(r), int(i)), 0)
                                for r, i in zip(req, item, strict=True)], dtype=np.float32),
        "cat_share": np.array([shares[r].get(int(c), 0.0)
                               for r, c in zip(req, cand_cats, strict=True)], dtype=np.float32),
        "cat_last": ((cand_cats >= 0) & (cand_cats == last_category[req])).astype(np.float32),
    }


def reference_search(index: ItemIndex, queries, k, exclude):
    """ItemIndex.search as a loop over every hit with a set per query."""
    faiss_index = index.index_
    m, k = queries.shape[0], int(min(k, faiss_index.ntotal))
    rows_out = np.full((m, k), -1, dtype=np.int64)
    scores_out = np.full((m, k), -np.inf, dtype=np.float32)
    excluded = [set(int(r) for r in e) for e in exclude]
    pending, fetch = np.arange(m), k + max((len(e) for e in excluded), default=0)
    while pending.size:
        fetch = int(min(fetch, faiss_index.ntotal))
        scores, rows = faiss_index.search(queries[pending], fetch)
        still = []
        for q, query_scores, query_rows in zip(pending, scores, rows, strict=True):
            keep = [(r, s) for r, s in zip(query_rows, query_scores, strict=True)
                    if r >= 0 and r not in excluded[q]]
            if len(keep) < k and fetch >= faiss_index.ntotal:
                keep = index._exact(queries[q], excluded[q], k)
            if len(keep) >= k or fetch >= faiss_index.ntotal:
                rows_out[q, :len(keep[:k])] = [r for r, _ in keep[:k]]
                scores_out[q, :len(keep[:k])] = [s for _, s in keep[:k]]
            else:
                still.append(q)
        pending, fetch = np.asarray(still, dtype=np.int64), fetch * 2
    return rows_out, scores_out


# -- randomised world -------------------------------------------------------------------------
def _world(seed: int):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((N_ITEMS, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # few distinct co-visitation weights, so equal scores (ties) really occur
    n_pairs = 6000
    clicks = pl.DataFrame({
        "user_id": [f"u{u}" for u in rng.integers(0, 300, n_pairs)],
        "item": rng.zipf(1.3, n_pairs).clip(1, N_ITEMS).astype(np.int64) - 1,
        "timestamp": pl.Series(np.sort(rng.integers(0, 10**6, n_pairs)) * 1_000_000,
                               dtype=pl.Datetime("us", "UTC")),
        "type": rng.choice(["click", "click", "impression"], n_pairs).tolist(),
    })
    state = BehaviourState(n_items=N_ITEMS, real_time=True, covis_top=30).fit(clicks)
    categories = rng.integers(-1, N_CATEGORIES, N_ITEMS)  # -1: an item without a category
    index = ItemIndex("flat").fit(vectors)
    return rng, vectors, state, categories, index


def _histories(rng, n: int) -> list[list[int]]:
    out = []
    for _ in range(n):
        length = int(rng.choice([0, 1, 2, 3, 5, 8, 30]))
        # popular items repeat, so repeated history items (merged co-visitation weights) occur;
        # the uniform ones make a Python set's order differ from sorted order
        popular = rng.zipf(1.5, length).clip(1, N_ITEMS) - 1
        uniform = rng.integers(0, N_ITEMS, length)
        out.append(np.where(rng.random(length) < 0.5, popular, uniform).astype(int).tolist())
    return out


def _assert_candidates_equal(got: Candidates, want: Candidates) -> None:
    for name in ("request", "item", "sem_rank", "covis_rank", "pop_rank", "item_item_rank"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("seed", range(6))
def test_covisitation_scores_are_bit_identical_to_the_sparse_product(seed):
    rng, _, state, _, _ = _world(seed)
    histories = _histories(rng, 40)
    for recent in (1, 2, RECENT_ITEMS, 5):
        got = state.covisitation.score(histories, recent)
        want = reference_covisitation(state.covisitation, histories, recent)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.toarray().view(np.int32), want.toarray().view(np.int32))
        users = rng.integers(0, len(histories), 500)
        items = rng.integers(0, N_ITEMS, 500)
        np.testing.assert_array_equal(pair_scores(got, users, items),
                                      np.asarray(want[users, items], np.float32).ravel())
    # direct lookups of the matrix (rows -1: no last item), also on a non-canonical copy
    rows = rng.integers(-1, N_ITEMS, 500)
    cols = rng.integers(0, N_ITEMS, 500)
    matrix = state.covisitation.matrix_
    expected = np.where(rows >= 0, np.asarray(matrix[np.maximum(rows, 0), cols]).ravel(), 0)
    np.testing.assert_array_equal(state.covisitation.pair_values(rows, cols),
                                  expected.astype(np.float32))
    shuffled = Covisitation(N_ITEMS)
    coo = matrix.tocoo()
    order = rng.permutation(coo.nnz)
    shuffled.matrix_ = sp.csr_matrix((coo.data[order], (coo.row[order], coo.col[order])),
                                     shape=matrix.shape)
    shuffled.matrix_.has_canonical_format = False
    np.testing.assert_array_equal(shuffled.pair_values(rows, cols), expected.astype(np.float32))


@pytest.mark.parametrize("seed", range(6))
def test_retrieve_gives_the_same_rows_in_the_same_order(seed):
    rng, vectors, state, _, index = _world(seed)
    histories = _histories(rng, 30)
    profiles = user_profiles(histories, vectors)
    exclude = [set(rng.integers(0, N_ITEMS, int(rng.integers(0, 40))).tolist()) | set(h[:2])
               for h in histories]
    allowed = rng.random(N_ITEMS) > 0.3
    for config, ex, al in [
        (RetrievalConfig(n_semantic=25, n_covisitation=25, n_popular=10), None, None),
        (RetrievalConfig(n_semantic=25, n_covisitation=10, n_popular=15), exclude, None),
        (RetrievalConfig(n_semantic=10, n_covisitation=25, n_popular=20), exclude, allowed),
        (RetrievalConfig(n_semantic=0, n_covisitation=0, n_popular=5), None, allowed),
        (RetrievalConfig(n_semantic=25, include_history=False), exclude, allowed),
    ]:
        got = retrieve(histories, profiles, index, state, config, exclude=ex, allowed=al)
        want = reference_retrieve(histories, profiles, index, state, config, exclude=ex,
                                  allowed=al)
        _assert_candidates_equal(got, want)


@pytest.mark.parametrize("seed", range(4))
def test_source_ranks_match_the_per_item_counts(seed):
    rng, vectors, state, _, _ = _world(seed)
    histories = _histories(rng, 20)
    profiles = user_profiles(histories, vectors)
    shown = [rng.integers(0, N_ITEMS, int(rng.integers(0, 15))).tolist() + h[-1:]
             for h in histories]
    got = source_ranks(histories, profiles, shown, vectors, state)
    _assert_candidates_equal(got, reference_source_ranks(histories, profiles, shown, vectors,
                                                         state))


@pytest.mark.parametrize("seed", range(6))
def test_feature_values_match_the_per_request_loops(seed):
    rng, vectors, state, categories, index = _world(seed)
    histories = _histories(rng, 30)
    requests = Requests(histories=histories, profiles=user_profiles(histories, vectors),
                        times=np.full(len(histories), 2.0e6), last_event_times=np.full(
                            len(histories), 1.5e6))
    candidates = retrieve(histories, requests.profiles, index, state,
                          RetrievalConfig(n_semantic=30, n_covisitation=20, n_popular=10))
    frame = candidate_features(requests, candidates, state, vectors, categories)
    assert frame.columns == list(FEATURES)
    want = reference_per_request_features(histories, requests.profiles, candidates.request,
                                          candidates.item, vectors, categories)
    reference = reference_covisitation(state.covisitation, histories)
    want["covis_score"] = np.asarray(reference[candidates.request, candidates.item],
                                     np.float32).ravel()
    last = reference_covisitation(state.covisitation, histories, recent=1)
    want["covis_last"] = np.asarray(last[candidates.request, candidates.item],
                                    np.float32).ravel()
    for name, values in want.items():
        if name in SIMILARITIES:
            # one product per request against [profile, recent items] sums in BLAS's order,
            # not einsum's: equal to float32 rounding, not bit for bit (offline and online
            # share this one path, and tests/test_features_equality.py holds them bit-equal)
            np.testing.assert_allclose(frame[name].to_numpy(), values, rtol=1e-5, atol=1e-6,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(frame[name].to_numpy(), values, err_msg=name)
    # the same rows scored for a shuffled batch order carry the same values
    flipped = Requests(histories=histories[::-1], profiles=requests.profiles[::-1].copy(),
                       times=requests.times, last_event_times=requests.last_event_times)
    back = replace(candidates, request=len(histories) - 1 - candidates.request)
    np.testing.assert_array_equal(
        candidate_features(flipped, back, state, vectors, categories).to_numpy(),
        frame.to_numpy())


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_index_search_filters_exclusions_as_the_per_hit_loop(kind):
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((N_ITEMS, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ItemIndex(kind, hnsw_m=8, ef_construction=20, ef_search=16).fit(vectors)
    for trial in range(30):
        m = int(rng.integers(1, 25))
        queries = rng.standard_normal((m, 16)).astype(np.float32)
        # every fifth trial excludes most of the catalogue: the widening and the exact finish
        most = trial % 5 == 0
        exclude = [set(rng.integers(0, N_ITEMS, int(rng.integers(0, N_ITEMS if most else 30)))
                       .tolist()) for _ in range(m)]
        for k in (1, 10, 60, N_ITEMS):
            rows, scores = index.search(queries, k, exclude)
            want_rows, want_scores = reference_search(index, queries, k, exclude)
            np.testing.assert_array_equal(rows, want_rows)
            np.testing.assert_array_equal(scores, want_scores)
