"""Evaluation splits and the cases (queries) they produce, for the three protocols.

- leave_one_out: per user, the last click is test and the one before is valid (or the split the
  importer recorded, e.g. RecBole/UniSRec files); history = everything before the target.
- time: test = the last 10% of the time span, valid = the 10% before it. Every click inside the
  window is replayed as one case (clicks in the same second are one case with several targets):
  history = the user's clicks before it, including earlier clicks inside the window, as a live
  engine ingesting events has them; the behavioural state stays at the window's start. Users
  new in the window are thus cold on their first click only (MovieLens users mostly arrive,
  rate and leave within the last 10% of time, so a "history before the window" would leave
  almost every test user cold).
- impressions: logged impression lists split by time the same way; each list is one case whose
  shown items are ranked and whose clicked items are the targets.

The training part is always what lies before valid; the ranker's own labels are carved from the
end of the training part (`label_cases`), with state computed strictly before them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from features.state import POSITIVE_TYPES
from recsys.data.dataset import Dataset
from recsys.errors import DataError

VALID_FRACTION = 0.1
TEST_FRACTION = 0.1
# Share of the training span (time protocols) used as ranker labels.
LABEL_FRACTION = {"time": 0.1, "impressions": 0.5}


@dataclass
class Case:
    """One query: a user's history up to a moment, and what they clicked next."""

    user_id: str
    history: list[int]               # item rows of positive events, oldest first
    last_time: float                 # epoch seconds of the last history event (NaN unknown)
    time: float                      # request time, epoch seconds (NaN when order-only)
    targets: list[int]               # item rows clicked next
    shown: list[int] | None = None   # the logged impression list, when there is one


def with_item_rows(events: pl.DataFrame, item_ids: list[str]) -> pl.DataFrame:
    """Add `item` (row in the bundle's item table); events for unknown items are dropped."""
    rows = pl.DataFrame({"item_id": item_ids, "item": np.arange(len(item_ids), dtype=np.int32)})
    return events.join(rows, on="item_id", how="inner")


def epoch_seconds(ts: datetime | None) -> float:
    return math.nan if ts is None else ts.timestamp()


