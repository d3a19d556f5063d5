"""EASE item-item weights (features/item_item.py): the closed form, the sparse top per row, the
scores, and the bundle file (safetensors, checked on load)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from features.item_item import ItemItem

N_ITEMS = 12


def _clicks(seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = 300
    return pl.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, 40, n)],
                         "item": rng.integers(0, N_ITEMS - 2, n)})  # the last two never clicked


def _dense_ease(clicks: pl.DataFrame, lam: float) -> np.ndarray:
    users = sorted(set(clicks["user_id"].to_list()))
    x = np.zeros((len(users), N_ITEMS))
    for user, item in clicks.iter_rows():
        x[users.index(user), item] = 1.0
    active = np.flatnonzero(x.sum(axis=0) > 0)
    g = x[:, active].T @ x[:, active] + lam * np.eye(active.size)
    p = np.linalg.inv(g)
    b = np.eye(active.size) - p / np.diag(p)[None, :]
    full = np.zeros((N_ITEMS, N_ITEMS))
    full[np.ix_(active, active)] = b
    return full


def test_the_weights_are_the_closed_form_positive_part():
    clicks = _clicks()
    want = _dense_ease(clicks, 5.0)
    got = ItemItem.fit(clicks, N_ITEMS, lam=5.0, top=N_ITEMS).matrix_.toarray()
    np.testing.assert_allclose(got, np.where(want > 0, want, 0), rtol=1e-5, atol=1e-7)
    assert np.all(np.diag(got) == 0)


def test_each_row_keeps_its_top_weights():
    clicks = _clicks()
    full = ItemItem.fit(clicks, N_ITEMS, lam=5.0, top=N_ITEMS).matrix_.toarray()
    top = ItemItem.fit(clicks, N_ITEMS, lam=5.0, top=3).matrix_.toarray()
    for row_full, row_top in zip(full, top, strict=True):
        kept = np.flatnonzero(row_top)
        assert kept.size == min(3, np.count_nonzero(row_full))
        np.testing.assert_array_equal(row_top[kept], row_full[kept])
        if kept.size:
            assert row_full[row_top == 0].max(initial=0) <= row_top[kept].min()


def test_scores_sum_the_distinct_history_rows():
    weights = ItemItem.fit(_clicks(), N_ITEMS, lam=5.0)
    dense = weights.matrix_.toarray()
    scores = weights.score([[1, 3, 1], [], [11]]).toarray()
    want = dense[[1, 3]].sum(axis=0)
    np.testing.assert_allclose(scores[0], np.where(want > 0, want, 0), rtol=1e-6)
    assert not scores[1].any() and not scores[2].any()


def test_the_weights_round_trip_and_a_bad_file_is_refused(tmp_path):
    weights = ItemItem.fit(_clicks(), N_ITEMS, lam=5.0)
    weights.save(tmp_path / "w.safetensors")
    back = ItemItem.load(tmp_path / "w.safetensors", N_ITEMS)
    assert (back.matrix_ != weights.matrix_).nnz == 0
    with pytest.raises(ValueError, match="do not fit 10 items"):
        ItemItem.load(tmp_path / "w.safetensors", 10)


def test_a_grown_catalogue_keeps_the_weights_and_new_items_have_none():
    weights = ItemItem.fit(_clicks(), N_ITEMS, lam=5.0)
    grown = weights.resized(N_ITEMS + 3)
    assert grown.matrix_.shape == (N_ITEMS + 3, N_ITEMS + 3)
    np.testing.assert_array_equal(grown.matrix_.toarray()[:N_ITEMS, :N_ITEMS],
                                  weights.matrix_.toarray())
    assert grown.score([[N_ITEMS + 1]]).nnz == 0
