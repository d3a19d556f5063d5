"""Small open-addressing sets and maps of item rows for the compiled retrieval loops (numba).

A request touches a few hundred items of a catalogue of up to millions, so its sets are hash
tables sized to the request, cleared per request, instead of catalogue-wide marker arrays.
Keys are item rows >= 0; EMPTY marks a free slot.
"""

from __future__ import annotations

import numba
import numpy as np

EMPTY = -1
NO_MASK = np.ones(0, dtype=bool)  # the `allowed` argument when every item is allowed


@numba.njit(nogil=True, cache=True)
def table_size(n: int) -> int:
    """A power of two at least twice `n` (load <= 1/2 keeps probe chains short)."""
    size = 8
    while size < 2 * n:
        size *= 2
    return size


@numba.njit(nogil=True, cache=True, inline="always")
def slot_of(keys: np.ndarray, item: int) -> int:
    """The slot holding `item`, or the free slot where it would go (linear probing)."""
    mask = keys.size - 1
    slot = (item * 2654435761) & mask
    while keys[slot] != EMPTY and keys[slot] != item:
        slot = (slot + 1) & mask
    return slot


@numba.njit(nogil=True, cache=True)
def fill(keys: np.ndarray, items: np.ndarray, start: int, end: int) -> None:
    """Clear the set `keys` and put items[start:end] in it (negative rows match nothing)."""
    keys[:] = EMPTY
    for t in range(start, end):
        item = items[t]
        if item >= 0:
            keys[slot_of(keys, item)] = item


@numba.njit(nogil=True, cache=True)
def longest(offsets: np.ndarray) -> int:
    """The longest list of a flat list-of-lists' offsets."""
    most = 0
    for u in range(offsets.size - 1):
        most = max(most, offsets[u + 1] - offsets[u])
    return most
