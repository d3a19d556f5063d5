"""Turning API requests into Recommender calls and Recommendations into response bodies.

Runs on the model pool; one Recommender (one model version) answers a whole batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

from recsys.live_state import live_history, live_since
from recsys.recommender import POPULARITY, Filters, History, Recommendation, Recommender
from recsys.store import EventStore, StoreUnavailable
from serving.errors import NoModel

log = logging.getLogger(__name__)

NO_MODEL = "none"


def make_filters(*, exclude: list[str], categories: list[str] | None,
                 exclude_categories: list[str], exclude_seen: bool, diversity: str) -> Filters:
    return Filters(exclude_seen=exclude_seen, exclude_items=list(exclude),
                   include_categories=list(categories) if categories is not None else None,
                   exclude_categories=list(exclude_categories) or None, diversity=diversity)


@dataclass
class RecommendJob:
    """One recommendation request: a known user (their live events added) or, with `history`,
    an anonymous visitor's item ids."""

    k: int
    filters: Filters
    explain: bool
    user_id: str | None = None
    history: Sequence[str] | None = None


def answer_batch(jobs: Sequence[RecommendJob], holder, store: EventStore,
                 live_items: int) -> list[dict | Exception]:
    """Response bodies for a batch of requests, all answered by one model version: the serving
    one, read once for the batch with the cold-start item changes stored by any replica applied
    (on the model thread: its SQLite check would otherwise hold up the event loop)."""
    recommender = holder.refresh_items()
    if recommender is None:
        raise NoModel("no model is loaded")
    return recommend_jobs(jobs, recommender, store, live_items, now=holder.clock.now(recommender))


def recommend_jobs(jobs: Sequence[RecommendJob], recommender: Recommender, store: EventStore,
                   live_items: int, now: float | None = None) -> list[dict | Exception]:
    """Response bodies for many requests, in one `recommend_histories` call per group of jobs
    that share k, filters and explain (the call ranks each history on its own:
    tests/test_serving_batching.py checks the answers equal one-by-one answers).

    A failure belongs to the job that caused it: a group whose call raises is answered again
    one job at a time, so one bad request never fails the others. `now`: the data clock time
    features are measured from (None: the bundle's own)."""
    out: list[dict | Exception | None] = [None] * len(jobs)
    groups: dict[tuple, list[tuple[int, History]]] = {}
    for j, job in enumerate(jobs):
        try:
            history = _history(recommender, job, store, live_items)
        except Exception as exc:  # the store read failed for this job only
            out[j] = exc
            continue
        groups.setdefault(_group_key(job), []).append((j, history))
    for members in groups.values():
        try:
            results = _recommend(recommender, jobs, members, now)
        except Exception as exc:
            if len(members) == 1:
                results = [exc]
            else:
                log.exception("a batch of %d recommendation requests failed; answering each "
                              "alone", len(members))
                results = [_attempt(recommender, jobs, member, now) for member in members]
        for (j, _), result in zip(members, results, strict=True):
            out[j] = result if isinstance(result, Exception) else body(recommender, result)
    return out  # type: ignore[return-value]


def _history(recommender: Recommender, job: RecommendJob, store: EventStore,
             live_items: int) -> History:
    if job.history is not None:
        return recommender.history_of(job.history)
    try:
        return live_history(recommender, store, job.user_id, live_items)
    except StoreUnavailable:
        # the store is down (logged by it, /health says so): answer from the bundle's history
        # alone rather than fail the request; the live events count again once it is back
        return recommender.live_history(job.user_id, [])


def _group_key(job: RecommendJob) -> tuple:
    rules = tuple(tuple(v) if isinstance(v, (list, tuple)) else v
                  for v in (getattr(job.filters, f.name) for f in fields(job.filters)))
    return job.k, job.explain, rules


def _recommend(recommender: Recommender, jobs: Sequence[RecommendJob],
               members: list[tuple[int, History]], now: float | None) -> list:
    first = jobs[members[0][0]]
    return recommender.recommend_histories(
        [history for _, history in members], first.k, first.filters, now=now,
        explain=first.explain, user_ids=[jobs[j].user_id for j, _ in members])


def _attempt(recommender, jobs, member, now):
    try:
        return _recommend(recommender, jobs, [member], now)[0]
    except Exception as exc:
        return exc


def similar(recommender: Recommender, item_id: str, k: int) -> dict:
    return body(recommender, recommender.similar_items(item_id, k))


def body(recommender: Recommender, result: Recommendation) -> dict:
    reasons = result.reasons or [None] * len(result.item_ids)
    items = [{"item_id": item, "score": _finite(score),
              "title": recommender.titles[recommender.item_rows[item]]
              if item in recommender.item_rows else None, "reasons": reason}
             for item, score, reason in zip(result.item_ids, result.scores, reasons, strict=True)]
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


__all__ = ["NO_MODEL", "RecommendJob", "answer_batch", "body", "live_since", "make_filters",
           "no_model_popular", "recommend_jobs", "similar"]
