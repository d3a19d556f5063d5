"""The candidate-source protocol: a batch of requests in, ranked item rows per request out.

A source (semantic neighbours, co-visitation, popularity, history, ...) answers a whole
`RetrievalBatch` at once with `SourceHits`: per request, its item rows in its own order, each
with the rank that becomes the source's ranker feature (`rank_name`) and the source's score.
`merge.merge_sources` puts the sources of a registry together (registry.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from features.build import MISSING_RANK
from features.ragged import flatten


@dataclass
class RetrievalBatch:
    """The requests every source of one retrieval call answers.

    `exclude[u]`: item rows never to return for request u (seen items, business rules).
    `allowed`: optional boolean mask over item rows (category filters, deleted items).
    `covis_scores`: the batch's co-visitation scores when already computed (the features read
    the same matrix), else the co-visitation source computes them.
    """

    histories: Sequence[Sequence[int]]
    profiles: np.ndarray
    exclude: Sequence[set[int]] | None = None
    allowed: np.ndarray | None = None
    covis_scores: sp.csr_matrix | None = None

    def __post_init__(self) -> None:
        n = len(self.histories)
        self.exclude = [set() for _ in range(n)] if self.exclude is None \
            else [set(e) for e in self.exclude]
        if len(self.exclude) != n:
            raise ValueError(f"exclude has {len(self.exclude)} entries for {n} requests")
        if self.allowed is not None:
            self.allowed = np.ascontiguousarray(self.allowed, dtype=bool)

    def __len__(self) -> int:
        return len(self.histories)

    @functools.cached_property
    def history_sets(self) -> list[set[int]]:
        return [set(int(i) for i in h) for h in self.histories]

    @functools.cached_property
    def has_history(self) -> np.ndarray:
        return np.array([len(h) > 0 for h in self.histories], dtype=bool)

    @functools.cached_property
    def banned(self) -> set[int]:
        """Item rows the allowed mask rules out."""
        return set(np.flatnonzero(~self.allowed).tolist()) if self.allowed is not None else set()

    @functools.cached_property
    def skipped(self) -> tuple[np.ndarray, np.ndarray]:
        """Per request, its exclusions and its history as one flat list (items, offsets): what
        the behavioural sources skip (history is offered by its own source, or not at all, so
        it never crowds new items out of another source's quota)."""
        return flatten([e | h for e, h in zip(self.exclude, self.history_sets, strict=True)])


@dataclass
class SourceHits:
    """One source's answer for a batch: request u's rows are items[offsets[u]:offsets[u + 1]],
    in the source's order, each with its rank (float32) and the source's score (float32)."""

    items: np.ndarray
    ranks: np.ndarray
    scores: np.ndarray
    offsets: np.ndarray

    @classmethod
    def empty(cls, n_requests: int) -> SourceHits:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32),
                   np.zeros(n_requests + 1, np.int64))

    def of(self, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Request u's (items, ranks, scores)."""
        rows = slice(int(self.offsets[u]), int(self.offsets[u + 1]))
        return self.items[rows], self.ranks[rows], self.scores[rows]


@runtime_checkable
class CandidateSource(Protocol):
    """A candidate source. `rank_name` is the column its ranks fill in merged candidates (the
    ranker feature of that name, where the model has one)."""

    name: str
    rank_name: str

    def candidates(self, batch: RetrievalBatch) -> SourceHits:
        """Per request, the rows the source offers, best first, none excluded or disallowed,
        none twice."""
        ...

    def ranks_of(self, batch: RetrievalBatch, items: np.ndarray,
                 offsets: np.ndarray) -> np.ndarray:
        """The rank the source gives each of request u's items[offsets[u]:offsets[u + 1]] over
        the whole catalogue (float32; MISSING_RANK where it would never return the item)."""
        ...


def missing_ranks(n: int) -> np.ndarray:
    return np.full(n, MISSING_RANK, dtype=np.float32)


__all__ = ["CandidateSource", "RetrievalBatch", "SourceHits", "missing_ranks"]
