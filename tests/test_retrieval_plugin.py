"""A candidate source added without touching the package: a "newest items" source defined and
registered here only. Its rank column appears in the merged candidates, its items reach the
ranking context's rows, and the contract every source keeps runs on it."""

from __future__ import annotations

import numpy as np

from features.build import MISSING_RANK
from recsys.ranking_context import RankingContext
from recsys.retrieval import (
    SOURCES,
    RetrievalBatch,
    RetrievalConfig,
    SourceHits,
    SourceInputs,
    build_sources,
    retrieve_from,
)
from tests.test_retrieval_contract import CandidateSourceContract, N, shared_world


class NewestItemsSource:
    """The `n` items first seen most recently, less what the request skips; rank = position in
    that order over the whole catalogue."""

    name = "newest"
    rank_name = "newest_rank"

    def __init__(self, state, n: int) -> None:
        self.n = n
        first_seen = np.nan_to_num(np.asarray(state.first_seen_s_, np.float64), nan=-np.inf)
        self.order = np.argsort(-first_seen, kind="stable")

    def candidates(self, batch: RetrievalBatch) -> SourceHits:
        items, ranks = [], []
        offsets = np.zeros(len(batch) + 1, np.int64)
        for u in range(len(batch)):
            skipped = batch.exclude[u] | batch.history_sets[u]
            taken = [(int(i), p) for p, i in enumerate(self.order.tolist())
                     if i not in skipped and (batch.allowed is None or batch.allowed[i])][:self.n]
            items += [i for i, _ in taken]
            ranks += [p for _, p in taken]
            offsets[u + 1] = len(items)
        return SourceHits(np.asarray(items, np.int64), np.asarray(ranks, np.float32),
                          -np.asarray(ranks, np.float32), offsets)

    def ranks_of(self, batch, items, offsets):
        position = np.empty(self.order.size, np.float32)
        position[self.order] = np.arange(self.order.size)
        return np.minimum(position[items], np.float32(MISSING_RANK))


def newest(config: RetrievalConfig, inputs: SourceInputs) -> NewestItemsSource:
    return NewestItemsSource(inputs.state, 4)


REGISTRY = (*SOURCES, newest)


class TestNewestItemsSource(CandidateSourceContract):
    def make_source(self, world, n):
        return NewestItemsSource(world.state, n)


def _sources(world, registry):
    return build_sources(RetrievalConfig(n_semantic=N, n_covisitation=N, n_popular=3),
                         SourceInputs(world.index("flat"), world.state, world.vectors), registry)


def test_the_registered_sources_rank_is_a_column_of_the_merged_candidates():
    world = shared_world()
    batch = world.batch()
    merged = retrieve_from(batch, _sources(world, REGISTRY))
    before = retrieve_from(world.batch(), _sources(world, SOURCES))
    newest_rank = merged.ranks["newest_rank"]
    own = NewestItemsSource(world.state, 4).candidates(world.batch())
    for u in range(len(batch)):
        rows = merged.request == u
        got = dict(zip(merged.item[rows].tolist(), newest_rank[rows].tolist(), strict=True))
        items, ranks, _ = own.of(u)
        assert [got[i] for i in items.tolist()] == ranks.tolist()
        # the other sources' rows keep their order; the new source only adds rows after them
        old = before.item[before.request == u].tolist()
        assert merged.item[rows].tolist()[:len(old)] == old
    assert (newest_rank < MISSING_RANK).any() and (newest_rank == MISSING_RANK).any()


def test_the_registered_source_feeds_the_ranking_rows():
    world = shared_world()
    context = RankingContext(world.vectors, np.zeros(len(world.vectors), np.int64),
                             world.index("flat"), world.state, RetrievalConfig(),
                             sources=_sources(world, REGISTRY))
    plain = RankingContext(world.vectors, np.zeros(len(world.vectors), np.int64),
                           world.index("flat"), world.state, RetrievalConfig(),
                           sources=_sources(world, SOURCES))
    times = np.full(len(world.histories), np.nan)
    requests = context.requests(world.histories, times, times)
    candidates, rows = context.rows(requests)
    baseline, _ = plain.rows(plain.requests(world.histories, times, times))
    newest_items = NewestItemsSource(world.state, 4).candidates(world.batch(filtered=False))
    for u in range(len(world.histories)):
        mine = set(candidates.item[candidates.request == u].tolist())
        assert set(newest_items.of(u)[0].tolist()) <= mine
        assert set(baseline.item[baseline.request == u].tolist()) <= mine
    assert rows.height == len(candidates) > len(baseline)
