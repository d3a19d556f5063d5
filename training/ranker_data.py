"""Ranker training data: one group per query, its candidates labelled by what was clicked next."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime

import numpy as np
import polars as pl

from features.build import Candidates
from features.state import BehaviourState
from recsys.ranking import RankingContext
from recsys.splits import Case, Split

CHUNK = 1000


@dataclass
class RankerData:
    features: pl.DataFrame
    labels: np.ndarray
    groups: list[int]          # rows per group, in order
    n_cases: int               # queries offered
    n_groups: int              # queries kept (at least one positive among the candidates)
    items: np.ndarray | None = None        # item row of each feature row
    group_cases: list[int] | None = None   # index of each kept group's case in `cases`
    cases: list[Case] | None = None        # the cases offered (after sampling), in order

    @property
    def candidate_recall(self) -> float:
        return self.n_groups / max(self.n_cases, 1)


def build_groups(context: RankingContext, cases: Sequence[Case], *, max_cases: int | None = None,
                 seed: int = 0, on_offer: np.ndarray | None = None,
                 progress=None) -> RankerData:
    """Retrieve candidates for every case (or take its logged impression list) and label them.

    Groups whose candidates miss every target are dropped: they carry no ranking signal.
    `on_offer` (a mask over item rows): candidates outside it are left out, not counted as
    negatives (`items_on_offer`). `progress` (a bar) gets these cases added to its total and
    advances per case.
    """
    cases = list(cases)
    if max_cases is not None and len(cases) > max_cases:
        keep = np.random.default_rng(seed).choice(len(cases), max_cases, replace=False)
        cases = [cases[i] for i in sorted(keep)]
    frames, labels, groups, items, group_cases = [], [], [], [], []
    if progress is not None:
        progress.total = (progress.total or 0) + len(cases)
        progress.refresh()
    for start in range(0, len(cases), CHUNK):
        chunk = cases[start:start + CHUNK]
        requests = context.requests([c.history for c in chunk],
                                    np.array([c.time for c in chunk]),
                                    np.array([c.last_time for c in chunk]))
        given = [c.shown for c in chunk] if all(c.shown is not None for c in chunk) else None
        candidates, rows = context.rows(requests, given=given)
        if on_offer is not None and given is None:
            offered = on_offer[candidates.item]
            candidates = Candidates(*(getattr(candidates, f.name)[offered]
                                      for f in fields(Candidates)))
            rows = rows.filter(pl.Series(offered))
        is_target = candidates.hits([c.targets for c in chunk]).astype(np.float32)
        order = np.argsort(candidates.request, kind="stable")
        sizes = np.bincount(candidates.request, minlength=len(chunk))
        positives = np.bincount(candidates.request, weights=is_target, minlength=len(chunk))
        keep_group = (positives > 0) & (positives < sizes)
        keep_row = keep_group[candidates.request[order]]
        frames.append(rows[order[keep_row]])
        labels.append(is_target[order][keep_row])
        items.append(candidates.item[order][keep_row])
        groups.extend(int(s) for s in sizes[keep_group])
        group_cases.extend(start + int(j) for j in np.flatnonzero(keep_group))
        if progress is not None:
            progress.update(len(chunk))
    features = pl.concat(frames) if frames else pl.DataFrame()
    return RankerData(features, np.concatenate(labels) if labels else np.zeros(0, np.float32),
                      groups, len(cases), len(groups),
                      items=np.concatenate(items) if items else np.zeros(0, np.int64),
                      group_cases=group_cases, cases=cases)


def items_on_offer(events: pl.DataFrame, n_items: int) -> np.ndarray:
    """Which item rows have an event in `events`: those the users could have met then.

    An item no event touches was, as far as the data can tell, not on offer then (not listed
    yet): the ranker must not learn from it as a candidate nobody clicked, or it learns that
    items without history are never clicked, and those are exactly the new items it will be
    asked to rank (an item held out by `recsys dataset hold-out-items` is such an item).
    """
    offered = np.zeros(n_items, dtype=bool)
    offered[events["item"].to_numpy().astype(np.int64)] = True
    return offered


def seen_before_test(split: Split) -> pl.DataFrame:
    """The events before the test part: what the valid rows' candidates could have had."""
    if split.protocol == "leave_one_out":
        return split.events.filter(pl.col("split").is_in(["train", "valid"]))
    return split.events.filter(pl.col("timestamp") < split.test_start)


def label_state(split: Split, n_items: int, *, new_items: bool = True,
                seed: int = 0) -> tuple[BehaviourState, list[Case]]:
    """The behavioural state the ranker's training rows are built from, and their cases.

    The state sees only events before the label window (time protocols) or before each user's
    label click (leave-one-out), so no training row's features use its own target or later.
    With `new_items`, some items are made new in it (`simulate_new_items`).
    """
    state_events, cases = split.label_cases()
    if new_items and split.protocol != "impressions":
        state_events = state_events.filter(~pl.col("item").is_in(
            simulate_new_items(state_events, n_items, seed).tolist()))
    real_time = split.dataset.has_real_time
    cutoff = None
    if real_time and split.valid_start is not None:
        # windows are measured back from where the label window starts
        times = [c.time for c in cases if math.isfinite(c.time)]
        cutoff = (datetime.fromtimestamp(min(times), tz=UTC) if times
                  else split.valid_start)
    state = BehaviourState(n_items=n_items, real_time=real_time).fit(state_events, cutoff=cutoff)
    return state, cases


def simulate_new_items(state_events: pl.DataFrame, n_items: int, seed: int = 0) -> np.ndarray:
    """Item rows to make new in the ranker's label state: the same share of the items that have
    events there as the catalogue has items without any (seeded).

    Why: the ranker learns from its label rows what a candidate's click history is worth. An item
    new to the engine (held out, or added through PUT /items) has none; if every item without
    history in the label rows is also never clicked there, the ranker learns "no clicks, no
    click" and buries every new item under popular ones. Removing some clicked items' history
    from the label state (their label clicks stay) gives it cases like the cold ones, as many as
    the catalogue's own share of new items suggests. Not for impression lists: those already
    show new items with their real clicks.
    """
    with_events = np.unique(state_events["item"].to_numpy().astype(np.int64))
    share = 1.0 - with_events.size / max(n_items, 1)
    count = int(round(share * with_events.size))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(with_events, count, replace=False))


def label_rows(split: Split, context_for: Callable[[BehaviourState], RankingContext], *,
               n_items: int, max_cases: int | None = None, seed: int = 0,
               new_items: bool = True, progress=None) -> RankerData:
    """The ranker's training rows: label cases carved from the end of the training part."""
    state, cases = label_state(split, n_items, new_items=new_items, seed=seed)
    on_offer = items_on_offer(split.train_events(), n_items) if new_items else None
    return build_groups(context_for(state), cases, max_cases=max_cases, seed=seed,
                        on_offer=on_offer, progress=progress)