@dataclass
class Split:
    dataset: Dataset
    events: pl.DataFrame             # all events with `item` rows, sorted by user and time
    protocol: str
    valid_start: datetime | None = None
    test_start: datetime | None = None

    @classmethod
    def of(cls, dataset: Dataset, item_ids: list[str]) -> Split:
        events = with_item_rows(dataset.events, item_ids).sort(
            ["user_id", "timestamp", "event_id"], maintain_order=True)
        split = cls(dataset, events, dataset.protocol)
        if split.protocol == "leave_one_out":
            split.events = _leave_one_out_labels(events)
        else:
            clicks = events.filter(pl.col("type").is_in(POSITIVE_TYPES))
            if clicks.height == 0:
                raise DataError("no click events: nothing to learn or evaluate",
                                file=str(dataset.path), column="type")
            start, end = clicks["timestamp"].min(), clicks["timestamp"].max()
            span = end - start
            split.valid_start = start + span * (1 - VALID_FRACTION - TEST_FRACTION)
            split.test_start = start + span * (1 - TEST_FRACTION)
        return split

    # -- parts ------------------------------------------------------------------------------
    def train_events(self) -> pl.DataFrame:
        if self.protocol == "leave_one_out":
            return self.events.filter(pl.col("split") == "train")
        return self.events.filter(pl.col("timestamp") < self.valid_start)

    def events_before_test(self) -> pl.DataFrame:
        """Every event before the test part: the training and valid parts, which an engine
        ingesting its events has seen by the time the test clicks happen."""
        if self.protocol == "leave_one_out":
            return self.events.filter(pl.col("split").is_in(["train", "valid"]))
        return self.events.filter(pl.col("timestamp") < self.test_start)

    def time_range(self) -> dict:
        train = self.train_events()
        return {"train_events": train.height,
                "train_start": str(train["timestamp"].min()),
                "train_end": str(train["timestamp"].max()),
                "valid_start": str(self.valid_start), "test_start": str(self.test_start)}

    def cases(self, split: str) -> list[Case]:
        """Evaluation cases of `split` ("valid" or "test")."""
        if split not in ("valid", "test"):
            raise ValueError(f"split must be valid or test, got {split!r}")
        if self.protocol == "leave_one_out":
            before = ["train"] if split == "valid" else ["train", "valid"]
            return _target_cases(self.events, before, split)
        start, end = ((self.valid_start, self.test_start) if split == "valid"
                      else (self.test_start, None))
        return self._window_cases(self.events, start, end)

    def label_cases(self, label_clicks: int = 1) -> tuple[pl.DataFrame, list[Case]]:
        """(events the ranker's state may use, the cases it learns from), both inside train.

        Leave-one-out: each user's last `label_clicks` training clicks are labels (each with
        the clicks before it as its history, and never a user's first click), and the state
        sees none of them. More than one per user gives the ranker more groups to learn from,
        for a state that knows a little less."""
        train = self.train_events()
        if self.protocol == "leave_one_out":
            if label_clicks < 1:
                raise ValueError(f"label_clicks must be at least 1, got {label_clicks}")
            label_ids, cases = _last_click_cases(train, label_clicks)
            labels = pl.Series(label_ids, dtype=pl.String)
            state_events = train.filter(~pl.col("event_id").cast(pl.String).is_in(labels.implode()))
            return state_events, cases
        start = train["timestamp"].min()
        label_start = start + (self.valid_start - start) * (1 - LABEL_FRACTION[self.protocol])
        state_events = train.filter(pl.col("timestamp") < label_start)
        return state_events, self._window_cases(train, label_start, self.valid_start)

    def _window_cases(self, events: pl.DataFrame, start, end) -> list[Case]:
        in_window = pl.col("timestamp") >= start
        if end is not None:
            in_window &= pl.col("timestamp") < end
        if self.protocol == "impressions":
            return _impression_cases(events, in_window)
        return _period_cases(events, start, in_window)


def _leave_one_out_labels(events: pl.DataFrame) -> pl.DataFrame:
    """Keep the importer's split column, or mark each user's last click test, the one before
    valid."""
    if "split" in events.columns and events["split"].null_count() < events.height:
        return events.with_columns(pl.col("split").fill_null("train"))
    clicks_back = (pl.when(pl.col("type").is_in(POSITIVE_TYPES)).then(1).otherwise(0)
                   .cum_sum(reverse=True).over("user_id"))
    return events.with_columns(clicks_back.alias("_back")).with_columns(
        pl.when(pl.col("type").is_in(POSITIVE_TYPES) & (pl.col("_back") == 1)).then(pl.lit("test"))
        .when(pl.col("type").is_in(POSITIVE_TYPES) & (pl.col("_back") == 2)).then(pl.lit("valid"))
        .when(pl.col("_back") >= 2).then(pl.lit("train"))
        .otherwise(pl.lit("after")).alias("split")).drop("_back")


def _last_click_cases(train: pl.DataFrame, label_clicks: int) -> tuple[list[str], list[Case]]:
    """Each user's last `label_clicks` clicks (after their first) as cases, by user then time,
    and the event ids of those clicks."""
    clicks = train.filter(pl.col("type").is_in(POSITIVE_TYPES))
    per_user = (clicks.group_by("user_id", maintain_order=True)
                .agg("item", pl.col("event_id").cast(pl.String), "timestamp").sort("user_id"))
    label_ids, cases = [], []
    for user, items, ids, stamps in per_user.iter_rows():
        for j in range(max(1, len(items) - label_clicks), len(items)):
            known = [t for t in stamps[:j] if t is not None]
            label_ids.append(ids[j])
            cases.append(Case(user, [int(i) for i in items[:j]],
                              epoch_seconds(max(known) if known else None), math.nan,
                              [int(items[j])]))
    return label_ids, cases


