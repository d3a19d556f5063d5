"""Adding items to a loaded model (cold start): its vector rows grown without copying the
catalogue each time, and its behavioural state extended with items that have no events yet."""

from __future__ import annotations

import copy

import numpy as np
import scipy.sparse as sp

from features.state import BehaviourState


def grow_rows(current: np.ndarray, held: tuple | None,
              new_rows: np.ndarray) -> tuple[np.ndarray, tuple]:
    """`current` (the item vectors) with `new_rows` appended, without copying the catalogue each
    time; `held` is the (buffer, fill) pair returned with `current`, None the first time.

    Vectors live in a buffer with spare capacity; a copy writes only into rows no earlier view
    can see, and only the copy that filled the buffer last may extend it in place.
    Returns the new view and the (buffer, fill) pair to keep beside it.
    """
    n, m = current.shape[0], new_rows.shape[0]
    buffer, fill = held if held is not None else (None, None)
    if buffer is None or fill[0] != n or buffer.shape[0] < n + m:
        buffer = np.empty((n + m + max(1024, (n + m) // 8), current.shape[1]), dtype=np.float32)
        buffer[:n] = current
        fill = [n]
    buffer[n:n + m] = new_rows
    fill[0] = n + m
    return buffer[:n + m], (buffer, fill)


def state_with_new_items(state: BehaviourState, m: int, first_seen_s: float) -> BehaviourState:
    """The behavioural state with `m` new items that have no events yet."""
    n = state.n_items
    covis = copy.copy(state.covisitation)
    matrix = state.covisitation.matrix_
    indptr = np.concatenate([matrix.indptr,
                             np.full(m, matrix.indptr[-1], dtype=matrix.indptr.dtype)])
    covis.n_items = n + m
    covis.matrix_ = sp.csr_matrix((matrix.data, matrix.indices, indptr), shape=(n + m, n + m))
    grown = copy.copy(state)
    grown.n_items = n + m
    grown.clicks_ = np.concatenate([state.clicks_, np.zeros(m, np.float32)])
    grown.shown_ = np.concatenate([state.shown_, np.zeros(m, np.float32)])
    grown.ctr_ = np.concatenate([state.ctr_, np.zeros(m, np.float32)])  # unused: never shown
    grown.window_clicks_ = np.concatenate(
        [state.window_clicks_, np.zeros((m, state.window_clicks_.shape[1]), np.float32)])
    grown.first_seen_s_ = np.concatenate([state.first_seen_s_, np.full(m, first_seen_s)])
    grown.last_seen_s_ = np.concatenate([state.last_seen_s_, np.full(m, np.nan)])
    grown.popular_rows_ = np.concatenate([state.popular_rows_, np.arange(n, n + m)])
    grown.new_ = np.concatenate([state.new_, np.ones(m, bool)])
    grown.covisitation_ = covis
    if state.item_item_ is not None:
        grown.item_item_ = state.item_item_.resized(n + m)
    return grown
