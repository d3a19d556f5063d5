"""The Recommender: one object for API and batch, batch-first, honest about its fallbacks."""

import numpy as np
import pytest

from recsys.errors import NotFoundError
from recsys.recommender import DEGRADED, MODEL, POPULARITY, Filters, History


def known_user(recommender):
    return max(recommender.users, key=lambda u: len(recommender.users[u].items))


def test_known_user_gets_k_model_recommendations_without_seen_items(recommender):
    user = known_user(recommender)
    [rec] = recommender.recommend([user], k=10)
    seen = {recommender.item_ids[r] for r in recommender.users[user].items}
    assert rec.source == MODEL and rec.model_version == "v1" and rec.user_id == user
    assert len(rec.item_ids) == 10 and len(set(rec.item_ids)) == 10
    assert not seen & set(rec.item_ids)
    assert rec.scores == sorted(rec.scores, reverse=True)


def test_unknown_user_gets_the_popularity_fallback(recommender):
    [rec] = recommender.recommend(["no-such-user"], k=5)
    assert rec.source == POPULARITY and len(rec.item_ids) == 5
    popular = [recommender.item_ids[r] for r in recommender.state.popular_rows_[:5]]
    assert rec.item_ids == popular


def test_batch_equals_one_by_one(recommender):
    users = sorted(recommender.users)[:6] + ["stranger"]
    batch = recommender.recommend(users, k=7)
    for user, rec in zip(users, batch, strict=True):
        [single] = recommender.recommend([user], k=7)
        assert single.item_ids == rec.item_ids
        assert np.allclose(single.scores, rec.scores)


def test_anonymous_history_is_ranked_like_the_same_known_history(recommender):
    user = known_user(recommender)
    history = [recommender.item_ids[r] for r in recommender.users[user].items]
    [anonymous] = recommender.recommend_for_history([history + ["unknown-item"]], k=10)
    [known] = recommender.recommend([user], k=10)
    assert anonymous.item_ids == known.item_ids


def test_filters_exclude_items_and_categories(recommender):
    user = known_user(recommender)
    [base] = recommender.recommend([user], k=10)
    [filtered] = recommender.recommend([user], k=10,
                                       filters=Filters(exclude_items=base.item_ids[:3]))
    assert not set(base.item_ids[:3]) & set(filtered.item_ids)
    assert len(filtered.item_ids) == 10
    category = recommender.category_names[0]
    code = 0
    [only] = recommender.recommend([user], k=5, filters=Filters(include_categories=[category]))
    assert all(recommender.item_categories[recommender.item_rows[i]] == code for i in only.item_ids)


def test_include_seen_allows_history_items(recommender):
    user = known_user(recommender)
    [rec] = recommender.recommend([user], k=len(recommender.item_ids),
                                  filters=Filters(exclude_seen=False))
    seen = {recommender.item_ids[r] for r in recommender.users[user].items}
    assert seen & set(rec.item_ids)


def test_diversity_rules_keep_k_and_cap_categories(recommender):
    user = known_user(recommender)
    [capped] = recommender.recommend([user], k=6, filters=Filters(diversity="category_cap",
                                                                  max_per_category=1))
    assert len(capped.item_ids) == 6
    [mmr] = recommender.recommend([user], k=6, filters=Filters(diversity="mmr", mmr_lambda=0.3))
    assert len(set(mmr.item_ids)) == 6
    with pytest.raises(ValueError, match="diversity"):
        recommender.recommend([user], k=3, filters=Filters(diversity="shuffle"))


def test_ranker_failure_degrades_to_retrieval_order(recommender, monkeypatch):
    # RELIABILITY row 8: the ranker raises -> retrieval order, marked degraded, no exception
    def broken(rows):
        raise RuntimeError("ranker exploded")

    monkeypatch.setattr(recommender.ranker, "predict", broken)
    [rec] = recommender.recommend([known_user(recommender)], k=5)
    assert rec.source == DEGRADED and len(rec.item_ids) == 5


def test_explanations_name_a_history_item(recommender):
    user = known_user(recommender)
    [rec] = recommender.recommend([user], k=3, explain=True)
    history = {recommender.item_ids[r] for r in recommender.users[user].items}
    assert len(rec.reasons) == 3
    assert all(reason["because_of"]["item_id"] in history for reason in rec.reasons)


def test_similar_items(recommender):
    item = recommender.item_ids[0]
    rec = recommender.similar_items(item, k=5)
    assert len(rec.item_ids) == 5 and item not in rec.item_ids
    with pytest.raises(NotFoundError):
        recommender.similar_items("nope")


def test_empty_history_object_gets_fallback(recommender):
    [rec] = recommender.recommend_histories([History()], k=4)
    assert rec.source == POPULARITY and len(rec.item_ids) == 4
