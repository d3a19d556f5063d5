"""Ranker feature rows for (request, candidate) pairs: the one path for training and serving.

`candidate_features` takes a batch of requests (each a user's history up to the request time) and
their candidate items, and returns one row per candidate with the columns in `FEATURES`. The
trainer calls it for millions of historical rows, the API for one live request; both get the same
numbers for the same (user, candidate, time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

from features import kernels
from features.covisitation import RECENT_ITEMS, Covisitation, pair_scores
from features.ragged import flatten, list_lengths
from features.state import BehaviourState

RECENT_FOR_SIMILARITY = 5
MISSING_RANK = 1000.0  # rank given to a candidate that a source did not return

# Feature groups, used for ablations and explanations. Order is the column order of the model.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "semantic": ("sem_score", "sim_last", "sim_max_recent", "sem_rank"),
    "covisitation": ("covis_score", "covis_last", "covis_rank"),
    "item_item": ("item_item_score", "item_item_rank"),
    "popularity": ("pop_rank", "item_clicks_log", "item_clicks_w0_log", "item_clicks_w1_log",
                   "item_clicks_w2_log", "item_ctr"),
    "recency": ("item_age_days", "item_idle_days", "user_idle_days"),
    "user": ("user_history_len", "in_history"),
    "category": ("cat_share", "cat_last"),
    "retrieval": ("n_sources",),
}
FEATURES: tuple[str, ...] = tuple(name for group in FEATURE_GROUPS.values() for name in group)


@dataclass
class Requests:
    """A batch of requests. Item ids are bundle item rows; times are epoch seconds
    (NaN = unknown)."""

    histories: Sequence[Sequence[int]]
    profiles: np.ndarray            # [n_requests, d] user profile vectors
    times: np.ndarray               # [n_requests] request time, epoch seconds (NaN when order-only)
    last_event_times: np.ndarray    # [n_requests] time of the user's last event (NaN if unknown)
    _covis_scores: dict = field(default_factory=dict, repr=False, compare=False)
    _flat: tuple | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.histories)

    def flat_histories(self) -> tuple[np.ndarray, np.ndarray]:
        """All histories as one int64 array of item rows and the [n + 1] offsets of each."""
        if self._flat is None:
            self._flat = flatten(self.histories)
        return self._flat

    def covisitation_scores(self, covis: Covisitation, recent: int = RECENT_ITEMS) -> sp.csr_matrix:
        """Co-visitation scores of every item for each request, computed once per batch: the
        candidate source, the features and the evaluation baseline all read the same matrix."""
        key = (id(covis), recent)
        if key not in self._covis_scores or self._covis_scores[key][0] is not covis:
            self._covis_scores[key] = (covis, covis.score(self.histories, recent))
        return self._covis_scores[key][1]

    def item_item_scores(self, state: BehaviourState) -> sp.csr_matrix | None:
        """EASE scores of every item for each request (None where the state has no item-item
        weights), computed once per batch."""
        weights = state.item_item_
        if weights is None:
            return None
        key = ("item_item", id(weights))
        if key not in self._covis_scores or self._covis_scores[key][0] is not weights:
            self._covis_scores[key] = (weights, weights.score(self.histories))
        return self._covis_scores[key][1]


@dataclass
class Candidates:
    """Candidate rows: which request, which item row, and where each source ranked it."""

    request: np.ndarray             # [m] index into Requests
    item: np.ndarray                # [m] item row
    sem_rank: np.ndarray            # [m] rank in the semantic source (MISSING_RANK if absent)
    covis_rank: np.ndarray
    pop_rank: np.ndarray
    item_item_rank: np.ndarray | None = None   # None: the source was not asked (all missing)

    def __len__(self) -> int:
        return int(self.item.shape[0])

    def bounds(self, n_requests: int) -> np.ndarray:
        """Request j's rows are [bounds[j], bounds[j + 1]): candidates come grouped by request,
        in request order."""
        if self.request.size and np.any(np.diff(self.request) < 0):
            raise ValueError("candidate rows must be grouped by request in ascending order")
        return np.searchsorted(self.request, np.arange(n_requests + 1), side="left")

    def slices(self, n_requests: int) -> list[slice]:
        """Each request's rows, as slices of `bounds`."""
        bounds = self.bounds(n_requests).tolist()
        return [slice(bounds[j], bounds[j + 1]) for j in range(n_requests)]

    def hits(self, targets: Sequence[Sequence[int]]) -> np.ndarray:
        """Which rows hold one of their own request's target items."""
        out = np.zeros(len(self), dtype=bool)
        for rows, wanted in zip(self.slices(len(targets)), targets, strict=True):
            out[rows] = np.isin(self.item[rows], wanted)
        return out


