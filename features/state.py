"""Behavioural state: what the click log says about items, computed from events before a cut-off.

`BehaviourState.fit(events, n_items, cutoff)` only ever reads events with timestamp < cutoff, so
training rows built from it never see their own future. The same state object answers live
requests, so offline and online features come from one code path.

Input frame columns (documented contract, see `EVENT_FRAME_COLUMNS`):
    user_id: str, item: int (row of the item in the bundle's item table), timestamp: datetime,
    type: str ("click", "impression", ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from features.covisitation import Covisitation
from features.item_item import DEFAULT_LAMBDA, DEFAULT_TOP, ItemItem

EVENT_FRAME_COLUMNS = ("user_id", "item", "timestamp", "type")
POSITIVE_TYPES = ("click", "purchase", "add_to_cart")

# Popularity windows. With real time they are calendar windows before the cut-off; when only
# the order of events is known (timestamps encode position in a user's sequence), a global time
# window means nothing, so the windows count each user's last N events instead ("what people
# moved on to most recently").
TIME_WINDOWS_DAYS = (1, 7, 30)
ORDER_WINDOWS_EVENTS = (1, 3, 10)

# Prior strength of the smoothed click-through rate: (clicks + a * prior) / (shown + a).
CTR_PRIOR_WEIGHT = 20.0

# An item with no event is new when the catalogue says it was created at most this long before
# the latest event the state saw (or after it): it has not had the chance to be clicked. An item
# without events that is older than that, or whose creation time is unknown, is not new: the log
# had its chance to show interest in it and shows none.
NEW_ITEM_GRACE = timedelta(days=1)


@dataclass
class BehaviourState:
    """Per-item behavioural statistics (arrays indexed by item row) and co-visitation."""

    n_items: int
    real_time: bool = True
    covis_window: int = 5
    covis_backward_weight: float = 0.25
    covis_top: int = 100
    cutoff_: datetime | None = None
    # The latest event the state was computed from: the leakage check compares it to row times.
    latest_event_: datetime | None = None
    clicks_: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    window_clicks_: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    shown_: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    ctr_: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    first_seen_s_: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    last_seen_s_: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    popular_rows_: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # per item: new to the log (no event, created after it; `NEW_ITEM_GRACE`), or added live
    new_: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    covisitation_: Covisitation | None = None
    item_item_lambda: float = DEFAULT_LAMBDA
    item_item_top: int = DEFAULT_TOP
    # None: no item-item weights (a bundle made before them); the item-item source offers nothing
    item_item_: ItemItem | None = None

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, events: pl.DataFrame, cutoff: datetime | None = None,
            created_s: np.ndarray | None = None) -> BehaviourState:
        """Compute the state from `events` strictly before `cutoff` (all events if None).
        `created_s`: each item row's creation time (epoch seconds, NaN where unknown) from the
        catalogue, which decides the items that are new (`new_`); None: no item is new."""
        missing = [c for c in EVENT_FRAME_COLUMNS if c not in events.columns]
        if missing:
            raise ValueError(f"events frame lacks columns {missing}")
        if cutoff is not None:
            events = events.filter(pl.col("timestamp") < cutoff)
        self.latest_event_ = events["timestamp"].max() if events.height else None
        self.cutoff_ = cutoff if cutoff is not None else self.latest_event_
        clicks = events.filter(pl.col("type").is_in(POSITIVE_TYPES))
        n = self.n_items

        self.clicks_ = _count_by_item(clicks, n)
        impressions = events.filter(pl.col("type") == "impression")
        self.shown_ = _count_by_item(impressions, n) + self.clicks_
        prior = float(self.clicks_.sum() / max(self.shown_.sum(), 1.0))
        self.ctr_ = ((self.clicks_ + CTR_PRIOR_WEIGHT * prior)
                     / (self.shown_ + CTR_PRIOR_WEIGHT)).astype(np.float32)
        self.window_clicks_ = np.stack([_count_by_item(w, n) for w in self._windows(clicks)],
                                       axis=1)

        seen = events.group_by("item").agg(
            pl.col("timestamp").min().alias("first"), pl.col("timestamp").max().alias("last"))
        self.first_seen_s_ = _seconds_by_item(seen, "first", n)
        self.last_seen_s_ = _seconds_by_item(seen, "last", n)

        # Popular items in order of a blend of recent and all-time clicks (ties by row, stable).
        recent = self.window_clicks_[:, -1]
        score = self.clicks_ + 2.0 * recent
        self.popular_rows_ = np.lexsort((np.arange(n), -score)).astype(np.int64)
        self.new_ = self._new_items(created_s)

        self.covisitation_ = Covisitation(
            n_items=n, window=self.covis_window, backward_weight=self.covis_backward_weight,
            top=self.covis_top).fit(clicks)
        self.item_item_ = ItemItem.fit(clicks, n, self.item_item_lambda, self.item_item_top)
        return self

    def _new_items(self, created_s: np.ndarray | None) -> np.ndarray:
        if created_s is None:
            return np.zeros(self.n_items, bool)
        created_s = np.asarray(created_s, np.float64)
        if created_s.shape != (self.n_items,):
            raise ValueError(f"created_s has shape {created_s.shape} for {self.n_items} items")
        since = (-np.inf if self.latest_event_ is None
                 else (self.latest_event_ - NEW_ITEM_GRACE).timestamp())
        with np.errstate(invalid="ignore"):
            return (self.shown_ == 0) & (created_s >= since)

    def _windows(self, clicks: pl.DataFrame) -> list[pl.DataFrame]:
        if self.real_time and self.cutoff_ is not None:
            return [clicks.filter(pl.col("timestamp") >= self.cutoff_ - timedelta(days=d))
                    for d in TIME_WINDOWS_DAYS]
        ranked = clicks.with_columns(
            pl.col("timestamp").rank("ordinal", descending=True).over("user_id").alias("_back"))
        return [ranked.filter(pl.col("_back") <= n) for n in ORDER_WINDOWS_EVENTS]

    # -- reading ------------------------------------------------------------------------------
    def item_feature_columns(self) -> np.ndarray:
        """The ranker features that depend on the item alone, [n_items, 5] float32: log1p of
        its clicks and of its clicks in each of the three windows, and its click-through rate
        where it was shown more often than clicked (NaN elsewhere).

        Made once per state and then gathered by row, instead of four log1p per candidate of
        every request. The same ufuncs on the same float32 values give
        the same bits either way. The table is remade when any array it comes from has been
        replaced (a state copied with new items gets arrays of its own)."""
        sources = (self.clicks_, self.window_clicks_, self.shown_, self.ctr_)
        cached = self.__dict__.get("_item_feature_columns")
        if cached is not None and all(a is b for a, b in zip(cached[0], sources, strict=True)):
            return cached[1]
        table = np.empty((len(self.clicks_), 5), dtype=np.float32)
        table[:, 0] = np.log1p(self.clicks_)
        for j in range(3):
            table[:, 1 + j] = np.log1p(np.ascontiguousarray(self.window_clicks_[:, j]))
        table[:, 4] = np.where(self.shown_ > self.clicks_, self.ctr_, np.nan)
        table.flags.writeable = False
        self._item_feature_columns = (sources, table)
        return table

    # -- persistence --------------------------------------------------------------------------
    def item_table(self) -> pl.DataFrame:
        """Per-item statistics as a frame (row = item row), as saved in the bundle."""
        frame = pl.DataFrame({
            "clicks": self.clicks_, "shown": self.shown_, "ctr": self.ctr_,
            "first_seen_s": self.first_seen_s_, "last_seen_s": self.last_seen_s_,
            "new": self.new_,
        })
        for j in range(self.window_clicks_.shape[1]):
            frame = frame.with_columns(pl.Series(f"clicks_w{j}", self.window_clicks_[:, j]))
        return frame.with_columns(
            pl.Series("popular_rank", np.argsort(self.popular_rows_).astype(np.int64)))

    def meta(self) -> dict:
        return {"n_items": self.n_items, "real_time": self.real_time,
                "covis_window": self.covis_window,
                "covis_backward_weight": self.covis_backward_weight,
                "covis_top": self.covis_top,
                "item_item_lambda": self.item_item_lambda,
                "item_item_top": self.item_item_top,
                "cutoff": None if self.cutoff_ is None else self.cutoff_.isoformat(),
                "latest_event": (None if self.latest_event_ is None
                                 else self.latest_event_.isoformat())}

    @classmethod
    def from_tables(cls, meta: dict, items: pl.DataFrame, covis: pl.DataFrame) -> BehaviourState:
        state = cls(n_items=int(meta["n_items"]), real_time=bool(meta["real_time"]),
                    covis_window=int(meta["covis_window"]),
                    covis_backward_weight=float(meta["covis_backward_weight"]),
                    covis_top=int(meta["covis_top"]),
                    item_item_lambda=float(meta.get("item_item_lambda", DEFAULT_LAMBDA)),
                    item_item_top=int(meta.get("item_item_top", DEFAULT_TOP)))
        if items.height != state.n_items:
            raise ValueError(f"item statistics have {items.height} rows for {state.n_items} items")
        cutoff = meta.get("cutoff")
        state.cutoff_ = None if cutoff is None else datetime.fromisoformat(cutoff)
        state.latest_event_ = (None if meta.get("latest_event") is None
                               else datetime.fromisoformat(meta["latest_event"]))
        state.clicks_ = items["clicks"].to_numpy().astype(np.float32)
        state.shown_ = items["shown"].to_numpy().astype(np.float32)
        state.ctr_ = items["ctr"].to_numpy().astype(np.float32)
        state.first_seen_s_ = items["first_seen_s"].to_numpy().astype(np.float64)
        state.last_seen_s_ = items["last_seen_s"].to_numpy().astype(np.float64)
        state.new_ = (items["new"].to_numpy().astype(bool) if "new" in items.columns
                      else np.zeros(state.n_items, bool))
        windows = sorted(c for c in items.columns if c.startswith("clicks_w"))
        state.window_clicks_ = np.stack([items[c].to_numpy() for c in windows],
                                        axis=1).astype(np.float32)
        state.popular_rows_ = np.argsort(items["popular_rank"].to_numpy(),
                                         kind="stable").astype(np.int64)
        state.covisitation_ = Covisitation.from_table(covis, n_items=state.n_items,
                                                      window=state.covis_window,
                                                      backward_weight=state.covis_backward_weight,
                                                      top=state.covis_top)
        return state

    @property
    def covisitation(self) -> Covisitation:
        if self.covisitation_ is None:
            raise RuntimeError("the behavioural state is not fitted")
        return self.covisitation_


def created_seconds(items: pl.DataFrame, item_ids: list[str] | None = None) -> np.ndarray:
    """Each item's `created_at` in epoch seconds (NaN where missing, or where the catalogue has
    no such column), in the order of `item_ids` (default: the frame's rows), for `fit`."""
    if "created_at" not in items.columns:
        return np.full(items.height if item_ids is None else len(item_ids), np.nan)
    if item_ids is not None:
        items = pl.DataFrame({"item_id": item_ids}, schema={"item_id": pl.String}).join(
            items.select("item_id", "created_at"), on="item_id", how="left",
            maintain_order="left")
    seconds = items["created_at"].dt.epoch("ms").cast(pl.Float64) / 1000.0
    return seconds.fill_null(np.nan).to_numpy()


def _count_by_item(events: pl.DataFrame, n_items: int) -> np.ndarray:
    rows = events["item"].to_numpy().astype(np.int64)
    return np.bincount(rows, minlength=n_items).astype(np.float32)[:n_items]


def _seconds_by_item(seen: pl.DataFrame, column: str, n_items: int) -> np.ndarray:
    out = np.full(n_items, np.nan, dtype=np.float64)
    if seen.height:
        seconds = seen[column].dt.epoch("ms").to_numpy().astype(np.float64) / 1000.0
        out[seen["item"].to_numpy().astype(np.int64)] = seconds
    return out
