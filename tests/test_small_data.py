"""Small-data guardrails: a ranker trained on too few query groups (the MovieLens fixture gives 3)
is reported in one warning line, recorded in the manifest, and not used: the bundle serves the
retrieval order, marked degraded, instead of near-constant ranker scores."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.recommender import DEGRADED, POPULARITY, Filters, Recommender
from training.pipeline import TrainConfig, train
from training.train_ranker import RankerConfig, too_little_to_rank


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory, movielens_dataset):
    lines: list[str] = []
    models = tmp_path_factory.mktemp("small-models")
    path = train(movielens_dataset, models, version="small", log=lines.append)
    return Recommender.load(models), path, lines


def test_train_warns_once_and_the_manifest_records_it(small_bundle):
    recommender, _, lines = small_bundle
    warnings = [line for line in lines if line.startswith("warning: the ranker is not used")]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "query groups (at least 10 needed)" in warnings[0]
    ranker = recommender.manifest["ranker"]
    assert ranker["used"] is False and ranker["train_groups"] < 10
    assert any("query groups" in reason for reason in ranker["not_used_because"])


def test_the_retrieval_order_is_served_and_marked(small_bundle):
    recommender, _, _ = small_bundle
    users = sorted(recommender.users, key=lambda u: -len(recommender.users[u].items))[:5]
    answers = recommender.recommend(users, k=10, explain=True)
    for answer in answers:
        assert answer.source == DEGRADED and len(answer.item_ids) == 10
        assert len(set(answer.scores)) > 1, "scores that tell the items apart"
        assert answer.scores == sorted(answer.scores, reverse=True)
        assert all(reason["text"] for reason in answer.reasons)
    # the order is the sources' own: each item's best rank over the three sources
    ranked = recommender.rank(recommender.request_batch([recommender.users[users[0]]]),
                              keep_features=True)
    best = ranked.features.select("sem_rank", "covis_rank", "pop_rank").to_numpy().min(axis=1)
    np.testing.assert_array_equal(ranked.scores, -best.astype(np.float32))
    assert ranked.degraded
    # unknown users still get the popularity fallback
    assert recommender.recommend(["nobody"], k=5, filters=Filters())[0].source == POPULARITY


def test_enough_data_keeps_the_ranker(recommender):
    assert recommender.ranker_used and recommender.manifest["ranker"]["used"] is True
    user = sorted(recommender.users)[0]
    assert recommender.recommend([user], k=5)[0].source == "model"


def test_the_thresholds_can_be_lowered(movielens_dataset, tmp_path):
    config = TrainConfig(ranker=RankerConfig(min_train_groups=1))
    path = train(movielens_dataset, tmp_path, config, version="forced", log=lambda _: None)
    assert Recommender.load(path).ranker_used


def test_too_few_trees_or_one_score_is_caught():
    report = {"train_groups": 500, "best_iteration": 1}
    config = RankerConfig()
    assert too_little_to_rank(report, np.array([0.5, 0.5, 0.5]), config) == [
        "it kept 1 tree(s) (at least 2 needed)", "it gives every valid candidate the same score"]
    assert too_little_to_rank({"train_groups": 500, "best_iteration": 40},
                              np.array([0.1, 0.3]), config) == []


def test_the_evaluation_says_the_ranker_is_not_used(small_bundle, movielens_dataset):
    from recsys.evaluate import evaluate

    _, path, _ = small_bundle
    report = evaluate(path, movielens_dataset, "test", log=lambda _: None)
    assert report["details"]["ranker_used"] is False
    assert report["metrics"]["pipeline"]["ndcg@10"] >= 0


def test_the_api_answers_in_retrieval_order_marked_as_a_fallback(small_bundle, tmp_path):
    from fastapi.testclient import TestClient

    from serving.main import create_app
    from serving.settings import Settings

    recommender, path, _ = small_bundle
    settings = Settings(models_dir=path.parent, event_store=tmp_path / "events.sqlite",
                        poll_current_s=0)
    user = max(recommender.users, key=lambda u: len(recommender.users[u].items))
    with TestClient(create_app(settings)) as client:
        body = client.get(f"/recommendations/{user}", params={"k": 5, "explain": True}).json()
    assert body["source"] == "degraded" and body["fallback"] is True
    scores = [item["score"] for item in body["items"]]
    assert len(scores) == 5 and len(set(scores)) > 1 and scores == sorted(scores, reverse=True)
    assert all(item["reasons"]["text"] for item in body["items"])


def test_recommend_says_why_the_retrieval_order_is_served(small_bundle, capsys):
    from recsys.cli import main

    recommender, path, _ = small_bundle
    user = max(recommender.users, key=lambda u: len(recommender.users[u].items))
    assert main(["recommend", str(path), user, "--k", "3"]) == 0
    headline = capsys.readouterr().out.splitlines()[0]
    assert headline.endswith("retrieval order (too little click data to train the ranker)")
