"""Leakage guard: the ranker's training rows never use an event at or after the row's target time.

Two proofs on each protocol (time: MovieLens, leave-one-out: RecBole, impressions: MIND):
the behavioural state's inputs all lie before every row's target, and rebuilding the rows after
changing or adding events at or after the targets gives bit-identical feature values. A control
perturbation before the cut-off must change them, so the comparison is not vacuous.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from features.state import POSITIVE_TYPES
from recsys.data.dataset import Dataset, load_dataset
from recsys.index import ItemIndex
from recsys.ranking_context import RankingContext
from recsys.retrieval import RetrievalConfig
from recsys.splits import Split
from training import ranker_data
from training.pipeline import category_codes
from training.ranker_data import label_folds, label_rows, label_state

NOISE_EVENTS = 300


@pytest.fixture(scope="module")
def mind_dataset(tmp_path_factory):
    from recsys.data.importers import import_dataset
    from tests.conftest import FIXTURES

    out = tmp_path_factory.mktemp("data") / "mind"
    import_dataset("mind", FIXTURES / "mind", out)
    return out


def _context_factory(dataset: Dataset):
    """Item vectors need not be learned here: features only need *some* fixed vectors. The
    semantic source returns the whole catalogue, so every row's target is among its candidates."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(dataset.items.height, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ItemIndex("flat").fit(vectors)
    categories = category_codes(dataset.items)
    retrieval = RetrievalConfig(n_semantic=dataset.items.height, n_covisitation=30, n_popular=10)
    return lambda state: RankingContext(vectors, categories, index, state, retrieval)


def _rows(dataset: Dataset, **options) -> dict[tuple, tuple]:
    """Training rows keyed by (user, request time, item): the pipeline's own function."""
    item_ids = dataset.items["item_id"].to_list()
    data = label_rows(Split.of(dataset, item_ids), _context_factory(dataset),
                      n_items=len(item_ids), **options)
    assert data.n_groups > 0, "the fixture must yield training groups"
    rows, offset = {}, 0
    for size, case_index in zip(data.groups, data.group_cases, strict=True):
        case = data.cases[case_index]
        for r in range(offset, offset + size):
            key = (case.user_id, round(case.time, 3) if math.isfinite(case.time) else None,
                   int(data.items[r]))
            rows[key] = tuple(np.asarray(data.features.row(r), np.float32).tobytes())
        offset += size
    return rows


def _target_times(split: Split, cases) -> dict[str, float]:
    """Earliest target time of each user's label rows (epoch seconds)."""
    train = split.train_events()
    earliest: dict[str, float] = {}
    for case in cases:
        if math.isfinite(case.time):
            when = case.time
        else:   # leave-one-out: the target is the user's last training click
            user_clicks = train.filter((pl.col("user_id") == case.user_id)
                                       & pl.col("item").is_in(case.targets))
            when = user_clicks["timestamp"].max().timestamp()
        earliest[case.user_id] = min(earliest.get(case.user_id, math.inf), when)
    return earliest


def _noise(dataset: Dataset, start, end, seed: int, *, existing_users: bool) -> pl.DataFrame:
    """Clicks, impressions and ratings on random items, timed in [start, end]."""
    rng = np.random.default_rng(seed)
    items = dataset.items["item_id"].to_numpy()
    users = dataset.events["user_id"].unique().sort().to_numpy()
    span = max((end - start).total_seconds(), 1.0)
    rows = []
    for k in range(NOISE_EVENTS):
        user = str(rng.choice(users)) if existing_users else f"zz-noise-{k % 7}"
        kind = ("click", "impression", "rating")[k % 3] if existing_users else "click"
        rows.append({"event_id": f"noise-{seed}-{k}", "user_id": user,
                     "item_id": str(rng.choice(items)),
                     "timestamp": start + timedelta(seconds=float(rng.uniform(0, span))),
                     "type": kind})
    noise = pl.DataFrame(rows, schema={"event_id": pl.String, "user_id": pl.String,
                                       "item_id": pl.String,
                                       "timestamp": pl.Datetime("us", "UTC"), "type": pl.String})
    return pl.concat([dataset.events, noise], how="diagonal_relaxed")


@pytest.fixture(scope="module", params=["movielens", "recbole", "mind"])
def dataset(request) -> Dataset:
    path = {"movielens": "movielens_dataset", "recbole": "recbole_dataset",
            "mind": "mind_dataset"}[request.param]
    return load_dataset(request.getfixturevalue(path))


