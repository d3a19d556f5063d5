"""The ranker trainer: lambdarank with early stopping, and the hyper-parameter search, both
judged on valid only."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from training.ranker_data import RankerData
from training.train_ranker import RankerConfig, train_ranker

FEATURES = ["signal", "noise"]


def _groups(n_groups: int, seed: int) -> RankerData:
    """Groups of 10 candidates; the clicked one has the largest `signal` (plus some noise)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n_groups, 10))
    labels = np.zeros((n_groups, 10), dtype=np.float32)
    labels[np.arange(n_groups), np.argmax(signal + rng.normal(scale=0.7, size=signal.shape),
                                          axis=1)] = 1
    frame = pl.DataFrame({"signal": signal.ravel().astype(np.float32),
                          "noise": rng.normal(size=n_groups * 10).astype(np.float32)})
    return RankerData(frame, labels.ravel(), [10] * n_groups, n_groups, n_groups)


def _config(**kw) -> RankerConfig:
    return RankerConfig(min_data_in_leaf=5, max_rounds=60, early_stopping_rounds=10,
                        log_every=0, threads=1, **kw)


def test_search_keeps_the_setting_with_the_best_valid_score():
    train, valid = _groups(300, 1), _groups(100, 2)
    search = ({"num_leaves": 2, "learning_rate": 0.01}, {"num_leaves": 15, "learning_rate": 0.2})
    ranker, report = train_ranker(train, valid, FEATURES,
                                  _config(search=search, refit_on_valid=False),
                                  log=lambda _: None)
    scores = [t["valid_ndcg@10_candidates"] for t in report["search"]]
    assert [t["setting"] for t in report["search"]] == list(search)
    assert report["valid_ndcg@10_candidates"] == max(scores)
    chosen = report["search"][int(np.argmax(scores))]["setting"]
    assert report["config"]["num_leaves"] == chosen["num_leaves"]
    assert ranker.booster.num_trees() == report["best_iteration"]
    # the learned ranker uses the signal, not the noise
    assert report["gain_importance"]["signal"] > report["gain_importance"]["noise"]


def test_without_search_one_fit_and_no_search_report():
    _, report = train_ranker(_groups(200, 3), _groups(50, 4), FEATURES, _config(),
                             log=lambda _: None)
    assert "search" not in report and report["best_iteration"] >= 1


def test_unknown_search_setting_is_an_error():
    with pytest.raises(ValueError, match="unknown ranker settings"):
        train_ranker(_groups(50, 5), _groups(20, 6), FEATURES,
                     _config(search=({"leaves": 3},)), log=lambda _: None)


def test_the_kept_ranker_is_fit_again_on_train_and_valid_with_trees_scaled_by_groups():
    train, valid = _groups(300, 7), _groups(100, 8)
    stopped, before = train_ranker(train, valid, FEATURES, _config(refit_on_valid=False),
                                   log=lambda _: None)
    refit, after = train_ranker(train, valid, FEATURES, _config(), log=lambda _: None)
    assert "refit_on_valid" not in before
    assert after["best_iteration"] == before["best_iteration"]   # chosen before the refit
    trees = round(before["best_iteration"] * 400 / 300)
    assert after["refit_on_valid"]["trees"] == trees == refit.booster.num_trees()
    assert after["refit_on_valid"]["groups"] == 400
    # it learned from the valid groups too: other trees, other scores
    assert not np.array_equal(stopped.predict(valid.features), refit.predict(valid.features))
    assert after["gain_importance"]["signal"] > after["gain_importance"]["noise"]


def test_a_ranker_too_weak_to_use_is_not_fit_again():
    train, valid = _groups(5, 9), _groups(20, 10)
    _, report = train_ranker(train, valid, FEATURES, _config(), log=lambda _: None)
    assert report["used"] is False and "refit_on_valid" not in report
