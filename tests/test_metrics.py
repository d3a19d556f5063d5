"""Metrics against values computed by hand."""

import math

import numpy as np
import pytest

from recsys.metrics import auc, impression_metrics, rank_of, ranking_metrics


def test_rank_of_breaks_ties_by_row_and_skips_excluded():
    scores = np.array([0.5, 0.9, 0.5, 0.1, -np.inf])
    assert rank_of(scores, 1) == 1
    assert rank_of(scores, 0) == 2      # tie with row 2: lower row first
    assert rank_of(scores, 2) == 3
    assert rank_of(scores, 3) == 4
    assert rank_of(scores, 4) == math.inf


def test_single_target_metrics_by_hand():
    # case 1: target at rank 1; case 2: at rank 3; case 3: at rank 20; case 4: not ranked
    m = ranking_metrics([[1], [3], [20], [math.inf]])
    assert m["recall@10"] == pytest.approx(2 / 4)
    assert m["recall@50"] == pytest.approx(3 / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m["ndcg@50"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(21)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 20 + 0) / 4)


def test_multi_target_metrics_by_hand():
    # two targets at ranks 2 and 11: recall@10 = 1/2, ideal DCG@10 has two gains
    m = ranking_metrics([[2, 11]])
    assert m["recall@10"] == pytest.approx(0.5)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["recall@50"] == pytest.approx(1.0)
    assert m["ndcg@50"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(12))
                                         / (1 + 1 / math.log2(3)))
    assert m["mrr"] == pytest.approx(0.5)


def test_auc_by_hand():
    assert auc(np.array([0.9, 0.1, 0.5]), np.array([1, 0, 0])) == 1.0
    assert auc(np.array([0.2, 0.1, 0.5]), np.array([1, 0, 0])) == 0.5
    assert auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5


def test_impression_metrics_by_hand():
    # one list: clicked item ranked 2nd of 3 -> AUC 0.5, MRR 1/2, nDCG = 1/log2(3)
    m = impression_metrics([np.array([0.3, 0.9, 0.1])], [np.array([1, 0, 0])])
    assert m["auc"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx(0.5)
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_empty_input_is_an_error():
    with pytest.raises(ValueError):
        ranking_metrics([])
    with pytest.raises(ValueError):
        auc(np.array([0.1]), np.array([1]))
