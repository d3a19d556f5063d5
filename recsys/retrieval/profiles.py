"""User profiles: a recency-weighted mean of the vectors of the items in a user's history."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from recsys.retrieval.config import PROFILE_DECAY, PROFILE_MAX_ITEMS


def user_profiles(histories: Sequence[Sequence[int]], item_vectors: np.ndarray,
                  decay: float = PROFILE_DECAY) -> np.ndarray:
    """Recency-weighted mean of history item vectors, L2-normalised; zeros for empty histories."""
    dim = item_vectors.shape[1]
    profiles = np.zeros((len(histories), dim), dtype=np.float32)
    all_weights = _recency_weights(float(decay))
    for u, history in enumerate(histories):
        tail = np.asarray(list(history)[-PROFILE_MAX_ITEMS:], dtype=np.int64)
        if tail.size == 0:
            continue
        profiles[u] = all_weights[-tail.size:] @ item_vectors[tail]
    norms = np.linalg.norm(profiles, axis=1, keepdims=True)
    return np.divide(profiles, norms, out=np.zeros_like(profiles), where=norms > 0)


@functools.lru_cache(maxsize=8)
def _recency_weights(decay: float) -> np.ndarray:
    """decay ** k for the k-th most recent of PROFILE_MAX_ITEMS items, oldest first (a
    history's weights are the last len(history) of them), made once instead of per request."""
    weights = decay ** np.arange(PROFILE_MAX_ITEMS - 1, -1, -1, dtype=np.float32)
    weights.flags.writeable = False
    return weights
