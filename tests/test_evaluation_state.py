"""The behaviour state `recsys evaluate` ranks with: the bundle's for valid, and for test every
event before the test part, as an engine that ingests its events would have it."""

from __future__ import annotations

import polars as pl

from features.state import POSITIVE_TYPES
from recsys.data.dataset import load_dataset
from recsys.evaluate import evaluation_context
from recsys.splits import Split


def test_leave_one_out_test_ranks_with_the_valid_clicks_ingested(recommender, recbole_dataset):
    split = Split.of(load_dataset(recbole_dataset), recommender.item_ids)
    assert split.protocol == "leave_one_out"
    assert evaluation_context(recommender, split, "valid").state is recommender.state

    state = evaluation_context(recommender, split, "test").state
    clicks = split.events.filter(pl.col("type").is_in(POSITIVE_TYPES))
    by_part = dict(clicks.group_by("split").len().iter_rows())
    assert recommender.state.clicks_.sum() == by_part["train"]
    assert state.clicks_.sum() == by_part["train"] + by_part["valid"]

    # each user's valid click follows their last training click: that pair is co-visited now
    last_train = (clicks.filter(pl.col("split") == "train").group_by("user_id")
                  .agg(pl.col("item").last().alias("before")))
    valid = clicks.filter(pl.col("split") == "valid").join(last_train, on="user_id")
    before, after = valid["before"].to_numpy(), valid["item"].to_numpy()
    now = state.covisitation.pair_values(before, after)
    then = recommender.state.covisitation.pair_values(before, after)
    assert (now >= then).all() and (now > then).any()
    # the test clicks themselves stay unseen
    test_items = set(clicks.filter(pl.col("split") == "test")["item"].to_list())
    only_in_test = sorted(test_items - set(clicks.filter(pl.col("split") != "test")["item"]))
    assert all(state.clicks_[i] == 0 for i in only_in_test)


def test_time_split_test_state_stops_at_the_test_window(movielens_dataset, tmp_path):
    from recsys.recommender import Recommender
    from training.pipeline import train

    bundle = train(movielens_dataset, tmp_path / "models", version="v1", log=lambda _: None)
    recommender = Recommender.load(bundle)
    split = Split.of(load_dataset(movielens_dataset), recommender.item_ids)
    state = evaluation_context(recommender, split, "test").state
    clicks = split.events.filter(pl.col("type").is_in(POSITIVE_TYPES))
    assert state.clicks_.sum() == clicks.filter(pl.col("timestamp") < split.test_start).height
    assert state.clicks_.sum() > recommender.state.clicks_.sum()
