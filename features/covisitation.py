"""Item co-visitation: which items people click soon after (and, weaker, before) a given item.

Fitted with polars from click sequences; stored as a sparse item x item matrix. Scoring a user
sums the rows of their recent items, weighted so the latest item counts most. The candidate
source and the ranker feature both call `score`, so they can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp

from features import kernels
from features.ragged import flatten

# Weight of the k-th most recent history item (k = 0 is the last one) when scoring.
RECENT_ITEMS = 3
RECENCY_DECAY = 0.6


class Covisitation:
    """`C[a, b]`: how strongly b follows a in click sequences (forward pairs within `window`)."""

    def __init__(self, n_items: int, *, window: int = 5, backward_weight: float = 0.25,
                 top: int = 100) -> None:
        self.n_items = n_items
        self.window = window
        self.backward_weight = backward_weight
        self.top = top
        self.matrix_: sp.csr_matrix = sp.csr_matrix((n_items, n_items), dtype=np.float32)

    def fit(self, clicks: pl.DataFrame) -> Covisitation:
        """`clicks`: user_id, item, timestamp (only positive interactions)."""
        ordered = clicks.select("user_id", "item", "timestamp").sort(
            ["user_id", "timestamp"], maintain_order=True)
        pairs = []
        for gap in range(1, self.window + 1):
            shifted = ordered.with_columns(
                pl.col("item").shift(-gap).over("user_id").alias("next_item")
            ).drop_nulls("next_item").filter(pl.col("next_item") != pl.col("item"))
            forward = shifted.select(pl.col("item").alias("a"), pl.col("next_item").alias("b"),
                                     pl.lit(1.0 / gap).alias("w"))
            pairs.append(forward)
            if self.backward_weight > 0:
                pairs.append(shifted.select(pl.col("next_item").alias("a"),
                                            pl.col("item").alias("b"),
                                            pl.lit(self.backward_weight / gap).alias("w")))
        if not pairs:
            return self
        table = (pl.concat(pairs).group_by("a", "b").agg(pl.col("w").sum())
                 .sort(["a", "w", "b"], descending=[False, True, False])
                 .with_columns(pl.col("w").cum_count().over("a").alias("_n"))
                 .filter(pl.col("_n") <= self.top).drop("_n"))
        self._set_table(table)
        return self

    def _set_table(self, table: pl.DataFrame) -> None:
        a = table["a"].to_numpy().astype(np.int64)
        b = table["b"].to_numpy().astype(np.int64)
        w = table["w"].to_numpy().astype(np.float32)
        self.matrix_ = sp.csr_matrix((w, (a, b)), shape=(self.n_items, self.n_items),
                                     dtype=np.float32)

    def table(self) -> pl.DataFrame:
        coo = self.matrix_.tocoo()
        return pl.DataFrame({"a": coo.row.astype(np.int32), "b": coo.col.astype(np.int32),
                             "w": coo.data.astype(np.float32)})

    @classmethod
    def from_table(cls, table: pl.DataFrame, *, n_items: int, **settings) -> Covisitation:
        covis = cls(n_items, **settings)
        covis._set_table(table)
        return covis

    # -- scoring -------------------------------------------------------------------------------
    def score(self, histories: Sequence[Sequence[int]],
              recent: int = RECENT_ITEMS) -> sp.csr_matrix:
        """Sparse [n_users, n_items] co-visitation score of every item for each user: the rows of
        the user's last `recent` items, the k-th most recent weighted RECENCY_DECAY ** k.

        Computed in one compiled pass over the batch (features/kernels.py). The float32 sums
        are made in the order scipy's sparse product (weights @ matrix_) makes them, so the
        values are bit-identical to it: a repeated history item's weights are added newest
        first, then each item's row is added in ascending item order
        (tests/test_vectorized_equality.py holds the scipy form as the reference). Rows come
        out with sorted column indices.
        """
        if recent < 1:
            raise ValueError(f"recent must be at least 1, got {recent}")
        items, offsets = flatten(histories)
        decay = np.array([RECENCY_DECAY ** j for j in range(recent)], dtype=np.float32)
        return kernels.covisitation_scores(items, offsets, decay, self.matrix_)

    def pair_values(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """`C[rows[j], cols[j]]` as float32 (0 where rows[j] < 0 or the pair is not stored),
        reading only the rows asked for. With a user's last item as the row this is their
        `score(..., recent=1)` (weight 1.0, one term: the same float32 values) for the cost of
        a lookup."""
        return kernels.csr_values(self.matrix_, rows, cols)


def pair_scores(scores: sp.csr_matrix, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Dense values of a [n_users, n_items] score matrix at (user, item) pairs, without densifying.

    A binary search in each pair's row (features/kernels.py); missing pairs are 0, as in
    `scores[users, items]`.
    """
    users = np.asarray(users, np.int64)
    if users.size and users.min() < 0:  # the lookup reads a negative row as "no row"
        raise IndexError("a (user, item) pair lies outside the score matrix")
    return kernels.csr_values(scores, users, items)
