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

    def fit(self, clicks: pl.DataFrame) -> "Covisitation":
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
                pairs.append(shifted.select(pl.col("next_item").alias("a"), pl.col("item").alias("b"),
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
    def from_table(cls, table: pl.DataFrame, *, n_items: int, **settings) -> "Covisitation":
        covis = cls(n_items, **settings)
        covis._set_table(table)
        return covis

    # -- scoring -------------------------------------------------------------------------------
    def user_weights(self, histories: Sequence[Sequence[int]],
                     recent: int = RECENT_ITEMS) -> sp.csr_matrix:
        """Sparse [n_users, n_items]: recency weights of each user's last `recent` items."""
        rows, cols, vals = [], [], []
        for u, history in enumerate(histories):
            tail = list(history)[-recent:][::-1]
            for k, item in enumerate(tail):
                rows.append(u)
                cols.append(int(item))
                vals.append(RECENCY_DECAY ** k)
        return sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)),
                             shape=(len(histories), self.n_items), dtype=np.float32)

    def score(self, histories: Sequence[Sequence[int]], recent: int = RECENT_ITEMS) -> sp.csr_matrix:
        """Sparse [n_users, n_items] co-visitation score of every item for each user."""
        return (self.user_weights(histories, recent) @ self.matrix_).tocsr()



def pair_scores(scores: sp.csr_matrix, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Dense values of a [n_users, n_items] score matrix at (user, item) pairs, without densifying."""
    if len(items) == 0:
        return np.zeros(0, dtype=np.float32)
    return np.asarray(scores[users, items], dtype=np.float32).ravel()
