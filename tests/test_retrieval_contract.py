"""The contract every candidate source keeps (recsys/retrieval/source.py), as one set of checks
run against every registered source and every item index kind, the fresh-items index included.

In the style of implicit's `RecommenderBaseTestMixin`: `CandidateSourceContract` holds the
checks; a test class per source says how to build it (`make_source`). A new source gets the
same checks by subclassing it (tests/test_retrieval_plugin.py does, for a source defined there).
"""

from __future__ import annotations

import functools

import numpy as np
import polars as pl
import pytest

from features.build import MISSING_RANK
from features.state import BehaviourState
from recsys.index import ItemIndex
from recsys.retrieval import (
    SOURCES,
    FreshItemsIndex,
    RetrievalBatch,
    RetrievalConfig,
    SourceInputs,
    build_sources,
    retrieve_from,
    user_profiles,
)
from recsys.retrieval.covisitation import CovisitationSource
from recsys.retrieval.history import HistorySource
from recsys.retrieval.item_item import ItemItemSource
from recsys.retrieval.popularity import PopularitySource
from recsys.retrieval.semantic import SemanticSource

N_ITEMS = 90
N_FRESH = 12       # of them, the last ones: the fresh-items index's own rows
N = 15             # what a source is asked for
INDEX_KINDS = ("flat", "hnsw", "ivf", "fresh")


