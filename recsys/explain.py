"""Reasons for a recommendation: the history item it is closest to, and the features that
pushed it up (LightGBM per-feature contributions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recsys.recommender import RankedBatch, Recommender

TOP_FEATURES = 3


def explain_rows(recommender: "Recommender", ranked: "RankedBatch", order: np.ndarray,
                 history: list[int]) -> list[dict]:
    """One reason dict per recommended position in `order`."""
    rows = ranked.features[order.tolist()]
    contributions = recommender.ranker.contributions(rows)[:, :-1]   # drop the bias column
    names = recommender.ranker.features
    reasons = []
    recent = np.asarray(history[-50:], dtype=np.int64)
    for i, pos in enumerate(order):
        item = int(ranked.candidates.item[pos])
        reason: dict = {"features": []}
        if recent.size:
            sims = recommender.item_vectors[recent] @ recommender.item_vectors[item]
            best = int(np.argmax(sims))
            reason["because_of"] = {"item_id": recommender.item_ids[int(recent[best])],
                                    "title": recommender.titles[int(recent[best])],
                                    "similarity": round(float(sims[best]), 4)}
        top = np.argsort(-contributions[i])[:TOP_FEATURES]
        reason["features"] = [{"feature": names[f], "value": round(float(rows[names[f]][i]), 4),
                               "contribution": round(float(contributions[i, f]), 4)}
                              for f in top if contributions[i, f] > 0]
        reasons.append(reason)
    return reasons
