"""The Recommender: one object answers the API and the batch scorer, from one bundle.

Batch-first: every method takes a list of users (or histories); one API request is a batch of
one. Returns plain ids and scores, with the model version and where the answer came from.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from features.build import FEATURES, Candidates, Requests
from features.state import BehaviourState
from recsys.bundle_files import read_bundle
from recsys.bundle_versions import read_manifest, resolve_bundle
from recsys.compiled_trees import CompiledTreesError
from recsys.diversity import diversify
from recsys.errors import BundleError, NotFoundError
from recsys.index import ItemIndex
from recsys.interest import InterestModel
from recsys.new_items import grow_rows, state_with_new_items
from recsys.ranker_model import Ranker, RetrievalOrder, retrieval_order_scores
from recsys.ranking_context import (
    RankingContext,
    best_first,
    keep_new_items_up_in_batch,
    new_item_rows,
)
from recsys.retrieval import FreshItemsIndex, RetrievalConfig
from recsys.user_history import History

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


class Recommender:
    """Holds one loaded bundle. Thread-safe for reads: nothing mutates after `load`."""

    def __init__(self, *, version: str, manifest: dict, item_table: pl.DataFrame,
                 item_vectors: np.ndarray, index: ItemIndex, state: BehaviourState,
                 ranker: Ranker, users: dict[str, History], retrieval: RetrievalConfig,
                 interest: InterestModel | None = None, path: Path | None = None) -> None:
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
        # A ranker trained on too little data (training says so in the manifest) is not used:
        # the retrieval order is served instead, and answers are marked degraded.
        self.ranker_used = bool((manifest.get("ranker") or {}).get("used", True))
        self.ranker = ranker if self.ranker_used else RetrievalOrder(ranker.features)
        self.users = users
        self.retrieval = retrieval
        self.context = RankingContext(item_vectors, self.item_categories, index, state, retrieval,
                                      interest)
        self.real_time = state.real_time
        self.active = np.ones(len(self.item_ids), dtype=bool)  # False = deleted, never served
        cutoff = state.cutoff_
        self.data_end_s = cutoff.timestamp() if (cutoff is not None and self.real_time) \
            else time.time()

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True, threads: int = 0) -> Recommender:
        bundle = resolve_bundle(path)
        manifest = read_manifest(bundle, verify=verify)
        return cls(**vars(read_bundle(bundle, manifest, threads=threads)))

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
        """Recommendations for explicit histories (anonymous users); unknown item ids are
        skipped."""
        rows = [self.history_of(h) for h in histories]
        return self._recommend(rows, k, filters or Filters(), now=now, explain=explain,
                               user_ids=[None] * len(rows))

    def history_of(self, item_ids: Sequence[str]) -> History:
        """An anonymous history from item ids, oldest first; unknown ids are skipped."""
        return History([self.item_rows[i] for i in item_ids if i in self.item_rows])

    def similar_items(self, item_id: str, k: int = 10) -> Recommendation:
        row = self.item_rows.get(item_id)
        if row is None:
            raise NotFoundError(f"unknown item {item_id!r}")
        exclude = {row} | set(np.flatnonzero(~self.active).tolist())
        rows, scores = self.index.search(self.item_vectors[row:row + 1], k, exclude=[exclude])
        keep = rows[0] >= 0
        return Recommendation([self.item_ids[r] for r in rows[0][keep]],
                              [float(s) for s in scores[0][keep]], MODEL, self.version)

    # -- live changes, copy-on-write (the serving layer swaps in the returned copy) ------------
    def live_history(self, user_id: str | None, recent_items: Sequence[str],
                     last_time: float = math.nan) -> History:
        """The user's history from the bundle followed by the items of events that arrived since.

        Unknown item ids (deleted, or never seen) are skipped; the last event time is the later
        of the two.
        """
        base = self.users.get(user_id) if user_id is not None else None
        rows = [self.item_rows[i] for i in recent_items if i in self.item_rows]
        items = (list(base.items) if base is not None else []) + rows
        times = [t for t in (base.last_time if base is not None else math.nan, last_time)
                 if t is not None and np.isfinite(t)]
        return History(items, max(times) if times else math.nan)

    def with_items(self, item_ids: Sequence[str], titles: Sequence[str],
                   categories: Sequence[str | None], vectors: np.ndarray, *,
                   now: float | None = None) -> Recommender:
        """A copy that also serves these new or changed items (cold start), retrievable at once.

        Each item gets a new row after the existing ones (a changed item's old row is retired),
        its vector goes into a small exact "fresh items" index searched beside the bundle's, and
        its behavioural statistics start empty, first seen `now`. `self` is left unchanged, so
        requests already holding it finish on a consistent view.
        """
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        m = len(item_ids)
        if not (len(titles) == len(categories) == m == vectors.shape[0]):
            raise ValueError("item_ids, titles, categories and vectors must have the same length")
        if vectors.shape[1] != self.item_vectors.shape[1]:
            raise ValueError(f"item vectors have dimension {vectors.shape[1]}, the bundle "
                             f"{self.item_vectors.shape[1]}")
        if not np.isfinite(vectors).all():
            raise ValueError("item vectors contain NaN or infinity")
        if m == 0:
            return self
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        # an encoder's vector is unit length already: dividing by its float32 norm (1 +- an ulp)
        # would move its last bits, and the same text would score apart as a bundle item and
        # as an added one
        rescale = (norms > 0) & (np.abs(norms - 1.0) > 1e-6)
        vectors = np.divide(vectors, norms, out=vectors.copy(), where=rescale)
        n = len(self.item_ids)
        fresh = copy.copy(self)
        fresh.item_vectors, fresh._vector_buffer = grow_rows(
            self.item_vectors, getattr(self, "_vector_buffer", None), vectors)
        fresh.item_ids = self.item_ids + list(item_ids)
        fresh.titles = self.titles + [t or "" for t in titles]
        fresh.item_rows = dict(self.item_rows)
        fresh.active = np.concatenate([self.active, np.ones(m, dtype=bool)])
        for j, item in enumerate(item_ids):
            old = fresh.item_rows.get(item)
            if old is not None:
                fresh.active[old] = False
            fresh.item_rows[item] = n + j
        names = list(self.category_names)
        for c in categories:
            if c is not None and c not in names:
                names.append(c)  # appended, so existing codes keep their meaning
        code = {name: i for i, name in enumerate(names)}
        fresh.category_names = names
        fresh.item_categories = np.concatenate([self.item_categories, np.array(
            [code[c] if c is not None else -1 for c in categories], dtype=np.int64)])
        stamp = self.clock() if now is None else float(now)
        fresh.state = state_with_new_items(self.state, m, stamp)
        base = self.index.base if isinstance(self.index, FreshItemsIndex) else self.index
        fresh.index = FreshItemsIndex(base, fresh.item_vectors[base.size:])
        fresh.context = RankingContext(fresh.item_vectors, fresh.item_categories, fresh.index,
                                       fresh.state, self.retrieval, self.context.interest)
        return fresh

    def without_items(self, item_ids: Sequence[str]) -> Recommender:
        """A copy that never serves these items again (unknown ids are ignored)."""
        rows = [self.item_rows[i] for i in item_ids if i in self.item_rows]
        if not rows:
            return self
        gone = copy.copy(self)
        gone.active = self.active.copy()
        gone.active[rows] = False
        gone.item_rows = {i: r for i, r in self.item_rows.items() if r not in set(rows)}
        return gone

    def with_ranker(self, ranker) -> Recommender:
        """A copy scoring with another ranker (e.g. one wrapped in a time budget)."""
        other = copy.copy(self)
        other.ranker = ranker
        return other

    def with_compiled_ranker(self, warn: Callable[[str], None]) -> Recommender:
        """A copy predicting through the ranker's compiled trees (recsys.compiled_trees), or
        this one, after `warn(reason)`, when they do not compile or disagree with LightGBM:
        LightGBM's own predict still gives the scores. A ranker without trees to compile (a
        loader's stand-in) is kept as it is."""
        if not hasattr(self.ranker, "with_compiled_trees"):
            return self
        try:
            return self.with_ranker(self.ranker.with_compiled_trees())
        except CompiledTreesError as exc:
            warn(str(exc))
            return self

    # -- ranking core (also used by evaluation and batch scoring) --------------------------------
    def clock(self) -> float:
        """The time features are measured from when a call gives no `now`: the freshest data
        the bundle knows of.

        Item age, idleness and user recency were learned relative to the training cut-off, so
        they are measured from the data's own clock (the state's cut-off), not the wall clock: a
        bundle trained on last year's log then sees the same kind of gaps it learned from. A
        server that takes in live events keeps the later clock itself
        (`recsys.live_state.LiveClock`) and passes it as `now`.
        """
        return self.data_end_s

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
        candidates, rows = self.context.rows(requests, exclude, allowed, given,
                                             as_frame=keep_features)
        try:
            scores = self.ranker.predict(rows)
            degraded = not self.ranker_used
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
            candidates = ranked.candidates
            bounds = candidates.bounds(len(warm))
            order = best_first(candidates, ranked.scores, bounds)
            # new items never below their semantic rank (ranking_context.keep_new_items_up)
            ranked.scores = np.array(ranked.scores)   # moved items take the score below them
            order = keep_new_items_up_in_batch(
                order, np.asarray(bounds, np.int64), candidates.item,
                np.ascontiguousarray(candidates.sem_rank, np.float32),
                new_item_rows(self.state), ranked.scores, True)
            for j, u in enumerate(warm):
                request_order = order[bounds[j]:bounds[j + 1]]
                out[u] = self._top_k(ranked, request_order, k, filters, user_ids[u],
                                     requests.histories[j], explain)
        return out  # type: ignore[return-value]

    def _allowed_mask(self, filters: Filters) -> np.ndarray | None:
        """The item rows these filters allow, or None when they allow every item: retrieval
        then skips the per-call work of a mask over the whole catalogue (copying, inverting
        and scanning 100k entries: 18-27 us against 7 us a call on the serving benchmark's
        bundle)."""
        if filters.include_categories is None and not filters.exclude_categories \
                and self.active.all():
            return None
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

    def _popular(self, k: int, exclude: set[int], allowed: np.ndarray | None,
                 user_id) -> Recommendation:
        picked = [int(r) for r in self.state.popular_rows_
                  if (allowed is None or allowed[r]) and int(r) not in exclude][:k]
        clicks = self.state.clicks_
        return Recommendation([self.item_ids[r] for r in picked],
                              [float(clicks[r]) for r in picked], POPULARITY, self.version,
                              user_id=user_id)

    def _top_k(self, ranked: RankedBatch, best_first: np.ndarray, k: int, filters: Filters,
               user_id, history: list[int], explain: bool) -> Recommendation:
        """The first k of one request's rows `best_first` (positions in `ranked`, best first),
        after the diversity rule."""
        order = diversify(best_first, ranked.candidates.item, ranked.scores, k, filters,
                          self.item_vectors, self.item_categories)
        item_ids = self.item_ids
        rec = Recommendation([item_ids[r] for r in ranked.candidates.item[order].tolist()],
                             ranked.scores[order].tolist(),
                             DEGRADED if ranked.degraded else MODEL, self.version, user_id=user_id)
        if explain and ranked.features is not None:
            from recsys.explain import explain_rows

            rec.reasons = explain_rows(self, ranked, order, history)
        return rec


__all__ = ["Filters", "History", "Recommendation", "Recommender", "MODEL", "POPULARITY",
           "DEGRADED", "FEATURES", "BundleError"]
