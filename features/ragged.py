"""Variable-length lists of item rows (histories, exclusions) as one flat array plus offsets.

A batch of requests is then handled with a few numpy calls instead of a Python loop per
request; `PairSet` answers "is item i in request u's list" for many (u, i) pairs at once.
"""

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
    # slicing, not np.diff: these helpers run a few dozen times per request, and np.diff's
    # Python wrapper costs several times the subtraction on such small arrays
    return offsets[1:] - offsets[:-1]


def owners(offsets: np.ndarray) -> np.ndarray:
    """For each flat element, the index of the list it came from."""
    return np.arange(offsets.size - 1, dtype=np.int64).repeat(list_lengths(offsets))


def ragged_arange(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each count c, concatenated: position of each element inside its list."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    starts = counts.cumsum() - counts
    return np.arange(total, dtype=np.int64) - starts.repeat(counts)


def tails(offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The last `n` elements of each list, newest first: (flat positions, owner, k) where
    k = 0 is a list's last element."""
    counts = np.minimum(list_lengths(offsets), n)
    k = ragged_arange(counts)
    positions = (offsets[1:] - 1).repeat(counts) - k
    return positions, np.arange(offsets.size - 1, dtype=np.int64).repeat(counts), k


class PairSet:
    """A set of (owner, value) pairs with a vectorised membership test."""

    def __init__(self, owner: np.ndarray, values: np.ndarray, width: int) -> None:
        owner, values = np.asarray(owner, np.int64), np.asarray(values, np.int64)
        keep = (values >= 0) & (values < width)  # rows outside the catalogue match nothing
        self.width = int(width)
        self.keys = np.unique(owner[keep] * self.width + values[keep])
        self.per_owner = np.bincount(self.keys // self.width) if self.keys.size \
            else np.zeros(0, np.int64)

    def contains(self, owner: np.ndarray, values: np.ndarray) -> np.ndarray:
        wanted = np.asarray(owner, np.int64) * self.width + np.asarray(values, np.int64)
        if self.keys.size == 0:
            return np.zeros(wanted.shape, dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, wanted), self.keys.size - 1)
        return self.keys[at] == wanted

    def max_per_owner(self) -> int:
        return int(self.per_owner.max()) if self.per_owner.size else 0
