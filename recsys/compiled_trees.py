"""The ranker's trees compiled to machine code (lleaves, on LLVM), checked against LightGBM.

LightGBM's own `predict` spends most of its time outside the trees on the few hundred rows of
one request; the compiled trees cost a fraction of it (docs/benchmarks.md, Serving). The
compiled function is built in memory from the booster's model text at load time and never
written to or read from disk (a cached object file would be native code read from disk, which
is worse than a pickle). Before it is used it must give LightGBM's scores on probe rows that
sit on both sides of every split threshold and on missing values; if it does not, the caller
keeps LightGBM's predict.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import lightgbm as lgb
import numpy as np

log = logging.getLogger(__name__)

# scores are sums of leaf values: only the summation order may differ, never a branch taken
TOLERANCE = 1e-9
PROBE_ROWS = 512
ZERO_THRESHOLD = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (1e-35f, a float)
# compiled models kept per process, by the model file's content: a rollback to a version served
# a moment ago, or a test loading the same bundle again, does not compile it again
KEEP = 4


class CompiledTreesError(RuntimeError):
    """The trees could not be compiled, or the compiled trees disagree with LightGBM."""


class CompiledTrees:
    """`predict(rows) -> scores` as `Booster.predict(rows)` gives them, in compiled code.

    Rows are the ranker's float32 matrix in model column order; scores are float64, as
    LightGBM's. The call releases the GIL, like LightGBM's.
    """

    def __init__(self, model, compile_s: float) -> None:
        self._model = model
        self.compile_s = compile_s

    def predict(self, rows: np.ndarray, threads: int = 1) -> np.ndarray:
        # a row-major float64 copy, what the compiled function reads (the caller's rows stay as
        # they were; the feature block is column-major)
        data = np.array(rows, dtype=np.float64, order="C")
        # LightGBM reads any |value| <= 1e-35 as exactly 0 before it walks the trees (its
        # kZeroThreshold); lleaves compares the value as given, and the two then part ways at
        # splits LightGBM places at +-1e-35 (the probe rows found it)
        data[np.abs(data) <= ZERO_THRESHOLD] = 0.0
        # below ~10k rows, lleaves' per-call thread pool costs more than it saves
        n_jobs = 1 if threads == 1 or len(data) < 10_000 else (threads or None)
        return self._model.predict(data, n_jobs=n_jobs)


_cache: OrderedDict[str, CompiledTrees] = OrderedDict()
_cache_lock = threading.Lock()


def compile_trees(booster: lgb.Booster) -> CompiledTrees:
    """Compile `booster`'s trees and check them against `booster`; raise CompiledTreesError if
    lleaves is missing, fails, or disagrees."""
    text = booster.model_to_string()
    key = hashlib.sha256(text.encode()).hexdigest()
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        import lleaves
    except ImportError as exc:
        raise CompiledTreesError("lleaves is not installed (pip install lleaves)") from exc
    started = time.perf_counter()
    try:
        # lleaves parses a file: the model text goes to a private temporary one, read once
        with tempfile.TemporaryDirectory(prefix="recsys-trees-") as folder:
            model_file = Path(folder) / "model.txt"
            model_file.write_text(text)
            model = lleaves.Model(model_file=str(model_file))
            model.compile()  # no cache file: see the module docstring
    except Exception as exc:  # an LLVM or parser failure: LightGBM's predict still works
        raise CompiledTreesError(f"lleaves could not compile the ranker's trees "
                                 f"({type(exc).__name__}: {exc})") from exc
    compiled = CompiledTrees(model, time.perf_counter() - started)
    check_agreement(compiled, booster)
    with _cache_lock:
        _cache[key] = compiled
        while len(_cache) > KEEP:
            _cache.popitem(last=False)
    log.info("ranker trees compiled in %.2fs (%d trees)", compiled.compile_s,
             booster.num_trees())
    return compiled


def probe_rows(booster: lgb.Booster, n: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """Float32 rows whose every column takes values just below, at and just above the model's
    split thresholds on that feature, and sometimes NaN: rows that reach every kind of branch
    a served request can."""
    thresholds: list[set[float]] = [set() for _ in range(booster.num_feature())]
    for tree in booster.dump_model()["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" in node:
                threshold = node["threshold"]
                if isinstance(threshold, (int, float)) and math.isfinite(threshold):
                    thresholds[node["split_feature"]].add(float(threshold))
                stack.extend((node["left_child"], node["right_child"]))
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, len(thresholds)), dtype=np.float32)
    for column, values in enumerate(thresholds):
        at = np.array(sorted(values) or [0.0], dtype=np.float32)
        pool = np.concatenate([at, np.nextafter(at, np.float32(-np.inf)),
                               np.nextafter(at, np.float32(np.inf)),
                               np.array([0.0, np.nan], dtype=np.float32)])
        rows[:, column] = rng.choice(pool, n)
    return rows


def check_agreement(compiled: CompiledTrees, booster: lgb.Booster) -> None:
    rows = probe_rows(booster)
    expected = booster.predict(rows, num_threads=1)
    got = compiled.predict(rows)
    error = np.abs(got - expected) / np.maximum(1.0, np.abs(expected))
    worst = int(np.argmax(error))
    if not np.all(np.isfinite(got)) or error[worst] > TOLERANCE:
        raise CompiledTreesError(
            f"compiled trees disagree with LightGBM on probe row {worst}: "
            f"{got[worst]!r} against {expected[worst]!r}")


__all__ = ["CompiledTrees", "CompiledTreesError", "compile_trees", "probe_rows"]
