"""The registry of candidate sources: an ordered list of factories, one per source.

The order is the merge's priority order (a candidate's row sits where its first source put it).
Adding a source = one module with a class following `source.CandidateSource`, plus a factory
here (or in the caller's own registry tuple, passed to `build_sources`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from features.state import BehaviourState
from recsys.retrieval.config import RetrievalConfig
from recsys.retrieval.covisitation import CovisitationSource
from recsys.retrieval.history import HistorySource
from recsys.retrieval.item_item import ItemItemSource
from recsys.retrieval.popularity import PopularitySource
from recsys.retrieval.semantic import SemanticSource
from recsys.retrieval.source import CandidateSource


@dataclass(frozen=True)
class SourceInputs:
    """What a source may be built from: the item index (None where only `ranks_of` is asked),
    the behavioural state and the item vectors (row = item row)."""

    index: object
    state: BehaviourState
    item_vectors: np.ndarray | None = None


SourceFactory = Callable[[RetrievalConfig, SourceInputs], CandidateSource]


def semantic(config: RetrievalConfig, inputs: SourceInputs) -> CandidateSource:
    return SemanticSource(inputs.index, config.n_semantic, inputs.item_vectors)


def covisitation(config: RetrievalConfig, inputs: SourceInputs) -> CandidateSource:
    return CovisitationSource(inputs.state, config.n_covisitation)


def item_item(config: RetrievalConfig, inputs: SourceInputs) -> CandidateSource:
    return ItemItemSource(inputs.state, config.n_item_item)


def popularity(config: RetrievalConfig, inputs: SourceInputs) -> CandidateSource:
    return PopularitySource(inputs.state, config.n_popular)


def history(config: RetrievalConfig, inputs: SourceInputs) -> CandidateSource:
    return HistorySource(config.include_history)


# semantic hits first, then co-visitation items not yet listed, then EASE item-item ones, then
# popular ones, then history
SOURCES: tuple[SourceFactory, ...] = (semantic, covisitation, item_item, popularity, history)


def build_sources(config: RetrievalConfig, inputs: SourceInputs,
                  registry: Sequence[SourceFactory] = SOURCES) -> list[CandidateSource]:
    """The sources of `registry`, set up by `config`, in the registry's order."""
    return [factory(config, inputs) for factory in registry]
