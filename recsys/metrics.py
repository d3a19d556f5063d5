"""Ranking metrics, computed from the 1-based rank of each target in a full ranking.

Working from ranks (not top-k lists) lets every method rank the whole catalogue cheaply and
gives MRR exactly. A target that was not ranked at all (masked out) has rank = inf.
Definitions (per case, then averaged over cases):
    recall@k = |{t in T : rank(t) <= k}| / |T|
    ndcg@k   = sum_{t : rank(t) <= k} 1 / log2(rank(t) + 1)
               / sum_{i=1}^{min(|T|, k)} 1 / log2(i + 1)
    mrr      = 1 / min_t rank(t)
Impression metrics follow the MIND evaluation script: per impression list, AUC of clicked vs
not-clicked, MRR = mean over clicked items of 1/rank, nDCG@k with binary gains.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CUTOFFS = (10, 50)
IMPRESSION_CUTOFFS = (5, 10)


def rank_of(scores: np.ndarray, target: int) -> float:
    """1-based rank of `target` in `scores` (higher first); ties broken by lower row first.

    A target with score -inf (excluded) is not ranked: returns inf.
    """
    value = scores[target]
    if not np.isfinite(value) and value < 0:
        return float("inf")
    greater = int(np.count_nonzero(scores > value))
    ties_before = int(np.count_nonzero(scores[:target] == value))
    return float(greater + ties_before + 1)


def ranking_metrics(target_ranks: Sequence[Sequence[float]],
                    cutoffs: Sequence[int] = CUTOFFS) -> dict[str, float]:
    """Mean recall@k, ndcg@k (for each k in `cutoffs`) and mrr over cases."""
    if len(target_ranks) == 0:
        raise ValueError("no cases to evaluate")
    sums = {f"{name}@{k}": 0.0 for k in cutoffs for name in ("recall", "ndcg")}
    sums["mrr"] = 0.0
    for ranks in target_ranks:
        ranks = np.asarray(ranks, dtype=np.float64)
        if ranks.size == 0:
            raise ValueError("a case with no targets")
        for k in cutoffs:
            hit = ranks <= k
            sums[f"recall@{k}"] += hit.sum() / ranks.size
            ideal = (1.0 / np.log2(np.arange(2, min(ranks.size, k) + 2))).sum()
            sums[f"ndcg@{k}"] += (1.0 / np.log2(ranks[hit] + 1)).sum() / ideal
        sums["mrr"] += 1.0 / ranks.min()
    return {name: float(total / len(target_ranks)) for name, total in sums.items()}


def impression_metrics(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                       cutoffs: Sequence[int] = IMPRESSION_CUTOFFS) -> dict[str, float]:
    """Mean AUC, MRR and nDCG@k over impression lists (each with >= 1 click and >= 1 non-click)."""
    if len(scores) == 0:
        raise ValueError("no impressions to evaluate")
    totals = {"auc": 0.0, "mrr": 0.0, **{f"ndcg@{k}": 0.0 for k in cutoffs}}
    for score, label in zip(scores, labels, strict=True):
        score, label = np.asarray(score, np.float64), np.asarray(label, np.float64)
        totals["auc"] += auc(score, label)
        order = np.argsort(-score, kind="stable")
        ranked = label[order]
        totals["mrr"] += (ranked / np.arange(1, ranked.size + 1)).sum() / ranked.sum()
        for k in cutoffs:
            totals[f"ndcg@{k}"] += ndcg_binary(ranked, k)
    return {name: float(total / len(scores)) for name, total in totals.items()}


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Probability a random clicked item outscores a random non-clicked one (ties count half)."""
    pos, neg = score[label > 0], score[label <= 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUC needs at least one clicked and one non-clicked item")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def ndcg_binary(ranked_labels: np.ndarray, k: int) -> float:
    gains = ranked_labels[:k]
    dcg = (gains / np.log2(np.arange(2, gains.size + 2))).sum()
    ideal_gains = np.sort(ranked_labels)[::-1][:k]
    idcg = (ideal_gains / np.log2(np.arange(2, ideal_gains.size + 2))).sum()
    return float(dcg / idcg) if idcg > 0 else 0.0
