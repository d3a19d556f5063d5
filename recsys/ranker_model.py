"""The ranker at prediction time: the learned LightGBM model read from its text format, or the
sources' own order standing in for a model that training found unable to rank."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl

from features.build import FEATURES, Candidates
from recsys.compiled_trees import CompiledTrees, compile_trees
from recsys.errors import BundleError


class Ranker:
    """Scores feature rows; higher is better. Wraps a LightGBM booster (text format, no pickle).

    `with_compiled_trees()` gives the same ranker predicting through the trees compiled to
    machine code (recsys.compiled_trees), much cheaper on one request's rows and checked to give
    LightGBM's scores; SHAP contributions always come from LightGBM.
    """

    def __init__(self, booster: lgb.Booster, features: list[str], *, threads: int = 0,
                 trees: CompiledTrees | None = None) -> None:
        self.booster = booster
        self.features = list(features)
        self.threads = threads
        self.trees = trees
        model_features = booster.feature_name()
        if model_features != self.features:
            raise BundleError(f"ranker was trained on features {model_features}, "
                              f"the bundle declares {self.features}")
        # where the model's columns sit in a `feature_matrix` block; None when the model uses
        # features recsys does not build (rankers trained on other frames read frames only)
        self._block_columns = [FEATURES.index(name) for name in self.features] \
            if set(self.features) <= set(FEATURES) else None
        self._block_in_order = self.features == list(FEATURES)

    def matrix(self, rows: pl.DataFrame | np.ndarray) -> np.ndarray:
        """The model's input: `rows` as a frame with (at least) the model's features, or as the
        block of `features.build.feature_matrix` (columns `FEATURES`, in that order)."""
        if isinstance(rows, np.ndarray):
            if rows.ndim != 2 or rows.shape[1] != len(FEATURES):
                raise ValueError(f"feature rows have shape {rows.shape}, expected "
                                 f"[n, {len(FEATURES)}] in FEATURES order")
            if self._block_columns is None:
                raise ValueError(f"this ranker uses features outside FEATURES ({self.features}):"
                                 " pass a frame")
            if not self._block_in_order:
                rows = rows[:, self._block_columns]
            return rows.astype(np.float32, copy=False)
        # a frame already in model column order is read as is: `select` has a cost per call
        frame = rows if rows.columns == self.features else rows.select(self.features)
        return frame.to_numpy().astype(np.float32, copy=False)

    @property
    def compiled(self) -> bool:
        return self.trees is not None

    def with_compiled_trees(self) -> Ranker:
        """This ranker predicting through compiled trees; raises CompiledTreesError (lleaves
        missing, failing, or disagreeing with LightGBM), and then this ranker still works."""
        if self.trees is not None:
            return self
        return Ranker(self.booster, self.features, threads=self.threads,
                      trees=compile_trees(self.booster))

    def predict(self, rows: pl.DataFrame | np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float32)
        matrix = self.matrix(rows)
        scores = self.trees.predict(matrix, self.threads) if self.trees is not None else \
            self.booster.predict(matrix, num_threads=self.threads)
        return scores.astype(np.float32)

    def contributions(self, rows: pl.DataFrame) -> np.ndarray:
        """Per-feature contributions (SHAP values) [n, n_features + 1]; the last column is the
        bias."""
        return self.booster.predict(self.matrix(rows), pred_contrib=True, num_threads=self.threads)

    def save(self, path: str | os.PathLike[str]) -> None:
        self.booster.save_model(str(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str], features: list[str], *, threads: int = 0) -> Ranker:
        path = Path(path)
        # LightGBM aborts the whole process on some truncated model files: check the end marker
        data = path.read_bytes()
        if b"end of trees" not in data:
            raise BundleError(f"{path}: not a complete LightGBM model "
                              "(truncated: no 'end of trees')")
        check_tree_sizes(data, path)
        try:  # from the bytes already read: the file is read once
            booster = lgb.Booster(model_str=data.decode())
        except (lgb.basic.LightGBMError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: not a readable LightGBM model ({exc})") from exc
        return cls(booster, features, threads=threads)


def check_tree_sizes(data: bytes, path: Path) -> None:
    """LightGBM cuts the model text into trees by its `tree_sizes` header and parses them on
    several threads, where a parse error ends the whole process ("terminate called without an
    active exception": a bundle whose ranker.txt is edited by hand kills the server during a
    reload). So the cuts are checked here first: every one must start a tree,
    in order, and the last must end where the trees end."""
    header = re.search(rb"^tree_sizes=([0-9 ]*)$", data, re.MULTILINE)
    if header is None:
        return  # without it LightGBM parses one tree after another and raises on errors
    position = data.find(b"Tree=", header.end())
    for i, size in enumerate(int(size) for size in header.group(1).split()):
        if position < 0 or not data.startswith(b"Tree=%d\n" % i, position):
            raise BundleError(f"{path}: LightGBM model whose tree_sizes do not match its trees "
                              f"(tree {i}): the file was edited or is corrupt")
        position += size
    if position < 0 or not data.startswith(b"end of trees", position):
        raise BundleError(f"{path}: LightGBM model whose tree_sizes do not match its trees "
                          "(they do not end where the trees end)")


def retrieval_order_scores(candidates: Candidates) -> np.ndarray:
    """A score that reproduces the sources' own order: best rank across sources first."""
    best = np.minimum(np.minimum(candidates.sem_rank, candidates.covis_rank), candidates.pop_rank)
    return (-best).astype(np.float32)


class RetrievalOrder:
    """Stands in for a ranker that training found unable to rank: scores candidates in the
    sources' own order (as `retrieval_order_scores`), from the source-rank feature columns, so
    serving, batch scoring, evaluation and the retrain gate all see the order that is served."""

    compiled = False
    _RANKS = ("sem_rank", "covis_rank", "pop_rank")

    def __init__(self, features: Sequence[str]) -> None:
        self.features = list(features)

    def _ranks(self, rows: pl.DataFrame | np.ndarray) -> np.ndarray:
        if isinstance(rows, np.ndarray):
            return rows[:, [FEATURES.index(name) for name in self._RANKS]]
        return rows.select(self._RANKS).to_numpy()

    def predict(self, rows: pl.DataFrame | np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float32)
        return (-self._ranks(rows).min(axis=1)).astype(np.float32)

    def contributions(self, rows: pl.DataFrame) -> np.ndarray:
        """The source that ranked each candidate best gets the whole score, so an explanation
        names it (e.g. "similar to what you viewed"); [n, n_features + 1], the last the bias."""
        out = np.zeros((len(rows), len(self.features) + 1))
        if len(rows):
            ranks = self._ranks(rows)
            best = ranks.argmin(axis=1)
            for source, name in enumerate(self._RANKS):
                if name in self.features:
                    out[best == source, self.features.index(name)] = 1.0
        return out
