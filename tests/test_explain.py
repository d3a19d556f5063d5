"""Explanations: the closest history item and the features that pushed a recommendation up."""

from __future__ import annotations

import json

import numpy as np

from recsys.explain import GROUP_OF, reason_text
from recsys.recommender import Filters


def _heavy_user(recommender):
    return max(sorted(recommender.users), key=lambda u: len(recommender.users[u].items))


def test_reasons_are_the_ranker_contributions_and_the_closest_history_item(recommender):
    user = _heavy_user(recommender)
    history = recommender.users[user].items
    [rec] = recommender.recommend([user], k=5, filters=Filters(exclude_seen=False), explain=True)
    batch = recommender.request_batch([recommender.users[user]])
    ranked = recommender.rank(batch, keep_features=True)
    row_of = {int(i): r for r, i in enumerate(ranked.candidates.item)}
    contributions = recommender.ranker.contributions(ranked.features)
    names = recommender.ranker.features
    for item_id, reason in zip(rec.item_ids, rec.reasons, strict=True):
        item = recommender.item_rows[item_id]
        r = row_of[item]
        expected = sorted((c for c in zip(contributions[r, :-1], names, strict=True) if c[0] > 0),
                          reverse=True)[:3]
        assert [f["feature"] for f in reason["features"]] == [n for _, n in expected]
        for feature, (value, _) in zip(reason["features"], expected, strict=True):
            assert feature["contribution"] == round(float(value), 4)
            assert feature["group"] == GROUP_OF[feature["feature"]]
        # "because you viewed X": the most similar other history item
        because = recommender.item_rows[reason["because_of"]["item_id"]]
        others = [h for h in dict.fromkeys(history[-50:]) if h != item]
        sims = recommender.item_vectors[others] @ recommender.item_vectors[item]
        assert because == others[int(np.argmax(sims))]
        assert reason["text"].startswith("because you viewed")
    json.dumps(rec.reasons, allow_nan=False)   # what the API and batch output serialise


def test_reason_text_without_history_or_features():
    assert reason_text({"features": []}) == "recommended by the model"
    text = reason_text({"features": [{"feature": "covis_score", "group": "covisitation"},
                                     {"feature": "covis_rank", "group": "covisitation"},
                                     {"feature": "item_clicks_log", "group": "popularity"}]})
    assert text == "often viewed next by people who viewed your recent items; popular"