def test_state_inputs_lie_before_every_row_target(dataset):
    item_ids = dataset.items["item_id"].to_list()
    split = Split.of(dataset, item_ids)
    state_events, cases = split.label_cases()
    state, same_cases = label_state(split, len(item_ids))
    assert len(cases) == len(same_cases) > 0
    targets = _target_times(split, cases)
    if dataset.has_real_time and split.protocol != "leave_one_out":
        # one shared state: everything it read is before the earliest row's target
        assert state.latest_event_.timestamp() < min(targets.values())
        assert state.cutoff_.timestamp() <= min(targets.values())
    else:
        # order-only time is per user: each user's state events precede their own target
        latest = state_events.group_by("user_id").agg(pl.col("timestamp").max())
        for user, last in latest.iter_rows():
            if user in targets:
                assert last.timestamp() < targets[user], user
        assert not state_events.filter(pl.col("split").is_in(["valid", "test"])).height
    for case in cases:   # and each row's history ends before its own target
        if math.isfinite(case.time):
            assert not case.history or case.last_time < case.time
        assert not set(case.targets) & set(case.history) or split.protocol == "impressions"


def test_events_at_or_after_the_target_do_not_change_training_rows(dataset):
    item_ids = dataset.items["item_id"].to_list()
    split = Split.of(dataset, item_ids)
    _, cases = split.label_cases()
    before = _rows(dataset)

    if split.protocol == "leave_one_out":
        # rewrite everything after each user's label click: the valid and test events
        later = pl.col("split").is_in(["valid", "test"])
        shuffled = dataset.events.filter(later)["item_id"].shuffle(seed=3)
        events = pl.concat([dataset.events.filter(~later),
                            dataset.events.filter(later).with_columns(shuffled.alias("item_id"))])
        changed = replace(dataset, events=events)
    else:
        # the earliest row target; new users' clicks and existing users' impressions and
        # ratings from there on (new users only add rows of their own)
        start = min(c.time for c in cases)
        start = split.events["timestamp"].min().__class__.fromtimestamp(
            start, tz=split.valid_start.tzinfo)
        clicks_end = split.events.filter(pl.col("type") == "click")["timestamp"].max()
        events = _noise(dataset, start, clicks_end, 1, existing_users=False)
        others = _noise(replace(dataset, events=events), start, clicks_end, 2,
                        existing_users=True)
        # existing users' extra clicks would change their own later targets: keep only the
        # non-click kinds for them
        changed = replace(dataset, events=others.filter(
            ~(pl.col("event_id").str.starts_with("noise-2-") & (pl.col("type") == "click"))))
    after = _rows(changed)
    common = [k for k in before if k in after]
    assert len(common) == len(before), "the perturbation must not remove original rows"
    assert all(before[k] == after[k] for k in common)


def test_control_events_before_the_cutoff_do_change_rows(dataset):
    """The same comparison notices a change in the past, so the test above can fail."""
    item_ids = dataset.items["item_id"].to_list()
    split = Split.of(dataset, item_ids)
    state_events, _ = split.label_cases()
    before = _rows(dataset)
    first, last = state_events["timestamp"].min(), state_events["timestamp"].max()
    events = _noise(dataset, first, last, 5, existing_users=False)
    if "split" in events.columns:
        events = events.with_columns(pl.col("split").fill_null("train"))
    after = _rows(replace(dataset, events=events))
    common = [k for k in before if k in after]
    assert common and any(before[k] != after[k] for k in common)


def test_more_label_clicks_per_user_keep_every_label_out_of_the_state(recbole_dataset):
    """`label_clicks=2`: each user's last two training clicks (never the first) are cases,
    each with exactly the clicks before it as its history, and the state sees neither."""
    dataset = load_dataset(recbole_dataset)
    split = Split.of(dataset, dataset.items["item_id"].to_list())
    _, one = split.label_cases(1)
    state, two = split.label_cases(2)

    def clicks_per_user(events):
        clicks = events.filter(pl.col("type").is_in(POSITIVE_TYPES))
        return {u: [int(i) for i in items] for u, items in
                clicks.group_by("user_id", maintain_order=True).agg("item").iter_rows()}

    per_user = clicks_per_user(split.train_events())
    expected = [(u, items[:j], items[j]) for u, items in sorted(per_user.items())
                for j in range(max(1, len(items) - 2), len(items))]
    assert [(c.user_id, c.history, c.targets[0]) for c in two] == expected
    assert [(c.user_id, c.history, c.targets[0]) for c in one] == \
        [e for e in expected if len(e[1]) == len(per_user[e[0]]) - 1]
    assert len(two) > len(one)
    labels_of = Counter(c.user_id for c in two)
    kept = clicks_per_user(state)
    for user, items in per_user.items():
        assert kept.get(user, []) == items[:len(items) - labels_of[user]], user


