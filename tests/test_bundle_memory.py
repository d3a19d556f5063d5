"""A loaded bundle keeps its per-user data in arrays, not in one Python object per history item:
pymalloc cannot hand back an arena while any object in it lives, and with hundreds of thousands
of small objects per bundle every model swap left memory pinned (reliability row 25)."""

from __future__ import annotations

import copy
import gc
import math

import polars as pl
import pytest

from recsys.bundle_files import UserHistories
from recsys.errors import BundleError
from recsys.recommender import History, Recommender


def reference_histories(frame: pl.DataFrame) -> dict[str, History]:
    """How a bundle's users were read before: a dict of History objects."""
    return {user: History(list(rows), float(last) if last is not None else float("nan"))
            for user, rows, last in frame.iter_rows()}


def same_history(a: History, b: History) -> bool:
    return a.items == b.items and (a.last_time == b.last_time
                                   or (math.isnan(a.last_time) and math.isnan(b.last_time)))


@pytest.fixture(scope="module")
def users_frame(models_dir) -> pl.DataFrame:
    return pl.read_parquet(models_dir / "v1" / "features" / "users.parquet")


def test_loaded_users_are_arrays_with_the_same_histories(models_dir, users_frame):
    recommender = Recommender.load(models_dir)
    assert isinstance(recommender.users, UserHistories)
    reference = reference_histories(users_frame)
    assert list(recommender.users) == list(reference) and len(recommender.users) == len(reference)
    for user, history in reference.items():
        assert user in recommender.users
        assert same_history(recommender.users[user], history)
        assert same_history(recommender.users.get(user), history)
    assert recommender.users.get("no such user") is None
    assert "no such user" not in recommender.users
    with pytest.raises(KeyError):
        recommender.users["no such user"]


def test_reading_users_makes_no_object_per_user():
    n = 5000
    frame = pl.DataFrame({
        "user_id": [f"user{u}" for u in range(n)],
        "items": pl.Series([list(range(u % 30)) for u in range(n)], dtype=pl.List(pl.Int32)),
        "last_time": [float(u) for u in range(n)]})
    gc.collect()
    before = len(gc.get_objects())
    users = UserHistories.from_frame(frame)
    made = len(gc.get_objects()) - before
    assert len(users) == n and users["user7"] == History(list(range(7)), 7.0)
    assert made < 50, f"{made} tracked objects for {n} users"  # a dict of Histories made 2n


def test_recommendations_are_the_same_as_with_a_dict_of_histories(models_dir, users_frame):
    loaded = Recommender.load(models_dir)
    as_dict = copy.copy(loaded)
    as_dict.users = reference_histories(users_frame)
    users = sorted(loaded.users)[:40] + ["no such user"]
    for ours, theirs in zip(loaded.recommend(users, 10), as_dict.recommend(users, 10), strict=True):
        assert ours.item_ids == theirs.item_ids
        assert ours.scores == theirs.scores
    assert loaded.live_history(users[0], []).items == as_dict.live_history(users[0], []).items


def test_empty_and_missing_histories():
    frame = pl.DataFrame({
        "user_id": ["a", "b", "c"],
        "items": pl.Series([[3, 1, 3], [], None], dtype=pl.List(pl.Int32)),
        "last_time": pl.Series([5.0, None, float("nan")], dtype=pl.Float64),
    })
    users = UserHistories.from_frame(frame)
    assert users["a"] == History([3, 1, 3], 5.0)
    assert users["b"].items == [] and math.isnan(users["b"].last_time)
    assert users["c"].items == [] and math.isnan(users["c"].last_time)


def test_a_null_item_row_is_refused():
    frame = pl.DataFrame({
        "user_id": ["a"], "items": pl.Series([[1, None]], dtype=pl.List(pl.Int32)),
        "last_time": [1.0]})
    with pytest.raises(BundleError, match="null item row"):
        UserHistories.from_frame(frame)
