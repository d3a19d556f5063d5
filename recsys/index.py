"""The item index: FAISS inner-product search over normalised item vectors.

Rows of the index are item rows of the bundle (row = position in items.parquet); mapping to
external ids stays outside, in the bundle's item table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import faiss
import numpy as np

from features import kernels
from features.ragged import flatten
from recsys.errors import BundleError

KINDS = ("auto", "flat", "hnsw", "ivf")


class ItemIndex:
    """Exact search below `exact_threshold` items, HNSW (or IVF) above it.

    `search(queries, k, exclude)` over-fetches so that excluded rows never cost the caller
    results: it returns min(k, eligible) hits per query, padded with row -1 and score -inf.
    """

    def __init__(self, kind: str = "auto", *, exact_threshold: int = 50_000, hnsw_m: int = 32,
                 ef_construction: int = 200, ef_search: int = 128, ivf_lists: int | None = None,
                 ivf_probe: int = 16) -> None:
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.exact_threshold = exact_threshold
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.ivf_lists = ivf_lists
        self.ivf_probe = ivf_probe
        self.index_: faiss.Index | None = None
        self._vectors: np.ndarray | None = None  # reconstructed lazily, for exact fallbacks

    # -- building -------------------------------------------------------------------------
    def fit(self, vectors: np.ndarray) -> ItemIndex:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise ValueError(f"need a non-empty [n, d] array of vectors, got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("item vectors contain NaN or infinity")
        n, dim = vectors.shape
        kind = self.resolved_kind(n)
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
        else:
            lists = self.ivf_lists or max(1, int(4 * np.sqrt(n)))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
        index.add(vectors)
        self.index_ = index
        self._vectors = None
        self._tune()
        return self

    def resolved_kind(self, n: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if n < self.exact_threshold else "hnsw"

    def _tune(self) -> None:
        index = self.index_
        if isinstance(index, faiss.IndexHNSWFlat):
            index.hnsw.efSearch = self.ef_search
        elif isinstance(index, faiss.IndexIVFFlat):
            index.nprobe = self.ivf_probe

    # -- reading --------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return 0 if self.index_ is None else int(self.index_.ntotal)

    @property
    def dim(self) -> int:
        return 0 if self.index_ is None else int(self.index_.d)

    def vectors(self) -> np.ndarray:
        """All item vectors, row = item row (reconstructed from the index)."""
        index = self._require()
        if isinstance(index, faiss.IndexIVFFlat):
            index.make_direct_map()
        return index.reconstruct_n(0, index.ntotal)

    def search(self, queries: np.ndarray, k: int,
               exclude: Sequence[Sequence[int] | np.ndarray | set[int]] | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows and scores per query, skipping each query's `exclude` rows."""
        index = self._require()
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        m = queries.shape[0]
        k = int(min(k, index.ntotal))
        rows_out = np.full((m, k), -1, dtype=np.int64)
        scores_out = np.full((m, k), -np.inf, dtype=np.float32)
        if k <= 0 or m == 0:
            return rows_out, scores_out
        if exclude is not None and len(exclude) != m:
            raise ValueError(f"exclude has {len(exclude)} entries for {m} queries")
        # each query's excluded rows as one flat list; the hits of the whole batch are filtered
        # in one compiled pass (features/kernels.py), not a Python loop over every hit
        excluded, offsets = flatten(exclude) if exclude is not None else \
            (np.zeros(0, np.int64), np.zeros(m + 1, np.int64))
        skipped_counts = kernels.distinct_in_range(excluded, offsets, index.ntotal)

        pending = np.arange(m)
        fetch = k + int(skipped_counts.max(initial=0))
        while pending.size:
            fetch = int(min(fetch, index.ntotal))
            scores, rows = index.search(queries[pending], fetch)
            last_try = fetch >= index.ntotal
            found = kernels.filter_hits(rows, scores, pending, excluded, offsets, k, last_try,
                                        rows_out, scores_out)
            done = (found >= k) | last_try
            if last_try:
                # an approximate index can miss items even when asked for all of them:
                # finish exactly over the eligible rows, so heavy filters still get k
                for q in pending[found < k]:
                    own = excluded[offsets[q]:offsets[q + 1]]
                    hits = self._exact(queries[q], set(own[(own >= 0) & (own < index.ntotal)]
                                                       .tolist()), k)
                    rows_out[q], scores_out[q] = -1, -np.inf
                    rows_out[q, :len(hits)] = [r for r, _ in hits]
                    scores_out[q, :len(hits)] = [s for _, s in hits]
            pending = pending[~done]
            # approximate indexes may return fewer than asked: widen and try again
            fetch *= 2
        return rows_out, scores_out

    def _exact(self, query: np.ndarray, excluded: set[int], k: int) -> list[tuple[int, float]]:
        if self._vectors is None:
            self._vectors = self.vectors()
        scores = self._vectors @ query
        if excluded:
            scores[list(excluded)] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(r), float(scores[r])) for r in top if np.isfinite(scores[r])]

    def _require(self) -> faiss.Index:
        if self.index_ is None:
            raise RuntimeError("the index is empty: call fit() or load() first")
        return self.index_

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        faiss.write_index(self._require(), str(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str], **settings) -> ItemIndex:
        try:
            index = faiss.read_index(str(path))
        except Exception as exc:  # faiss raises RuntimeError with a C++ message
            raise BundleError(f"{path}: not a readable FAISS index ({exc})") from exc
        item_index = cls(**settings)
        item_index.index_ = index
        item_index._tune()
        return item_index


class _IndexRows:
    """The flat float32 vectors a FAISS index stores, exposed to numpy without a copy; the
    array's base is this object, which holds the index, so the memory lives as long as any
    view of it."""

    def __init__(self, index, flat) -> None:
        self._index = index
        self.__array_interface__ = {"shape": (flat.ntotal, flat.d), "typestr": "<f4",
                                    "data": (int(flat.get_xb()), True), "version": 3}


def shared_vectors(item_index: ItemIndex, vectors: np.ndarray) -> np.ndarray:
    """`vectors` as a read-only view of the copy the index already stores (flat and HNSW
    indexes keep every vector as given), or `vectors` itself when the index keeps none or a
    different one. One copy instead of two: 154 MB less per server process for 100k 384-d
    items, and the feature rows read a candidate's vector from the memory the search has
    just read."""
    index = item_index._require()
    flat = faiss.downcast_index(index.storage) if isinstance(index, faiss.IndexHNSWFlat) \
        else index
    if not isinstance(flat, faiss.IndexFlat) or flat.ntotal != len(vectors) \
            or flat.d != vectors.shape[1] or flat.metric_type != faiss.METRIC_INNER_PRODUCT:
        return vectors
    view = np.asarray(_IndexRows(index, flat))
    return view if np.array_equal(view, vectors) else vectors


def set_search_threads(threads: int) -> None:
    """FAISS's OpenMP pool: on a small box one thread per search beats fighting over cores."""
    faiss.omp_set_num_threads(int(threads))


__all__ = ["ItemIndex", "KINDS", "set_search_threads", "shared_vectors"]
