"""The item index: FAISS inner-product search over normalised item vectors.

Rows of the index are item rows of the bundle (row = position in items.parquet); mapping to
external ids stays outside, in the bundle's item table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import faiss
import numpy as np

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
    def fit(self, vectors: np.ndarray) -> "ItemIndex":
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
        excluded = [set() for _ in range(m)] if exclude is None else [
            set(int(r) for r in e) for e in exclude]
        if len(excluded) != m:
            raise ValueError(f"exclude has {len(excluded)} entries for {m} queries")

        pending = np.arange(m)
        fetch = k + max((len(e) for e in excluded), default=0)
        while pending.size:
            fetch = int(min(fetch, index.ntotal))
            scores, rows = index.search(queries[pending], fetch)
            still = []
            for q, query_scores, query_rows in zip(pending, scores, rows):
                keep = [(r, s) for r, s in zip(query_rows, query_scores)
                        if r >= 0 and r not in excluded[q]]
                if len(keep) < k and fetch >= index.ntotal:
                    # an approximate index can miss items even when asked for all of them:
                    # finish exactly over the eligible rows, so heavy filters still get k
                    keep = self._exact(queries[q], excluded[q], k)
                enough = len(keep) >= k or fetch >= index.ntotal
                if enough:
                    keep = keep[:k]
                    rows_out[q, :len(keep)] = [r for r, _ in keep]
                    scores_out[q, :len(keep)] = [s for _, s in keep]
                else:
                    still.append(q)
            pending = np.asarray(still, dtype=np.int64)
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
    def load(cls, path: str | os.PathLike[str], **settings) -> "ItemIndex":
        try:
            index = faiss.read_index(str(path))
        except Exception as exc:  # faiss raises RuntimeError with a C++ message
            raise BundleError(f"{path}: not a readable FAISS index ({exc})") from exc
        item_index = cls(**settings)
        item_index.index_ = index
        item_index._tune()
        return item_index


def set_search_threads(threads: int) -> None:
    """FAISS's OpenMP pool: on a small box one thread per search beats fighting over cores."""
    faiss.omp_set_num_threads(int(threads))


__all__ = ["ItemIndex", "KINDS", "set_search_threads"]
