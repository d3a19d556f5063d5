"""Evaluating a bundle on an explicit time window [start, end), as it would run deployed.

Used by the retrain gate (newest slice of the new log) and by the log replay benchmark. Each
bundle keeps its own behavioural state (frozen at its training cut-off, as serving holds it);
user histories are every click before `start` (what the live event store would hold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import polars as pl

from features.state import POSITIVE_TYPES
from recsys.interest import semantic_scores
from recsys.metrics import rank_of, ranking_metrics
from recsys.ranking_context import keep_new_items_up, new_item_rows
from recsys.recommender import Recommender
from recsys.splits import Case, epoch_seconds, with_item_rows

CHUNK = 500
METHODS = ("pipeline", "popularity")


def window_cases(events: pl.DataFrame, item_ids: Sequence[str], start: datetime,
                 end: datetime | None = None) -> list[Case]:
    """One case per user who clicks in [start, end): history = their clicks before `start`
    (oldest first), targets = the items they click in the window that are not in that history."""
    clicks = (with_item_rows(events.filter(pl.col("type").is_in(POSITIVE_TYPES)), list(item_ids))
              .sort(["user_id", "timestamp", "event_id"], maintain_order=True))
    before = clicks.filter(pl.col("timestamp") < start)
    inside = clicks.filter(pl.col("timestamp") >= start)
    if end is not None:
        inside = inside.filter(pl.col("timestamp") < end)
    history = before.group_by("user_id", maintain_order=True).agg(
        pl.col("item"), pl.col("timestamp").max().alias("last"))
    targets = inside.group_by("user_id", maintain_order=True).agg(
        pl.col("item").unique(maintain_order=True).alias("targets"))
    now = epoch_seconds(start)
    cases = []
    joined = targets.join(history, on="user_id", how="left").sort("user_id")
    rows = joined.select("user_id", "targets", "item", "last").iter_rows()
    for user, window_items, hist, last in rows:
        hist = [int(i) for i in (hist or [])]
        seen = set(hist)
        fresh = [int(t) for t in window_items if t not in seen]
        if fresh:
            cases.append(Case(user, hist, epoch_seconds(last) if last else math.nan, now, fresh))
    return cases


def evaluate_window(recommender: Recommender, events: pl.DataFrame, start: datetime,
                    end: datetime | None = None, *, max_cases: int | None = None,
                    seed: int = 0) -> dict:
    """Full-ranking metrics of the bundle (pipeline) and its popularity order on the window.

    Ranking as in `recsys evaluate`: the ranked candidates first, then every other item by
    similarity to the user's profile; users without history get the popularity order.
    "_masked" metrics remove the user's history items before ranking; "_warm" metrics count only
    users with a history (the others get the popularity order from every method).
    """
    cases = window_cases(events, recommender.item_ids, start, end)
    if max_cases is not None and len(cases) > max_cases:
        keep = np.random.default_rng(seed).choice(len(cases), max_cases, replace=False)
        cases = [cases[i] for i in sorted(keep)]
    out = {"cases": len(cases), "cold_cases": sum(1 for c in cases if not c.history),
           "targets": sum(len(c.targets) for c in cases), "metrics": {}}
    if not cases:
        return out
    n_items = len(recommender.item_ids)
    context = recommender.context
    pop_position = np.empty(n_items, dtype=np.float64)
    pop_position[context.state.popular_rows_] = np.arange(n_items)
    popularity = 1.0 - pop_position / n_items
    is_new = new_item_rows(context.state)
    ranks: dict[str, list[list[float]]] = {f"{m}{s}": [] for m in METHODS
                                           for s in ("", "_masked", "_warm")}
    for first in range(0, len(cases), CHUNK):
        chunk = cases[first:first + CHUNK]
        requests = context.requests([c.history for c in chunk], np.array([c.time for c in chunk]),
                                    np.array([c.last_time for c in chunk]))
        candidates, rows = context.rows(requests)
        scores = recommender.ranker.predict(rows)
        semantic = semantic_scores(requests.profiles, context.item_vectors,
                                   [c.history for c in chunk], context.interest)
        rows_of = candidates.slices(len(chunk))
        for j, case in enumerate(chunk):
            if case.history:
                mask = rows_of[j]
                order = keep_new_items_up(np.argsort(-scores[mask], kind="stable"),
                                          candidates.item[mask], candidates.sem_rank[mask],
                                          is_new)
                pipeline = semantic[j].astype(np.float64)
                pipeline[candidates.item[mask][order]] = 10.0 + (len(order) - np.arange(len(order)))
            else:
                pipeline = popularity
            seen = np.unique(np.asarray(case.history, dtype=np.int64))
            for name, score in (("pipeline", pipeline), ("popularity", popularity)):
                ranks[name].append([rank_of(score, t) for t in case.targets])
                if case.history:
                    ranks[f"{name}_warm"].append(ranks[name][-1])
                masked = np.array(score, dtype=np.float64)
                masked[seen] = -np.inf
                ranks[f"{name}_masked"].append([rank_of(masked, t) for t in case.targets])
    out["metrics"] = {name: {metric: round(value, 4) for metric, value in
                             ranking_metrics(values).items()}
                      for name, values in ranks.items() if values}
    return out


__all__ = ["window_cases", "evaluate_window"]