def _target_cases(events: pl.DataFrame, history_splits: list[str], target_split: str) -> list[Case]:
    clicks = events.filter(pl.col("type").is_in(POSITIVE_TYPES))
    targets = clicks.filter(pl.col("split") == target_split).select("user_id", "item")
    history = (clicks.filter(pl.col("split").is_in(history_splits))
               .group_by("user_id", maintain_order=True)
               .agg(pl.col("item"), pl.col("timestamp").max().alias("last")))
    joined = targets.join(history, on="user_id", how="left", suffix="_h").sort("user_id")
    return [Case(user, list(hist or []), epoch_seconds(last), math.nan, [int(target)])
            for user, target, hist, last
            in joined.select("user_id", "item", "item_h", "last").iter_rows()]


def _period_cases(events: pl.DataFrame, start, in_window: pl.Expr) -> list[Case]:
    """One case per (user, second) with clicks in the window; history = the user's clicks before."""
    clicks = (events.filter(pl.col("type").is_in(POSITIVE_TYPES))
              .select("user_id", "item", "timestamp", in_window.alias("_in"))
              .sort(["user_id", "timestamp"], maintain_order=True))
    active = clicks.filter(pl.col("_in"))["user_id"].unique().implode()
    cases = []
    per_user = (clicks.filter(pl.col("user_id").is_in(active))
                .group_by("user_id", maintain_order=True)
                .agg("item", "timestamp", "_in").sort("user_id"))
    for user, items, stamps, inside in per_user.iter_rows():
        seconds = np.array([epoch_seconds(t) for t in stamps], dtype=np.float64)
        items = [int(i) for i in items]
        inside = np.asarray(inside, dtype=bool)
        for when in np.unique(seconds[inside]):
            before = int(np.searchsorted(seconds, when, side="left"))
            now = (seconds == when) & inside
            history = items[:before]
            seen = set(history)
            fresh = list(dict.fromkeys(i for i, hit in zip(items, now, strict=True)
                                       if hit and i not in seen))
            if fresh:
                cases.append(Case(user, history, float(seconds[before - 1]) if before else math.nan,
                                  float(when), fresh))
    return cases


def _impression_cases(events: pl.DataFrame, in_window: pl.Expr) -> list[Case]:
    """One case per logged impression list with a click and a non-click; history = the user's
    clicks strictly before the impression's time."""
    seconds = pl.col("timestamp").dt.epoch("us").cast(pl.Float64) / 1e6
    logged = events.filter(pl.col("request_id").is_not_null() & in_window)
    lists = (logged.group_by("request_id", maintain_order=True)
             .agg(pl.col("user_id").first(), seconds.min().alias("time"),
                  pl.col("item").alias("shown"),
                  pl.col("item").filter(pl.col("type").is_in(POSITIVE_TYPES)).alias("clicked"))
             .filter(pl.col("clicked").list.len() > 0)
             .filter(pl.col("shown").list.len() > pl.col("clicked").list.len())
             .sort("time", "request_id"))
    clicks = (events.filter(pl.col("type").is_in(POSITIVE_TYPES))
              .select("user_id", "item", seconds.alias("t"))
              .sort(["user_id", "t"], maintain_order=True))
    by_user: dict[str, tuple[np.ndarray, np.ndarray]] = {
        user: (np.asarray(items, dtype=np.int64), np.asarray(stamps, dtype=np.float64))
        for user, items, stamps in clicks.group_by("user_id", maintain_order=True)
        .agg("item", "t").iter_rows()}
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float64))
    cases = []
    for _, user, when, shown, clicked in lists.iter_rows():
        items, stamps = by_user.get(user, empty)
        before = int(np.searchsorted(stamps, when, side="left"))
        cases.append(Case(user, [int(i) for i in items[:before]],
                          float(stamps[before - 1]) if before else math.nan, float(when),
                          [int(c) for c in clicked], [int(s) for s in shown]))
    return cases
