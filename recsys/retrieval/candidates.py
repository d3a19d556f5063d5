"""Candidates for a batch of requests: retrieved from the sources, or given from outside (a
logged impression list) with the rank each source would have given them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from features.build import Candidates
from features.ragged import flatten
from features.state import BehaviourState
from recsys.retrieval.config import RetrievalConfig
from recsys.retrieval.merge import MergedCandidates, retrieve_from
from recsys.retrieval.registry import SourceInputs, build_sources
from recsys.retrieval.source import CandidateSource, RetrievalBatch


def retrieve(histories: Sequence[Sequence[int]], profiles: np.ndarray, index,
             state: BehaviourState, config: RetrievalConfig,
             exclude: Sequence[set[int]] | None = None,
             allowed: np.ndarray | None = None,
             covis_scores: sp.csr_matrix | None = None,
             sources: Sequence[CandidateSource] | None = None) -> Candidates:
    """Merge the sources (by default the registry's, set up by `config`) into one candidate
    list per request, each item once per request.

    `exclude[u]`: item rows never to return for request u (seen items, business rules).
    `allowed`: optional boolean mask over item rows (category filters, deleted items).

    A request's rows come in this order: its semantic hits by rank, then co-visitation items
    not yet listed, then popular ones, then (with `include_history`) its history items. Each
    row carries the rank every source gave it (MISSING_RANK where a source did not return it).
    """
    if sources is None:
        sources = build_sources(config, SourceInputs(index, state))
    batch = RetrievalBatch(histories, profiles, exclude, allowed, covis_scores)
    return retrieve_from(batch, sources).candidates()


def ranks_for(batch: RetrievalBatch, item_lists: Sequence[Sequence[int]],
              sources: Sequence[CandidateSource]) -> MergedCandidates:
    """The given items of each request (duplicates dropped, order kept) with every source's
    rank of them over the whole catalogue."""
    given = [list(dict.fromkeys(int(i) for i in items)) for items in item_lists]
    items, offsets = flatten(given)
    request = np.repeat(np.arange(len(given), dtype=np.int64), offsets[1:] - offsets[:-1])
    return MergedCandidates(request, items, {
        source.rank_name: np.asarray(source.ranks_of(batch, items, offsets), dtype=np.float32)
        for source in sources})


def source_ranks(histories: Sequence[Sequence[int]], profiles: np.ndarray,
                 item_lists: Sequence[Sequence[int]], item_vectors: np.ndarray,
                 state: BehaviourState, covis_scores: sp.csr_matrix | None = None,
                 sources: Sequence[CandidateSource] | None = None) -> Candidates:
    """Candidates given from outside (a logged impression list), with the rank each source
    would have given them over the whole catalogue, so features mean what they mean in training.

    A source's rank of an item is the number of items it scores strictly higher (history items
    are never returned by a source, so they neither rank nor count)."""
    if sources is None:
        sources = build_sources(RetrievalConfig(), SourceInputs(None, state, item_vectors))
    batch = RetrievalBatch(histories, profiles, covis_scores=covis_scores)
    return ranks_for(batch, item_lists, sources).candidates()
