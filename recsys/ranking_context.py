"""The shared ranking context: retrieval plus feature rows, for any behavioural state.

Serving, batch scoring, evaluation and ranker training all build their (request, candidate)
rows here, so the rows a model learns from are made exactly as the rows it later scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from features.build import Candidates, Requests, feature_frame, feature_matrix
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
