"""The Recommender: one object answers the API and the batch scorer, from one bundle.

Batch-first: every method takes a list of users (or histories); one API request is a batch of
one. Returns plain ids and scores, with the model version and where the answer came from.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from features.build import FEATURES, Candidates, Requests
from features.state import BehaviourState
from recsys.bundle import read_manifest, resolve_bundle
from recsys.errors import BundleError, NotFoundError
from recsys.index import ItemIndex
from recsys.ranker import Ranker
from recsys.ranking import RankingContext
from recsys.retrieval import RetrievalConfig

log = logging.getLogger(__name__)

MODEL, POPULARITY, DEGRADED = "model", "popularity", "degraded"


@dataclass
class Filters:
    """Business rules applied at ranking time."""

    exclude_seen: bool = True
    exclude_items: Sequence[str] = ()
    include_categories: Sequence[str] | None = None
    exclude_categories: Sequence[str] | None = None
    diversity: str = "none"          # "none" | "mmr" | "category_cap"
    mmr_lambda: float = 0.7          # mmr: weight of relevance against novelty (1 = no diversity)
    max_per_category: int = 3        # category_cap: at most this many items per category


@dataclass
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    source: str                      # "model" | "popularity" | "degraded"
    model_version: str
    user_id: str | None = None
    reasons: list[dict] | None = None


@dataclass
class RankedBatch:
    """Internal result of ranking a batch: candidate rows with their ranker scores."""

    candidates: Candidates
    scores: np.ndarray
    features: pl.DataFrame | None = None
    degraded: bool = False


@dataclass
class History:
    items: list[int] = field(default_factory=list)   # item rows, oldest first
    last_time: float = math.nan                        # epoch seconds of the last event


class Recommender:
    """Holds one loaded bundle. Thread-safe for reads: nothing mutates after `load`."""

    def __init__(self, *, version: str, manifest: dict, item_table: pl.DataFrame,
                 item_vectors: np.ndarray, index: ItemIndex, state: BehaviourState,
                 ranker: Ranker, users: dict[str, History], retrieval: RetrievalConfig,
                 path: Path | None = None) -> None:
        self.version = version
        self.manifest = manifest
        self.path = path
        self.item_ids: list[str] = item_table["item_id"].to_list()
        self.item_rows: dict[str, int] = {item: row for row, item in enumerate(self.item_ids)}
        self.titles: list[str] = item_table["title"].fill_null("").to_list()
        categories = item_table["category"]
        self.category_names: list[str] = sorted(set(categories.drop_nulls().to_list()))
        code = {name: i for i, name in enumerate(self.category_names)}
        self.item_categories = np.array([code.get(c, -1) if c is not None else -1
                                         for c in categories.to_list()], dtype=np.int64)
        self.item_vectors = item_vectors
        self.index = index
        self.state = state
        self.ranker = ranker
        self.users = users
        self.retrieval = retrieval
        self.context = RankingContext(item_vectors, self.item_categories, index, state, retrieval)
        self.real_time = state.real_time
        self.active = np.ones(len(self.item_ids), dtype=bool)  # False = deleted, never served
        cutoff = state.cutoff_
        self.latest_event_s = cutoff.timestamp() if (cutoff is not None and self.real_time) \
            else time.time()

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True, threads: int = 0) -> "Recommender":
        from recsys.bundle_io import read_bundle

        bundle = resolve_bundle(path)
        manifest = read_manifest(bundle, verify=verify)
        return read_bundle(cls, bundle, manifest, threads=threads)

    # -- public API ----------------------------------------------------------------------------
    def recommend(self, users: Sequence[str], k: int = 10, filters: Filters | None = None,
                  *, now: float | None = None, explain: bool = False) -> list[Recommendation]:
        """Recommendations for known users; unknown users get the popularity fallback."""
        histories = [self.users.get(u, History()) for u in users]
        return self._recommend(histories, k, filters or Filters(), now=now, explain=explain,
                               user_ids=list(users))

    def recommend_for_history(self, histories: Sequence[Sequence[str]], k: int = 10,
                              filters: Filters | None = None, *, now: float | None = None,
                              explain: bool = False) -> list[Recommendation]:
        """Recommendations for explicit histories (anonymous users); unknown item ids are skipped."""
        rows = [History([self.item_rows[i] for i in h if i in self.item_rows]) for h in histories]
        return self._recommend(rows, k, filters or Filters(), now=now, explain=explain,
                               user_ids=[None] * len(rows))

    def similar_items(self, item_id: str, k: int = 10) -> Recommendation:
        row = self.item_rows.get(item_id)
        if row is None:
            raise NotFoundError(f"unknown item {item_id!r}")
        exclude = {row} | set(np.flatnonzero(~self.active).tolist())
        rows, scores = self.index.search(self.item_vectors[row:row + 1], k, exclude=[exclude])
        keep = rows[0] >= 0
        return Recommendation([self.item_ids[r] for r in rows[0][keep]],
                              [float(s) for s in scores[0][keep]], MODEL, self.version)

    # -- ranking core (also used by evaluation and batch scoring) --------------------------------
    def clock(self) -> float:
        """The time features are measured from: the freshest data the model knows of.

        Item age, idleness and user recency were learned relative to the training cut-off, so
        they are measured from the data's own clock (the state's cut-off, or the latest event
        seen since, see `observe_time`), not the wall clock: a bundle trained on last year's log
        then sees the same kind of gaps it learned from.
        """
        return self.latest_event_s

    def observe_time(self, epoch_seconds: float) -> None:
        """Advance the data clock (called when live events arrive)."""
        if np.isfinite(epoch_seconds) and epoch_seconds > self.latest_event_s:
            self.latest_event_s = float(epoch_seconds)

    def request_batch(self, histories: Sequence[History], now: float | None = None) -> Requests:
        if self.real_time:
            stamp = self.clock() if now is None else now
            times = np.full(len(histories), stamp, dtype=np.float64)
        else:
            times = np.full(len(histories), np.nan, dtype=np.float64)
        last = np.array([h.last_time for h in histories], dtype=np.float64)
        return self.context.requests([h.items for h in histories], times, last)

    def rank(self, requests: Requests, exclude: Sequence[set[int]] | None = None,
             allowed: np.ndarray | None = None, given: Sequence[Sequence[int]] | None = None,
             keep_features: bool = False) -> RankedBatch:
        """Retrieve (or take the `given` item lists), build features, score with the ranker."""
        candidates, rows = self.context.rows(requests, exclude, allowed, given)
        try:
            scores = self.ranker.predict(rows)
            degraded = False
        except Exception:  # the ranker must never take the service down: fall back to retrieval
            log.exception("ranker failed; serving retrieval order")
            scores = retrieval_order_scores(candidates)
            degraded = True
        return RankedBatch(candidates, scores, rows if keep_features else None, degraded)

    def recommend_histories(self, histories: Sequence[History], k: int = 10,
                            filters: Filters | None = None, *, now: float | None = None,
                            explain: bool = False,
                            user_ids: Sequence[str | None] | None = None) -> list[Recommendation]:
        """The general form: histories as item rows with their last event time (live state)."""
        return self._recommend(list(histories), k, filters or Filters(), now=now, explain=explain,
                               user_ids=list(user_ids) if user_ids is not None
                               else [None] * len(histories))

    def _recommend(self, histories: list[History], k: int, filters: Filters, *,
                   now: float | None, explain: bool, user_ids: list) -> list[Recommendation]:
        allowed = self._allowed_mask(filters)
        excluded_ids = {self.item_rows[i] for i in filters.exclude_items if i in self.item_rows}
        exclude = [excluded_ids | (set(h.items) if filters.exclude_seen else set())
                   for h in histories]
        out: list[Recommendation | None] = [None] * len(histories)
        warm = [u for u, h in enumerate(histories) if h.items]
        for u, h in enumerate(histories):
            if not h.items:
                out[u] = self._popular(k, exclude[u], allowed, user_ids[u])
        if warm:
            requests = self.request_batch([histories[u] for u in warm], now)
            ranked = self.rank(requests, [exclude[u] for u in warm], allowed,
                               keep_features=explain)
            bounds = request_bounds(ranked.candidates.request, len(warm))
            for j, u in enumerate(warm):
                out[u] = self._top_k(ranked, bounds[j], bounds[j + 1], k, filters, user_ids[u],
                                     requests.histories[j], explain)
        return out  # type: ignore[return-value]

    def _allowed_mask(self, filters: Filters) -> np.ndarray:
        allowed = self.active.copy()
        if filters.include_categories is not None:
            codes = [self.category_names.index(c) for c in filters.include_categories
                     if c in self.category_names]
            allowed &= np.isin(self.item_categories, codes)
        if filters.exclude_categories:
            codes = [self.category_names.index(c) for c in filters.exclude_categories
                     if c in self.category_names]
            allowed &= ~np.isin(self.item_categories, codes)
        return allowed

    def _popular(self, k: int, exclude: set[int], allowed: np.ndarray, user_id) -> Recommendation:
        picked = [int(r) for r in self.state.popular_rows_ if allowed[r] and int(r) not in exclude][:k]
        clicks = self.state.clicks_
        return Recommendation([self.item_ids[r] for r in picked],
                              [float(clicks[r]) for r in picked], POPULARITY, self.version,
                              user_id=user_id)

    def _top_k(self, ranked: RankedBatch, start: int, end: int, k: int, filters: Filters,
               user_id, history: list[int], explain: bool) -> Recommendation:
        positions = np.arange(start, end)
        order = positions[np.lexsort((ranked.candidates.item[positions], -ranked.scores[positions]))]
        order = diversify(order, ranked.candidates.item, ranked.scores, k, filters,
                          self.item_vectors, self.item_categories)
        items = ranked.candidates.item[order]
        rec = Recommendation([self.item_ids[r] for r in items],
                             [float(s) for s in ranked.scores[order]],
                             DEGRADED if ranked.degraded else MODEL, self.version, user_id=user_id)
        if explain and ranked.features is not None:
            from recsys.explain import explain_rows

            rec.reasons = explain_rows(self, ranked, order, history)
        return rec


def request_bounds(request: np.ndarray, n_requests: int) -> np.ndarray:
    """Start offsets of each request's rows (candidates come grouped by request, in order)."""
    if request.size and np.any(np.diff(request) < 0):
        raise ValueError("candidate rows must be grouped by request in ascending order")
    return np.searchsorted(request, np.arange(n_requests + 1), side="left")


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
        relevance = (relevance - relevance.min()) / spread if spread > 0 else np.ones_like(relevance)
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


def retrieval_order_scores(candidates: Candidates) -> np.ndarray:
    """A score that reproduces the sources' own order: best rank across sources first."""
    best = np.minimum(np.minimum(candidates.sem_rank, candidates.covis_rank), candidates.pop_rank)
    return (-best).astype(np.float32)


__all__ = ["Filters", "History", "Recommendation", "Recommender", "MODEL", "POPULARITY",
           "DEGRADED", "FEATURES", "BundleError"]
