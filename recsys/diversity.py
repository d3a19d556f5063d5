"""Diversity rules applied to one request's ranked candidates: none, MMR, or a cap per category."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recsys.recommender import Filters


def diversify(order: np.ndarray, items: np.ndarray, scores: np.ndarray, k: int, filters: Filters,
              item_vectors: np.ndarray, item_categories: np.ndarray) -> np.ndarray:
    """Pick k of the ranked positions `order`, applying the diversity rule of `filters`."""
    if filters.diversity == "none" or len(order) <= 1:
        return order[:k]
    if filters.diversity == "category_cap":
        taken: dict[int, int] = {}
        picked, spill = [], []
        for pos in order:
            cat = int(item_categories[items[pos]])
            if cat < 0 or taken.get(cat, 0) < filters.max_per_category:
                picked.append(pos)
                taken[cat] = taken.get(cat, 0) + 1
            else:
                spill.append(pos)
            if len(picked) == k:
                break
        # never return fewer than k just because the cap ran out of categories
        return np.asarray((picked + spill)[:k], dtype=np.int64)
    if filters.diversity == "mmr":
        pool = order[:max(4 * k, 50)]
        vectors = item_vectors[items[pool]]
        relevance = scores[pool].astype(np.float64)
        spread = relevance.max() - relevance.min()
        relevance = ((relevance - relevance.min()) / spread if spread > 0
                     else np.ones_like(relevance))
        chosen: list[int] = []
        max_sim = np.full(len(pool), -np.inf)
        for _ in range(min(k, len(pool))):
            novelty = np.where(np.isfinite(max_sim), max_sim, 0.0)
            value = filters.mmr_lambda * relevance - (1 - filters.mmr_lambda) * novelty
            value[chosen] = -np.inf
            best = int(np.argmax(value))
            chosen.append(best)
            max_sim = np.maximum(max_sim, vectors @ vectors[best])
        return pool[chosen]
    raise ValueError(f"unknown diversity rule {filters.diversity!r}: none, mmr or category_cap")
