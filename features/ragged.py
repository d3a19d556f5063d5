"""Variable-length lists of item rows (histories, exclusions) as one flat array plus offsets:
the form the compiled loops of features/kernels.py read a whole batch in."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np


def flatten(lists: Sequence[Iterable[int]]) -> tuple[np.ndarray, np.ndarray]:
    """All lists concatenated (int64) and the [len(lists) + 1] offsets of each one's slice."""
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64,
                         count=int(offsets[-1]))
    return values, offsets


def list_lengths(offsets: np.ndarray) -> np.ndarray:
    # slicing, not np.diff: np.diff's Python wrapper costs several times the subtraction on
    # such small arrays
    return offsets[1:] - offsets[:-1]