class World:
    """A small catalogue with clicks, and its item indexes of every kind."""

    def __init__(self, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        vectors = rng.standard_normal((N_ITEMS, 16)).astype(np.float32)
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        n_pairs = 3000
        clicks = pl.DataFrame({
            "user_id": [f"u{u}" for u in rng.integers(0, 80, n_pairs)],
            "item": rng.zipf(1.3, n_pairs).clip(1, N_ITEMS).astype(np.int64) - 1,
            "timestamp": pl.Series(np.sort(rng.integers(0, 10**6, n_pairs)) * 1_000_000,
                                   dtype=pl.Datetime("us", "UTC")),
            "type": ["click"] * n_pairs,
        })
        self.state = BehaviourState(n_items=N_ITEMS, real_time=True, covis_top=20).fit(clicks)
        self.histories = [[], [1, 2, 3], [0], [5, 5, 7, 40, 2], [], [11, 80, 81],
                          list(range(20, 45)), [3, 1]]
        self.profiles = user_profiles(self.histories, self.vectors)
        self.exclude = [set(rng.integers(0, N_ITEMS, int(rng.integers(0, 12))).tolist())
                        for _ in self.histories]
        self.allowed = rng.random(N_ITEMS) < 0.8
        self._indexes: dict[str, object] = {}

    def index(self, kind: str):
        if kind not in self._indexes:
            if kind == "fresh":
                base = ItemIndex("flat").fit(self.vectors[:N_ITEMS - N_FRESH])
                self._indexes[kind] = FreshItemsIndex(base, self.vectors[N_ITEMS - N_FRESH:])
            else:
                self._indexes[kind] = ItemIndex(kind, ivf_lists=4).fit(self.vectors)
        return self._indexes[kind]

    def batch(self, order=None, *, filtered: bool = True) -> RetrievalBatch:
        order = np.arange(len(self.histories)) if order is None else np.asarray(order)
        return RetrievalBatch([self.histories[u] for u in order], self.profiles[order],
                              [self.exclude[u] for u in order] if filtered else None,
                              self.allowed if filtered else None)


@functools.cache
def shared_world() -> World:
    return World()


class CandidateSourceContract:
    """The checks; subclasses define `make_source(world, n)`, a source asked for `n` items
    per request (`takes_n = False`: a source with no such quota)."""

    takes_n = True

    def make_source(self, world: World, n: int):
        raise NotImplementedError

    @pytest.fixture
    def world(self) -> World:
        return shared_world()

    def test_hits_have_the_contract_shapes_and_dtypes(self, world):
        batch = world.batch()
        hits = self.make_source(world, N).candidates(batch)
        assert hits.offsets.dtype == np.int64 and hits.offsets.shape == (len(batch) + 1,)
        assert hits.offsets[0] == 0 and np.all(np.diff(hits.offsets) >= 0)
        assert hits.offsets[-1] == hits.items.size
        assert hits.items.dtype == np.int64 and hits.ranks.dtype == np.float32
        assert hits.scores.dtype == np.float32
        assert hits.items.shape == hits.ranks.shape == hits.scores.shape
        assert np.all((hits.items >= 0) & (hits.items < N_ITEMS))
        if self.takes_n:
            assert np.all(np.diff(hits.offsets) <= N)

    def test_no_excluded_or_disallowed_item_and_none_twice(self, world):
        batch = world.batch()
        hits = self.make_source(world, N).candidates(batch)
        for u in range(len(batch)):
            items = hits.of(u)[0].tolist()
            assert not set(items) & world.exclude[u]
            assert world.allowed[items].all()
            assert len(items) == len(set(items))

    def test_ranks_ascend_within_a_request(self, world):
        hits = self.make_source(world, N).candidates(world.batch())
        for u in range(len(world.histories)):
            ranks = hits.of(u)[1]
            assert np.all(np.diff(ranks) > 0) and np.all(ranks >= 0)
            assert np.all(ranks < MISSING_RANK)

    def test_an_empty_history_is_answered(self, world):
        batch = RetrievalBatch([[]], np.zeros((1, world.vectors.shape[1]), np.float32))
        hits = self.make_source(world, N).candidates(batch)
        assert hits.offsets.tolist() == [0, hits.items.size]
        assert len(set(hits.items.tolist())) == hits.items.size

    def test_asking_for_more_than_the_catalogue_returns_each_item_at_most_once(self, world):
        batch = world.batch(filtered=False)
        hits = self.make_source(world, 10 * N_ITEMS).candidates(batch)
        for u in range(len(batch)):
            items = hits.of(u)[0].tolist()
            assert len(items) == len(set(items)) <= N_ITEMS

    def test_answers_do_not_depend_on_the_rest_of_the_batch(self, world):
        source = self.make_source(world, N)
        whole = source.candidates(world.batch())
        order = np.random.default_rng(0).permutation(len(world.histories))
        shuffled = source.candidates(world.batch(order))
        alone = [source.candidates(world.batch([u])) for u in range(len(world.histories))]
        for j, u in enumerate(order):
            for part in range(2):  # items, ranks
                np.testing.assert_array_equal(shuffled.of(j)[part], whole.of(u)[part])
                np.testing.assert_array_equal(alone[u].of(0)[part], whole.of(u)[part])
            # scores: equal to float32 rounding (a matrix product's sums may group differently
            # for another number of queries)
            np.testing.assert_allclose(shuffled.of(j)[2], whole.of(u)[2], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(alone[u].of(0)[2], whole.of(u)[2], rtol=1e-6, atol=1e-7)

    def test_ranks_of_given_items_have_the_contract_shape(self, world):
        batch = world.batch(filtered=False)
        source = self.make_source(world, N)
        rng = np.random.default_rng(1)
        lists = [rng.choice(N_ITEMS, 6, replace=False) for _ in world.histories]
        offsets = np.arange(0, 6 * len(lists) + 1, 6, dtype=np.int64)
        ranks = source.ranks_of(batch, np.concatenate(lists).astype(np.int64), offsets)
        assert ranks.dtype == np.float32 and ranks.shape == (offsets[-1],)
        assert np.all((ranks >= 0) & (ranks <= MISSING_RANK))
        # an item's rank depends neither on its place in the list nor on the other requests
        alone = world.batch([1], filtered=False)
        reversed_ = source.ranks_of(alone, lists[1][::-1].astype(np.int64), np.array([0, 6]))
        np.testing.assert_array_equal(reversed_[::-1], ranks[6:12])


class TestSemanticSource(CandidateSourceContract):
    @pytest.fixture(params=INDEX_KINDS, autouse=True)
    def kind(self, request):
        self.index_kind = request.param

    def make_source(self, world, n):
        return SemanticSource(world.index(self.index_kind), n, world.vectors)

    def test_only_requests_with_a_history_get_neighbours(self, world):
        hits = self.make_source(world, N).candidates(world.batch())
        for u, history in enumerate(world.histories):
            assert (hits.of(u)[0].size > 0) == bool(history)
            assert not set(hits.of(u)[0].tolist()) & set(history)


class TestCovisitationSource(CandidateSourceContract):
    def make_source(self, world, n):
        return CovisitationSource(world.state, n)


class TestItemItemSource(CandidateSourceContract):
    def make_source(self, world, n):
        return ItemItemSource(world.state, n)

    def test_it_offers_the_best_ease_scores_of_the_history(self, world):
        """The rows are the highest positive sums of the history items' EASE weight rows."""
        weights = world.state.item_item_.matrix_.toarray()
        hits = self.make_source(world, N).candidates(world.batch(filtered=False))
        for u, history in enumerate(world.histories):
            score = weights[sorted(set(history))].sum(axis=0) if history else np.zeros(N_ITEMS)
            score[history] = 0
            eligible = np.flatnonzero(score > 0)
            want = eligible[np.lexsort((eligible, -score[eligible]))][:N]
            assert hits.of(u)[0].tolist() == want.tolist()

    def test_a_state_without_weights_offers_nothing(self, world):
        import copy
        state = copy.copy(world.state)
        state.item_item_ = None
        source = ItemItemSource(state, N)
        assert source.candidates(world.batch()).items.size == 0
        ranks = source.ranks_of(world.batch(), np.array([1, 2]), np.array([0, 2] + [2] * 7))
        assert (ranks == MISSING_RANK).all()


class TestPopularitySource(CandidateSourceContract):
    def make_source(self, world, n):
        return PopularitySource(world.state, n)

    def test_its_rank_is_the_position_in_the_popularity_order(self, world):
        source = self.make_source(world, N)
        hits = source.candidates(world.batch())
        given = source.ranks_of(world.batch(), hits.items, hits.offsets)
        np.testing.assert_array_equal(given, hits.ranks)


class TestHistorySource(CandidateSourceContract):
    takes_n = False

    def make_source(self, world, n):
        return HistorySource()

    def test_it_offers_the_history_less_exclusions(self, world):
        hits = self.make_source(world, N).candidates(world.batch())
        for u, history in enumerate(world.histories):
            want = {i for i in history if i not in world.exclude[u] and world.allowed[i]}
            assert set(hits.of(u)[0].tolist()) == want


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_every_registered_source_passes_through_the_merge(kind):
    """The registry's sources merged: every row once per request, no exclusion, each source's
    rank column present, and a source's ranks there are the ones it returned."""
    world = shared_world()
    sources = build_sources(RetrievalConfig(n_semantic=N, n_covisitation=N, n_popular=5),
                            SourceInputs(world.index(kind), world.state, world.vectors))
    assert len(sources) == len(SOURCES)
    batch = world.batch()
    merged = retrieve_from(batch, sources)
    assert set(merged.ranks) == {s.rank_name for s in sources}
    for u in range(len(batch)):
        rows = merged.request == u
        items = merged.item[rows].tolist()
        assert len(items) == len(set(items)) and not set(items) & world.exclude[u]
        for source in sources:
            own_items, own_ranks, _ = source.candidates(world.batch([u])).of(0)
            got = dict(zip(items, merged.ranks[source.rank_name][rows].tolist(), strict=True))
            assert [got[i] for i in own_items.tolist()] == own_ranks.tolist()