def candidate_features(requests: Requests, candidates: Candidates, state: BehaviourState,
                       item_vectors: np.ndarray, item_categories: np.ndarray) -> pl.DataFrame:
    """One feature row per candidate, columns `FEATURES`, float32."""
    return feature_frame(feature_matrix(requests, candidates, state, item_vectors,
                                        item_categories))


def feature_frame(block: np.ndarray) -> pl.DataFrame:
    """The rows of `feature_matrix` as a frame with the `FEATURES` columns (no copy)."""
    return pl.from_numpy(block, schema=list(FEATURES), orient="row")


def feature_matrix(requests: Requests, candidates: Candidates, state: BehaviourState,
                   item_vectors: np.ndarray, item_categories: np.ndarray) -> np.ndarray:
    """The feature rows as one float32 block [candidates, FEATURES], column-major.

    The serving path hands this block to the ranker as it is: wrapping it in a polars frame
    (`candidate_features`) and unwrapping it again costs time on every call, for nothing the
    ranker needs."""
    req, item = candidates.request.astype(np.int64), candidates.item.astype(np.int64)
    history_items, offsets = requests.flat_histories()
    lengths = list_lengths(offsets)
    last_items = np.where(lengths > 0, history_items[np.maximum(offsets[1:] - 1, 0)]
                          if history_items.size else -1, -1)
    # one compiled pass each (features/kernels.py): the numpy versions cost more in call
    # overhead than in arithmetic for one request's candidates
    sem_score, sim_last, sim_max_recent = kernels.similarities(
        requests.profiles, history_items, offsets, req, item, item_vectors, RECENT_FOR_SIMILARITY)

    covis = state.covisitation
    covis_score = pair_scores(requests.covisitation_scores(covis), req, item)
    covis_last = covis.pair_values(last_items[req], item)  # == score(recent=1), bit for bit

    item_item = requests.item_item_scores(state)
    item_item_score = (pair_scores(item_item, req, item) if item_item is not None
                       else np.zeros(len(item), np.float32))
    item_item_rank = (candidates.item_item_rank if candidates.item_item_rank is not None
                      else np.full(len(item), MISSING_RANK, np.float32))

    in_history, cat_share, cat_last = kernels.history_features(history_items, offsets, req, item,
                                                               item_categories)

    per_item = state.item_feature_columns()[item]
    times = requests.times[req]
    day = 86400.0
    columns = {
        "sem_score": sem_score,
        "sim_last": sim_last,
        "sim_max_recent": sim_max_recent,
        "sem_rank": candidates.sem_rank,
        "covis_score": covis_score,
        "covis_last": covis_last,
        "covis_rank": candidates.covis_rank,
        "pop_rank": candidates.pop_rank,
        "item_item_score": item_item_score,
        "item_item_rank": item_item_rank,
        "item_clicks_log": per_item[:, 0],
        "item_clicks_w0_log": per_item[:, 1],
        "item_clicks_w1_log": per_item[:, 2],
        "item_clicks_w2_log": per_item[:, 3],
        "item_ctr": per_item[:, 4],
        "item_age_days": (times - state.first_seen_s_[item]) / day,
        "item_idle_days": (times - state.last_seen_s_[item]) / day,
        "user_idle_days": (times - requests.last_event_times[req]) / day,
        "user_history_len": lengths[req],
        "in_history": in_history,
        "cat_share": cat_share,
        "cat_last": cat_last,
        "n_sources": ((candidates.sem_rank < MISSING_RANK).astype(np.int8)
                      + (candidates.covis_rank < MISSING_RANK)
                      + (candidates.pop_rank < MISSING_RANK)
                      + (item_item_rank < MISSING_RANK)),
    }
    # One column-major float32 block: polars wraps it without a copy per column, and the
    # ranker reads it back as the same block (Ranker.matrix), so no copy on the way either.
    block = np.empty((len(item), len(FEATURES)), dtype=np.float32, order="F")
    for j, name in enumerate(FEATURES):
        block[:, j] = columns[name]
    return block
