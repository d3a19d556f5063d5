"""Item-item source: the items EASE scores highest for the user's clicked items
(features/item_item.py), best score first."""

from __future__ import annotations

import scipy.sparse as sp

from features.state import BehaviourState
from recsys.retrieval.covisitation import CovisitationSource
from recsys.retrieval.source import RetrievalBatch

_CACHE = "_item_item_scores"


class ItemItemSource(CovisitationSource):
    """The `n` best positive EASE scores of each request (score descending, then item row
    ascending) among the eligible items; rank = position among the eligible. Selection and
    ranks are the co-visitation source's, over the EASE score matrix instead."""

    name = "item_item"
    rank_name = "item_item_rank"

    def __init__(self, state: BehaviourState, n: int) -> None:
        super().__init__(state, n if state.item_item_ is not None else 0)

    def scores(self, batch: RetrievalBatch) -> sp.csr_matrix:
        cached = batch.__dict__.get(_CACHE)
        if cached is None or cached[0] is not self.state.item_item_:
            weights = self.state.item_item_
            matrix = (weights.score(batch.histories) if weights is not None else
                      sp.csr_matrix((len(batch), self.state.n_items), dtype="float32"))
            cached = (weights, matrix)
            batch.__dict__[_CACHE] = cached
        return cached[1]
