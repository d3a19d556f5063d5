"""Diversity rules at ranking time: MMR and a per-category cap, on a tiny catalogue whose answer
is known."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.diversity import diversify
from recsys.recommender import Filters

# Six items: 0-2 are near-duplicates (category 0), 3-4 another pair (category 1), 5 alone.
VECTORS = np.array([[1, 0, 0], [0.99, 0.14, 0], [0.98, 0.2, 0],
                    [0, 1, 0], [0.1, 0.99, 0], [0, 0, 1]], dtype=np.float32)
VECTORS /= np.linalg.norm(VECTORS, axis=1, keepdims=True)
CATEGORIES = np.array([0, 0, 0, 1, 1, 2])
SCORES = np.array([6, 5, 4, 3, 2, 1], dtype=np.float32)   # relevance favours the duplicates
ORDER = np.arange(6)
ITEMS = np.arange(6)


def _pick(filters, k=3):
    return diversify(ORDER, ITEMS, SCORES, k, filters, VECTORS, CATEGORIES).tolist()


def _ild(rows):
    sims = VECTORS[rows] @ VECTORS[rows].T
    return float((1 - sims[np.triu_indices(len(rows), 1)]).mean())


def test_no_rule_keeps_the_ranking():
    assert _pick(Filters()) == [0, 1, 2]


def test_category_cap_spreads_categories_and_keeps_k():
    assert _pick(Filters(diversity="category_cap", max_per_category=1)) == [0, 3, 5]
    assert _pick(Filters(diversity="category_cap", max_per_category=2)) == [0, 1, 3]
    # when the cap runs out of categories, the best capped-out items fill the list
    assert _pick(Filters(diversity="category_cap", max_per_category=1), k=5) == [0, 3, 5, 1, 2]


def test_mmr_trades_relevance_for_novelty():
    assert _pick(Filters(diversity="mmr", mmr_lambda=1.0)) == [0, 1, 2]
    diverse = _pick(Filters(diversity="mmr", mmr_lambda=0.5))
    assert diverse[0] == 0 and len(set(CATEGORIES[diverse])) == 3
    assert _ild(diverse) > _ild([0, 1, 2])


def test_unknown_rule_is_an_error():
    with pytest.raises(ValueError, match="diversity"):
        _pick(Filters(diversity="shuffle"))
