"""Turning API requests into Recommender calls and Recommendations into response bodies.

Runs on the model pool; takes the Recommender it is given (one version per request).
"""

from __future__ import annotations

import math

from recsys.recommender import POPULARITY, Filters, Recommendation, Recommender
from serving.event_store import EventStore

NO_MODEL = "none"


def make_filters(*, exclude: list[str], categories: list[str] | None,
                 exclude_categories: list[str], exclude_seen: bool, diversity: str) -> Filters:
    return Filters(exclude_seen=exclude_seen, exclude_items=list(exclude),
                   include_categories=list(categories) if categories is not None else None,
                   exclude_categories=list(exclude_categories) or None, diversity=diversity)


def live_since(recommender: Recommender) -> float:
    """Live events after the bundle's data end extend its histories; earlier ones it already has."""
    cutoff = recommender.state.cutoff_
    if recommender.real_time and cutoff is not None:
        return cutoff.timestamp()
    return -math.inf


def recommend_user(recommender: Recommender, store: EventStore, live_items: int, user_id: str,
                   k: int, filters: Filters, explain: bool) -> dict:
    """The bundle's history of the user plus their events stored since (by any replica)."""
    recent, last = store.recent_items(user_id, live_items, live_since(recommender))
    history = recommender.live_history(user_id, recent, last)
    result = recommender.recommend_histories([history], k, filters, explain=explain,
                                             user_ids=[user_id])[0]
    return body(recommender, result)


def recommend_history(recommender: Recommender, history: list[str], k: int, filters: Filters,
                      explain: bool) -> dict:
    result = recommender.recommend_for_history([history], k, filters, explain=explain)[0]
    return body(recommender, result)


def similar(recommender: Recommender, item_id: str, k: int) -> dict:
    return body(recommender, recommender.similar_items(item_id, k))


def body(recommender: Recommender, result: Recommendation) -> dict:
    reasons = result.reasons or [None] * len(result.item_ids)
    items = [{"item_id": item, "score": _finite(score),
              "title": recommender.titles[recommender.item_rows[item]]
              if item in recommender.item_rows else None, "reasons": reason}
             for item, score, reason in zip(result.item_ids, result.scores, reasons)]
    return {"user_id": result.user_id, "items": items, "source": result.source,
            "fallback": result.source != "model", "model_version": result.model_version}


def no_model_popular(store: EventStore, user_id: str | None, k: int,
                     exclude: list[str]) -> dict:
    """Without a model: the items clicked most in stored events, declared as the fallback."""
    items = [{"item_id": item, "score": float(n), "title": None, "reasons": None}
             for item, n in store.popular_items(k, set(exclude))]
    return {"user_id": user_id, "items": items, "source": POPULARITY, "fallback": True,
            "model_version": NO_MODEL}


def _finite(score: float) -> float:
    return float(score) if math.isfinite(score) else 0.0


__all__ = ["NO_MODEL", "body", "live_since", "make_filters", "no_model_popular",
           "recommend_history", "recommend_user", "similar"]
