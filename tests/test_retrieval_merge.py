"""The generic merge of candidate sources (recsys/retrieval/merge.py) against a plain-Python
reference, and the built-in sources' order and ranks on small hand-made cases.

tests/test_vectorized_equality.py checks the whole retrieval against the per-request code it
replaced; this file checks the merge on its own, for any number of sources."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from features.build import MISSING_RANK
from recsys.retrieval import RetrievalBatch, SourceHits, merge_sources, retrieve_from
from recsys.retrieval.covisitation import CovisitationSource
from recsys.retrieval.history import HistorySource
from recsys.retrieval.popularity import PopularitySource
from recsys.retrieval.semantic import SemanticSource


def reference_merge(n_requests, hits, names):
    """A dict per request: items in order of first appearance over the sources in order, each
    source's rank (its last, if it repeats an item)."""
    request, item, ranks = [], [], {name: [] for name in names}
    for u in range(n_requests):
        rows: dict[int, dict[str, float]] = {}
        for name, h in zip(names, hits, strict=True):
            items, source_ranks, _ = h.of(u)
            for it, rank in zip(items.tolist(), source_ranks.tolist(), strict=True):
                rows.setdefault(it, {})[name] = rank
        for it, got in rows.items():
            request.append(u)
            item.append(it)
            for name in names:
                ranks[name].append(got.get(name, MISSING_RANK))
    return request, item, ranks


def random_hits(rng, n_requests, n_items):
    lists = [rng.integers(0, n_items, rng.integers(0, 12)) for _ in range(n_requests)]
    items = np.concatenate(lists).astype(np.int64)
    offsets = np.zeros(n_requests + 1, np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    ranks = rng.integers(0, 500, items.size).astype(np.float32)
    return SourceHits(items, ranks, rng.random(items.size).astype(np.float32), offsets)


@pytest.mark.parametrize("seed", range(6))
def test_merge_matches_the_reference_for_any_number_of_sources(seed):
    rng = np.random.default_rng(seed)
    n_requests, n_sources = int(rng.integers(0, 9)), int(rng.integers(1, 6))
    hits = [random_hits(rng, n_requests, 30) for _ in range(n_sources)]
    names = [f"source{s}_rank" for s in range(n_sources)]
    merged = merge_sources(n_requests, hits, names)
    request, item, ranks = reference_merge(n_requests, hits, names)
    assert merged.request.tolist() == request
    assert merged.item.tolist() == item
    assert merged.item.dtype == np.int64 and merged.request.dtype == np.int64
    for name in names:
        assert merged.ranks[name].dtype == np.float32
        np.testing.assert_array_equal(merged.ranks[name], np.asarray(ranks[name], np.float32))


class _FixedIndex:
    """An item index that answers every search with the same rows."""

    size = 6

    def __init__(self, rows):
        self.rows = np.asarray(rows, np.int64)

    def search(self, queries, k, exclude=None):
        rows = np.repeat(self.rows[None, :k], len(queries), axis=0)
        return rows, np.where(rows >= 0, 1.0, -np.inf).astype(np.float32)


def _state(popular):
    popular = np.asarray(popular, np.int64)
    return SimpleNamespace(popular_rows_=popular, clicks_=np.arange(popular.size, 0, -1.0))


def test_the_sources_keep_first_appearance_and_every_sources_rank():
    covis = sp.csr_matrix(np.array([[0, 0.5, 0.9, 0, 0.5, 0]], np.float32))
    batch = RetrievalBatch([[0]], np.zeros((1, 4), np.float32), covis_scores=covis)
    state = _state([4, 0, 1, 2, 5])
    sources = [SemanticSource(_FixedIndex([3, 2, -1]), 3), CovisitationSource(state, 2),
               PopularitySource(state, 2), HistorySource()]
    got = retrieve_from(batch, sources).candidates()
    # semantic 3, 2; co-visitation 2 (0.9), then 1 and 4 tie at 0.5: the lower row first;
    # popular: 4 at position 0, 0 is skipped (history), 1 at position 2; history 0 offered last
    assert got.item.tolist() == [3, 2, 1, 4, 0]
    assert got.request.tolist() == [0] * 5
    assert got.sem_rank.tolist() == [0, 1, 1000, 1000, 1000]
    assert got.covis_rank.tolist() == [1000, 0, 1, 1000, 1000]
    assert got.pop_rank.tolist() == [1000, 1000, 2, 0, 1000]


def test_the_sources_respect_the_allowed_mask_and_exclusions():
    allowed = np.array([True, False, True, False, True, True])
    batch = RetrievalBatch([[], []], np.zeros((2, 4), np.float32), exclude=[{0}, set()],
                           allowed=allowed, covis_scores=sp.csr_matrix((2, 6), dtype=np.float32))
    state = _state(np.arange(6))
    got = retrieve_from(batch, [CovisitationSource(state, 5), PopularitySource(state, 3),
                                HistorySource()]).candidates()
    assert got.item.tolist() == [2, 4, 5, 0, 2, 4]
    assert got.request.tolist() == [0, 0, 0, 1, 1, 1]
    assert got.pop_rank.tolist() == [2, 4, 5, 0, 2, 4]
    assert got.sem_rank.tolist() == [MISSING_RANK] * 6   # no semantic source: absent everywhere


def test_bad_hits_are_refused_with_an_exception():
    good = SourceHits(np.array([1]), np.array([0], np.float32), np.array([0], np.float32),
                      np.array([0, 1]))
    negative = SourceHits(np.array([-1]), np.array([0], np.float32), np.array([0], np.float32),
                          np.array([0, 1]))
    with pytest.raises(IndexError, match="negative item"):
        merge_sources(1, [good, negative], ["a", "b"])
    with pytest.raises(ValueError, match="requests"):
        merge_sources(2, [good], ["a"])
    batch = RetrievalBatch([[1]], np.zeros((1, 4), np.float32), allowed=np.ones(3, bool),
                           covis_scores=sp.csr_matrix(np.ones((1, 5), np.float32)))
    with pytest.raises(IndexError, match="co-visitation column"):
        CovisitationSource(_state([0]), 5).candidates(batch)
    with pytest.raises(ValueError, match="share a rank name"):
        retrieve_from(batch, [HistorySource(), HistorySource()])
