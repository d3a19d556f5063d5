"""Ranker training data: one group per query, its candidates labelled by what was clicked next."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl

from features.state import BehaviourState
from recsys.ranking_context import RankingContext
from recsys.splits import Case, Split

CHUNK = 1000
MIN_USERS_PER_FOLD = 100   # label_folds: fewer label users than this per group -> fewer groups


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
                 seed: int = 0, progress=None) -> RankerData:
    """Retrieve candidates for every case (or take its logged impression list) and label them.

    Groups whose candidates miss every target are dropped: they carry no ranking signal.
    `progress` (a bar) gets these cases added to its total and advances per case.
    """
    cases = _sample(cases, max_cases, seed)
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


def label_state(split: Split, n_items: int,
                label_clicks: int = 1) -> tuple[BehaviourState, list[Case]]:
    """The behavioural state the ranker's training rows are built from, and their cases.

    The state sees only events before the label window (time protocols) or before each user's
    label click (leave-one-out), so no training row's features use its own target or later.
    """
    state_events, cases = split.label_cases(label_clicks)
    real_time = split.dataset.has_real_time
    cutoff = None
    if real_time and split.valid_start is not None:
        # windows are measured back from where the label window starts
        times = [c.time for c in cases if math.isfinite(c.time)]
        cutoff = (datetime.fromtimestamp(min(times), tz=UTC) if times
                  else split.valid_start)
    state = BehaviourState(n_items=n_items, real_time=real_time).fit(state_events, cutoff=cutoff)
    return state, cases


def label_rows(split: Split, context_for: Callable[[BehaviourState], RankingContext], *,
               n_items: int, max_cases: int | None = None, seed: int = 0,
               label_clicks: int = 1, folds: int = 1, progress=None) -> RankerData:
    """The ranker's training rows: label cases carved from the end of the training part."""
    if folds <= 1 or split.protocol != "leave_one_out":
        state, cases = label_state(split, n_items, label_clicks)
        return build_groups(context_for(state), cases, max_cases=max_cases, seed=seed,
                            progress=progress)
    return _concat([build_groups(context_for(state), cases, progress=progress)
                    for state, cases in label_folds(split, n_items, label_clicks, folds,
                                                    max_cases=max_cases, seed=seed)])


def label_folds(split: Split, n_items: int, label_clicks: int, folds: int, *,
                max_cases: int | None = None, seed: int = 0,
                ) -> list[tuple[BehaviourState, list[Case]]]:
    """Leave-one-out label cases in `folds` seeded groups of users, each with a state that lacks
    the label clicks of its own users only.

    A test case's state lacks one click per user (their test click); `label_state`'s lacks every
    user's label clicks, so the ranker learns from features of a sparser log than it will rank
    with. Here each user's rows still never see their own label clicks, but every other fold's
    are in the state: closer to the state at test time, for one state fit per fold. With fewer
    than `MIN_USERS_PER_FOLD` label users per group, fewer groups (one for a small log)."""
    state_events, cases = split.label_cases(label_clicks)
    cases = _sample(cases, max_cases, seed)
    train = split.train_events()
    labels = train.join(state_events.select("event_id"), on="event_id", how="anti")
    users = sorted({c.user_id for c in cases})
    # measured on thousands of users; a small log keeps one group, as before the folds existed
    folds = max(1, min(folds, len(users) // MIN_USERS_PER_FOLD))
    fold_of = dict(zip(users, np.random.default_rng(seed).permutation(len(users)) % folds,
                       strict=True))
    out = []
    for fold in range(folds):
        members = pl.Series([u for u in users if fold_of[u] == fold], dtype=pl.String)
        own = labels.filter(pl.col("user_id").is_in(members.implode()))
        events = train.join(own.select("event_id"), on="event_id", how="anti")
        state = BehaviourState(n_items=n_items, real_time=split.dataset.has_real_time).fit(events)
        out.append((state, [c for c in cases if fold_of[c.user_id] == fold]))
    return out


def _sample(cases: list[Case], max_cases: int | None, seed: int) -> list[Case]:
    if max_cases is not None and len(cases) > max_cases:
        keep = np.random.default_rng(seed).choice(len(cases), max_cases, replace=False)
        return [cases[i] for i in sorted(keep)]
    return list(cases)


def _concat(parts: list[RankerData]) -> RankerData:
    group_cases, offset = [], 0
    for part in parts:
        group_cases.extend(offset + g for g in part.group_cases)
        offset += part.n_cases
    frames = [p.features for p in parts if p.features.height]
    return RankerData(pl.concat(frames) if frames else pl.DataFrame(),
                      np.concatenate([p.labels for p in parts]),
                      [g for p in parts for g in p.groups], sum(p.n_cases for p in parts),
                      sum(p.n_groups for p in parts),
                      items=np.concatenate([p.items for p in parts]), group_cases=group_cases,
                      cases=[c for p in parts for c in p.cases])