def test_label_clicks_below_one_is_refused(recbole_dataset):
    dataset = load_dataset(recbole_dataset)
    split = Split.of(dataset, dataset.items["item_id"].to_list())
    with pytest.raises(ValueError, match="label_clicks"):
        split.label_cases(0)


def test_label_folds_keep_each_users_labels_out_of_their_own_state_only(recbole_dataset,
                                                                        monkeypatch):
    """`folds=3`: the label cases are `label_cases`' cases, in three disjoint groups of users;
    each group's state lacks the label clicks of its own users and keeps everyone else's."""
    monkeypatch.setattr(ranker_data, "MIN_USERS_PER_FOLD", 1)   # the fixture has few users
    dataset = load_dataset(recbole_dataset)
    item_ids = dataset.items["item_id"].to_list()
    split = Split.of(dataset, item_ids)
    state_events, cases = split.label_cases(2)
    folds = label_folds(split, len(item_ids), 2, 3, seed=0)
    assert len(folds) == 3 and all(fold_cases for _, fold_cases in folds)
    key = lambda c: (c.user_id, tuple(c.history), tuple(c.targets))  # noqa: E731
    assert sorted(key(c) for _, fc in folds for c in fc) == sorted(key(c) for c in cases)
    users = [{c.user_id for c in fold_cases} for _, fold_cases in folds]
    assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])

    train = split.train_events().filter(pl.col("type").is_in(POSITIVE_TYPES))
    labels = train.join(state_events.select("event_id"), on="event_id", how="anti")
    assert labels.height == len(cases)
    for (state, _), members in zip(folds, users, strict=True):
        own = labels.filter(pl.col("user_id").is_in(pl.Series(sorted(members)).implode()))
        seen = train.join(own.select("event_id"), on="event_id", how="anti")
        expected = np.bincount(seen["item"].to_numpy(), minlength=len(item_ids))
        assert np.array_equal(state.clicks_, expected)
        assert seen.height > state_events.filter(pl.col("type").is_in(POSITIVE_TYPES)).height


def test_folded_label_rows_ignore_what_follows_each_users_labels(recbole_dataset, monkeypatch):
    """Rewriting the valid and test events leaves the folded rows bit-identical; adding clicks
    before the labels changes them (the control)."""
    monkeypatch.setattr(ranker_data, "MIN_USERS_PER_FOLD", 1)
    dataset = load_dataset(recbole_dataset)
    before = _rows(dataset, folds=2, label_clicks=2)
    later = pl.col("split").is_in(["valid", "test"])
    shuffled = dataset.events.filter(later)["item_id"].shuffle(seed=3)
    changed = replace(dataset, events=pl.concat([
        dataset.events.filter(~later),
        dataset.events.filter(later).with_columns(shuffled.alias("item_id"))]))
    after = _rows(changed, folds=2, label_clicks=2)
    assert before.keys() == after.keys() and all(before[k] == after[k] for k in before)

    split = Split.of(dataset, dataset.items["item_id"].to_list())
    state_events, _ = split.label_cases(2)
    events = _noise(dataset, state_events["timestamp"].min(), state_events["timestamp"].max(), 5,
                    existing_users=False).with_columns(pl.col("split").fill_null("train"))
    control = _rows(replace(dataset, events=events), folds=2, label_clicks=2)
    common = [k for k in before if k in control]
    assert common and any(before[k] != control[k] for k in common)


def test_a_small_log_keeps_one_label_group(recbole_dataset):
    """Below `MIN_USERS_PER_FOLD` label users per group there are fewer groups: the fixture's
    few dozen users get one, the state `label_state` gives."""
    dataset = load_dataset(recbole_dataset)
    item_ids = dataset.items["item_id"].to_list()
    split = Split.of(dataset, item_ids)
    users = {c.user_id for c in split.label_cases(2)[1]}
    assert len(users) < 2 * ranker_data.MIN_USERS_PER_FOLD
    (state, cases), = label_folds(split, len(item_ids), 2, 4)
    expected, same = label_state(split, len(item_ids), 2)
    assert len(cases) == len(same) and np.array_equal(state.clicks_, expected.clicks_)
