"""The ranker's trees compiled to machine code give LightGBM's scores, are checked before use,
and the server predicts through them by default, keeping LightGBM's predict when they fail."""

from __future__ import annotations

import logging
import time

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from recsys import compiled_trees
from recsys.compiled_trees import CompiledTreesError, check_agreement, compile_trees, probe_rows
from recsys.ranker_model import Ranker
from recsys.recommender import Filters
from serving.main import create_app
from serving.settings import Settings
from tests.keys import DATA_KEY


def _booster(seed: int, rounds: int = 20) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, 5))
    x[rng.random(x.shape) < 0.1] = np.nan           # missing values take the default branch
    y = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) > 0).astype(float)
    data = lgb.Dataset(x, y, feature_name=[f"f{i}" for i in range(5)])
    return lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7, "seed": seed},
                     data, num_boost_round=rounds)


def test_compiled_trees_give_the_bundles_ranker_scores_on_real_candidate_rows(recommender):
    histories = [recommender.users[u] for u in sorted(recommender.users)[:8]]
    ranked = recommender.rank(recommender.request_batch(histories),
                              [set(h.items) for h in histories], recommender.active,
                              keep_features=True)
    rows = recommender.ranker.matrix(ranked.features)
    compiled = recommender.ranker.with_compiled_trees()
    assert compiled.compiled and not recommender.ranker.compiled
    expected = recommender.ranker.booster.predict(rows, num_threads=1).astype(np.float32)
    assert len(rows) > 100
    np.testing.assert_allclose(compiled.predict(ranked.features), expected, rtol=1e-6, atol=1e-7)


def test_the_recommendations_are_the_same_through_compiled_trees(recommender):
    users = sorted(recommender.users)[:10]
    plain = recommender.recommend(users, 10, Filters(), now=1e9)
    compiled = recommender.with_ranker(recommender.ranker.with_compiled_trees()).recommend(
        users, 10, Filters(), now=1e9)
    for a, b in zip(plain, compiled, strict=True):
        assert list(a.item_ids) == list(b.item_ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_probe_rows_sit_on_both_sides_of_every_threshold():
    booster = _booster(0)
    rows = probe_rows(booster)
    for tree in booster.dump_model()["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" not in node:
                continue
            column, threshold = rows[:, node["split_feature"]], node["threshold"]
            assert (column <= threshold).any() and (column > threshold).any()
            stack.extend((node["left_child"], node["right_child"]))
    assert np.isnan(rows).any(axis=0).all()


def test_compiled_trees_that_disagree_with_lightgbm_are_refused():
    first, second = _booster(0), _booster(1)
    compiled = compile_trees(first)
    check_agreement(compiled, first)
    with pytest.raises(CompiledTreesError, match="disagree with LightGBM"):
        check_agreement(compiled, second)


def test_a_ranker_trained_in_memory_compiles_and_keeps_shap_from_lightgbm():
    booster = _booster(2)
    ranker = Ranker(booster, [f"f{i}" for i in range(5)], threads=1)
    compiled = ranker.with_compiled_trees()
    rows = pl.DataFrame(probe_rows(booster, 64, seed=3), schema=ranker.features, orient="row")
    np.testing.assert_allclose(compiled.predict(rows), ranker.predict(rows), rtol=1e-6)
    np.testing.assert_array_equal(compiled.contributions(rows), ranker.contributions(rows))
    assert compiled.with_compiled_trees() is compiled
    assert compiled.predict(rows.head(0)).shape == (0,)


def _settings(models_dir, tmp_path, **overrides) -> Settings:
    return Settings(models_dir=models_dir, event_store=tmp_path / f"ev-{time.monotonic_ns()}.db",
                    api_keys=[DATA_KEY], poll_current_s=0, **overrides)


def _served(client, user: str) -> dict:
    response = client.get(f"/recommendations/{user}?k=10", headers={"X-API-Key": DATA_KEY})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_server_predicts_through_compiled_trees_unless_told_not_to(models_dir, tmp_path):
    answers = {}
    for compiled in (True, False):
        app = create_app(_settings(models_dir, tmp_path, compiled_ranker=compiled))
        with TestClient(app) as client:
            holder = client.app.state.context.holder
            assert holder.current.ranker.compiled is compiled
            user = sorted(holder.current.users)[0]
            answers[compiled] = _served(client, user)
    assert answers[True]["source"] == answers[False]["source"] == "model"
    assert [i["item_id"] for i in answers[True]["items"]] == \
        [i["item_id"] for i in answers[False]["items"]]


def test_the_server_keeps_lightgbms_predict_when_the_trees_do_not_compile(
        models_dir, tmp_path, monkeypatch, caplog):
    def broken(booster):
        raise CompiledTreesError("lleaves could not compile the ranker's trees (test)")

    monkeypatch.setattr("recsys.ranker_model.compile_trees", broken)
    with caplog.at_level(logging.WARNING, logger="serving.model_holder"), \
            TestClient(create_app(_settings(models_dir, tmp_path))) as client:
        holder = client.app.state.context.holder
        assert holder.current is not None and not holder.current.ranker.compiled
        assert _served(client, sorted(holder.current.users)[0])["source"] == "model"
    assert "serving with LightGBM's predict" in caplog.text


def test_a_model_compiled_once_is_not_compiled_again(monkeypatch):
    booster = _booster(4, rounds=5)
    first = compile_trees(booster)
    assert compile_trees(lgb.Booster(model_str=booster.model_to_string())) is first
    monkeypatch.setattr(compiled_trees, "KEEP", 0)
    assert compile_trees(_booster(5, rounds=5)) is not first
    assert not compiled_trees._cache


def test_fast_compiled_trees_predict_on_the_model_thread_and_others_keep_the_deadline_thread(
        models_dir, tmp_path):
    from serving.model_holder import DeadlineRanker

    kinds = {}
    for compiled in (True, False):
        # a budget that no machine's probe misses (10,000 rows in 1 s): which thread predicts
        # must not depend on this box's speed that minute; the slow case is the next test's
        app = create_app(_settings(models_dir, tmp_path, compiled_ranker=compiled,
                                   ranker_timeout_ms=10_000))
        with TestClient(app) as client:
            ranker = client.app.state.context.holder.current.ranker
            kinds[compiled] = type(ranker)
            assert _served(client, sorted(client.app.state.context.holder.current.users)[0]
                           )["source"] == "model"
    assert kinds[True] is Ranker            # no thread hop per batch
    assert kinds[False] is DeadlineRanker   # LightGBM's predict: the deadline thread


def test_compiled_trees_too_slow_for_the_budget_keep_the_deadline_thread(recommender):
    from serving.model_holder import PROBE_ROWS, predicts_well_within

    trees = recommender.ranker.with_compiled_trees()
    assert predicts_well_within(trees, timeout_s=5.0)

    class Slow:
        compiled = True
        features = trees.features

        def predict(self, rows):
            assert len(rows) == PROBE_ROWS
            time.sleep(0.05)
            return np.zeros(len(rows), dtype=np.float32)

    assert not predicts_well_within(Slow(), timeout_s=0.2)   # 50 ms > 10% of 200 ms
    assert not predicts_well_within(recommender.ranker, timeout_s=5.0)  # not compiled
