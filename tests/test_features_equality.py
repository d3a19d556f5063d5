"""Offline/online equality: a training row and a live request build the same feature values for
the same (user, candidate, time), on order-only data (RecBole) and on real time (MovieLens)."""

from __future__ import annotations

import numpy as np
import pytest

from features.build import FEATURES
from recsys.ranking_context import new_item_rows
from recsys.recommender import Filters
from recsys.splits import Case
from training.ranker_data import build_groups

N_USERS = 6


@pytest.fixture(scope="module")
def movielens_recommender(tmp_path_factory, movielens_dataset):
    """A bundle with real timestamps, so the time features (age, idleness) are not NaN."""
    from recsys.recommender import Recommender
    from training.pipeline import TrainConfig, train
    from training.train_ranker import RankerConfig

    models = tmp_path_factory.mktemp("models-ml")
    # its 3 query groups are too few to be served by default: the ranker is what is checked here
    train(movielens_dataset, models, TrainConfig(ranker=RankerConfig(min_train_groups=1)),
          version="ml1", log=lambda _: None)
    return Recommender.load(models)


def _offline_rows(recommender, users, targets):
    """Training-row path: cases made from the bundle's user histories at the bundle's clock."""
    histories = [recommender.users[u] for u in users]
    now = recommender.request_batch(histories).times
    cases = [Case(u, list(h.items), h.last_time, float(t), [int(target)])
             for u, h, t, target in zip(users, histories, now, targets, strict=True)]
    data = build_groups(recommender.context, cases)
    assert data.n_groups == len(users), "every case has its target among the candidates"
    rows = {}
    offset = 0
    for size, case_index in zip(data.groups, data.group_cases, strict=True):
        for r in range(offset, offset + size):
            rows[(cases[case_index].user_id, int(data.items[r]))] = data.features.row(r)
        offset += size
    return rows


@pytest.mark.parametrize("bundle", ["recommender", "movielens_recommender"])
def test_training_rows_equal_live_rows(bundle, request):
    recommender = request.getfixturevalue(bundle)
    users = sorted(recommender.users, key=lambda u: (-len(recommender.users[u].items), u))[:N_USERS]
    # Live path, public API: what a user would be served (seen items allowed, so the live
    # candidate set is the one training sees too).
    live = recommender.recommend(users, k=10, filters=Filters(exclude_seen=False), explain=True)
    assert all(rec.source == "model" for rec in live)
    targets = [recommender.item_rows[rec.item_ids[0]] for rec in live]
    offline = _offline_rows(recommender, users, targets)

    # Live path, the core `recommend` runs: every candidate row of every user, all features.
    histories = [recommender.users[u] for u in users]
    ranked = recommender.rank(recommender.request_batch(histories), keep_features=True)
    assert ranked.features.columns == list(FEATURES)
    live_rows = {(users[int(j)], int(item)): ranked.features.row(r)
                 for r, (j, item) in enumerate(zip(ranked.candidates.request,
                                                   ranked.candidates.item, strict=True))}
    assert set(live_rows) == set(offline), "the same candidates offline and online"
    for key, row in offline.items():
        np.testing.assert_array_equal(np.asarray(row, np.float32),
                                      np.asarray(live_rows[key], np.float32), err_msg=str(key))
    if recommender.real_time:   # the time features are really exercised on real-time data
        age = ranked.features["item_age_days"].to_numpy()
        assert np.isfinite(age).any()

    # The served scores and explanations carry the very same values.
    is_new = new_item_rows(recommender.state)
    for user, rec in zip(users, live, strict=True):
        assert list(rec.scores) == sorted(rec.scores, reverse=True)
        assert rec.reasons is not None and len(rec.reasons) == len(rec.item_ids)
        for item_id, score, reason in zip(rec.item_ids, rec.scores, rec.reasons, strict=True):
            row = offline[(user, recommender.item_rows[item_id])]
            offline_score = recommender.ranker.predict(_frame(FEATURES, row))[0]
            if is_new[recommender.item_rows[item_id]]:
                # kept at its semantic rank or better: served with the score of the item below
                assert score >= offline_score - 1e-6
            else:
                assert score == pytest.approx(float(offline_score), abs=1e-6)
            for feature in reason["features"]:
                expected = float(row[FEATURES.index(feature["feature"])])
                if np.isfinite(expected):
                    assert feature["value"] == pytest.approx(round(expected, 4), abs=1e-4)
                else:   # a missing value is served as null, never as a JSON-breaking NaN
                    assert feature["value"] is None


def _frame(columns, row):
    import polars as pl

    return pl.DataFrame({c: [np.float32(v)] for c, v in zip(columns, row, strict=True)},
                        schema={c: pl.Float32 for c in columns})


def test_default_live_request_excludes_seen_but_keeps_feature_values(recommender):
    """Excluding seen items removes candidates; it must not change the others' features."""
    user = max(recommender.users, key=lambda u: len(recommender.users[u].items))
    history = recommender.users[user]
    batch = recommender.request_batch([history])
    everything = recommender.rank(batch, keep_features=True)
    unseen = recommender.rank(batch, exclude=[set(history.items)], keep_features=True)
    assert not set(unseen.candidates.item.tolist()) & set(history.items)
    position = {int(i): r for r, i in enumerate(everything.candidates.item)}
    for r, item in enumerate(unseen.candidates.item):
        np.testing.assert_array_equal(np.asarray(unseen.features.row(r), np.float32),
                                      np.asarray(everything.features.row(position[int(item)]),
                                                 np.float32))


def test_serving_block_scores_equal_frame_scores(recommender):
    """Serving hands the ranker the bare feature block (no polars frame); explanations,
    training and evaluation use the frame. Both must score every row the same, bit for bit."""
    users = sorted(recommender.users)[:N_USERS]
    batch = recommender.request_batch([recommender.users[u] for u in users])
    served = recommender.rank(batch)                      # the block path
    framed = recommender.rank(batch, keep_features=True)  # the frame path
    assert served.features is None and len(served.candidates) > 0
    np.testing.assert_array_equal(served.candidates.item, framed.candidates.item)
    np.testing.assert_array_equal(served.scores, framed.scores)
    _, block = recommender.context.rows(batch, as_frame=False)
    assert block.shape == (len(framed.candidates), len(FEATURES))
    np.testing.assert_array_equal(block, framed.features.to_numpy())


def test_ranker_reads_the_block_in_its_own_feature_order(recommender):
    """A ranker trained on a subset of the features, in another order (an ablation), picks its
    columns out of the block by name, as `select` does on the frame."""
    import lightgbm as lgb

    from recsys.ranker_model import Ranker

    users = sorted(recommender.users)[:N_USERS]
    batch = recommender.request_batch([recommender.users[u] for u in users])
    _, frame = recommender.context.rows(batch)
    _, block = recommender.context.rows(batch, as_frame=False)
    subset = [name for name in reversed(FEATURES) if name != "n_sources"]
    train = frame.select(subset).to_numpy()
    labels = (np.arange(len(train)) % 3 == 0).astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1, "min_data_in_leaf": 1},
                        lgb.Dataset(train, labels, feature_name=subset), num_boost_round=3)
    ranker = Ranker(booster, subset, threads=1)
    np.testing.assert_array_equal(ranker.matrix(block), train)
    np.testing.assert_array_equal(ranker.predict(block), ranker.predict(frame))
    with pytest.raises(ValueError, match="expected"):
        ranker.matrix(block[:, :5])
