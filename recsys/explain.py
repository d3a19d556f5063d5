"""Reasons for a recommendation: the history item it is closest to ("because you viewed X"), and
the features that pushed it up (LightGBM per-feature contributions), with a one-line text."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from features.build import FEATURE_GROUPS

if TYPE_CHECKING:
    from recsys.recommender import RankedBatch, Recommender

TOP_FEATURES = 3
RECENT_HISTORY = 50   # "because you viewed" looks at this many most recent history items
GROUP_OF = {feature: group for group, names in FEATURE_GROUPS.items() for feature in names}
# What a feature group pushing an item up means, in the user's words.
GROUP_TEXT = {
    "semantic": "similar to what you viewed",
    "covisitation": "often viewed next by people who viewed your recent items",
    "item_item": "liked by people who liked the items you viewed",
    "popularity": "popular",
    "recency": "fresh",
    "user": "fits how you use the catalogue",
    "category": "in a category you view often",
    "retrieval": "found by several of our sources",
}


def explain_rows(recommender: Recommender, ranked: RankedBatch, order: np.ndarray,
                 history: list[int]) -> list[dict]:
    """One reason dict per recommended position in `order`.

    Each: {"because_of": {item_id, title, similarity} (absent without history),
    "features": [{feature, group, value, contribution}] (top positive contributions, largest
    first; value None when the feature is missing, e.g. no time known), "text": one line}.
    """
    rows = ranked.features[order.tolist()]
    contributions = recommender.ranker.contributions(rows)[:, :-1]   # drop the bias column
    names = recommender.ranker.features
    values = rows.select(names).to_numpy()
    recent = np.asarray(list(dict.fromkeys(history[-RECENT_HISTORY:])), dtype=np.int64)
    reasons = []
    for i, pos in enumerate(order):
        item = int(ranked.candidates.item[pos])
        reason: dict = {}
        others = recent[recent != item]      # the item itself is no reason for itself
        if others.size:
            sims = recommender.item_vectors[others] @ recommender.item_vectors[item]
            best = int(np.argmax(sims))
            reason["because_of"] = {"item_id": recommender.item_ids[int(others[best])],
                                    "title": recommender.titles[int(others[best])],
                                    "similarity": round(float(sims[best]), 4)}
        top = np.argsort(-contributions[i], kind="stable")[:TOP_FEATURES]
        reason["features"] = [{"feature": names[f], "group": GROUP_OF.get(names[f], "other"),
                               "value": _number(values[i, f]),
                               "contribution": round(float(contributions[i, f]), 4)}
                              for f in top if contributions[i, f] > 0]
        reason["text"] = reason_text(reason)
        reasons.append(reason)
    return reasons


def reason_text(reason: dict) -> str:
    """One line a person can read: the closest history item first, then the pushing groups."""
    parts = []
    because = reason.get("because_of")
    if because and because.get("title"):
        parts.append(f"because you viewed \u201c{because['title']}\u201d")
    groups = list(dict.fromkeys(f["group"] for f in reason.get("features", [])))
    parts.extend(GROUP_TEXT[g] for g in groups if g in GROUP_TEXT)
    return "; ".join(parts) if parts else "recommended by the model"


def _number(value: float) -> float | None:
    """JSON-safe feature value: NaN (missing) becomes None."""
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None
