"""The per-request best-first order of ranked candidates."""

from __future__ import annotations

import numpy as np

from features.build import Candidates
from recsys.ranking_context import best_first


def _candidates(request: np.ndarray, item: np.ndarray) -> Candidates:
    zeros = np.zeros(request.size, np.float32)
    return Candidates(request=request, item=item, sem_rank=zeros, covis_rank=zeros,
                      pop_rank=zeros)


def test_best_first_is_score_descending_then_item_within_each_request():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        sizes = rng.integers(0, 30, n)   # requests without candidates included
        request = np.repeat(np.arange(n), sizes)
        item = np.concatenate([rng.choice(100, s, replace=False) for s in sizes]).astype(np.int64)
        scores = np.round(rng.standard_normal(request.size), 1)   # many ties
        candidates = _candidates(request, item)
        np.testing.assert_array_equal(best_first(candidates, scores, candidates.bounds(n)),
                                      np.lexsort((item, -scores, request)))


def test_best_first_of_an_empty_batch_is_empty():
    empty = np.zeros(0, np.int64)
    candidates = _candidates(empty, empty)
    assert best_first(candidates, np.zeros(0), candidates.bounds(3)).size == 0
