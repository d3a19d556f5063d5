"""The `--engine ray` path: batch scoring and bulk item embedding on Ray Data
(read_parquet -> map_batches with one model copy per worker, a GPU each where the cluster has
them -> write_parquet), merged into one output file published by rename.

Ray is an optional extra (`pip install 'recsys[ray]'`). Locally `ray.init()` starts a one-machine
cluster; set RAY_ADDRESS to use a running one (the bundle and the files must then be on storage
every node can read). A killed Ray job leaves no output file; a rerun starts the job again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.errors import RecsysError

INSTALL_HINT = "the ray engine needs Ray: pip install 'recsys[ray]' (or: pip install 'ray[data]')"
STATS_COLUMN = "_chunk_stats"  # per-batch counts, on the first row of each batch, dropped on merge


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data ships with the "data" extra)
    except ImportError as exc:
        raise RecsysError(INSTALL_HINT) from exc
    return ray


class _Cluster:
    """Connect to RAY_ADDRESS, or start a local Ray for this job and stop it afterwards."""

    def __init__(self, workers: int | None) -> None:
        self.ray = require_ray()
        self.started = False
        self.workers = workers

    def __enter__(self):
        ray = self.ray
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            options = {"include_dashboard": False, "log_to_driver": False,
                       "logging_level": "ERROR"}
            if address:
                ray.init(address=address, **options)
            else:
                # one CPU slot beyond the model workers for Ray Data's read and write tasks:
                # with every slot held by a worker the reads never get scheduled
                ray.init(num_cpus=(self.workers or os.cpu_count() or 1) + 1, **options)
            self.started = True
        return ray

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()


def _gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def _worker_count(ray, workers: int | None) -> int:
    if workers:
        return int(workers)
    gpus = _gpus(ray)
    return gpus if gpus else max(1, int(ray.cluster_resources().get("CPU", 2)) - 1)


class BundleScorer:
    """One Ray actor: loads the bundle once, then scores every batch it is given."""

    def __init__(self, bundle: str, k: int, exclude_seen: bool, explain: bool) -> None:
        from recsys.index import set_search_threads
        from recsys.recommender import Recommender

        set_search_threads(1)  # one model copy per core: no nested thread pools
        self.recommender = Recommender.load(bundle, threads=1)
        self.options = {"k": k, "exclude_seen": exclude_seen, "explain": explain}

    def __call__(self, batch: pa.Table) -> pa.Table:
        from recsys.batch import score_chunk

        table, stats = score_chunk(self.recommender, batch, **self.options)
        marks = [json.dumps(stats)] + [None] * (table.num_rows - 1) if table.num_rows else []
        return table.append_column(STATS_COLUMN, pa.array(marks, pa.string()))


def score_with_ray(models, users, out: Path, *, k: int, chunk_size: int, exclude_seen: bool,
                   explain: bool, workers: int | None = None,
                   progress: bool = True) -> tuple[dict, str]:
    """Score `users` (a checked `recsys.batch.UsersFile`) on Ray; returns (counts, version)."""
    from recsys.batch import EXPLAIN_SCHEMA, OUTPUT_SCHEMA, new_counts
    from recsys.bundle import read_manifest, resolve_bundle

    bundle = resolve_bundle(models)
    version = read_manifest(bundle)["version"]
    parts = out.parent / f".{out.name}.ray-parts"
    shutil.rmtree(parts, ignore_errors=True)  # Ray output of a killed run: redo it
    with _Cluster(workers) as ray:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True   # output in input order, rerun = same file
        context.enable_progress_bars = progress
        n_workers = _worker_count(ray, workers)
        gpu = 1 if _gpus(ray) and not workers else 0
        columns = ["user_id"] + (["history"] if users.has_history else [])
        # A small file is read as one block, which one actor would score alone: split it so
        # every worker gets blocks (this materialises the ids and histories in the object store,
        # which spills to disk when they do not fit in memory).
        blocks = max(n_workers, min(-(-users.rows // chunk_size), 8 * n_workers))
        dataset = ray.data.read_parquet(str(users.path)).select_columns(columns
                                                                        ).repartition(blocks)
        scored = dataset.map_batches(
            BundleScorer, fn_constructor_kwargs={"bundle": str(bundle), "k": k,
                                                 "exclude_seen": exclude_seen, "explain": explain},
            batch_size=chunk_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=n_workers), num_cpus=1, num_gpus=gpu)
        try:
            with warnings.catch_warnings():
                # fewer input blocks than workers (a tiny input) is fine: some workers idle
                warnings.filterwarnings("ignore", message=".*minimum number of concurrent actors")
                scored.write_parquet(str(parts))
            counts = new_counts()
            files = sorted(parts.glob("*.parquet"))
            schema = EXPLAIN_SCHEMA if explain else OUTPUT_SCHEMA
            _merge_scored(files, out, schema, counts)
        finally:
            shutil.rmtree(parts, ignore_errors=True)
    counts["workers"] = n_workers
    return counts, version


def _merge_scored(files: list[Path], out: Path, schema: pa.Schema, counts: dict) -> None:
    from recsys.batch import add_counts, merge_parquet

    # Read the per-batch counts first (one small column), then stream the rows into `out`.
    for file in files:
        marks = pq.read_table(file, columns=[STATS_COLUMN]).column(STATS_COLUMN)
        for mark in marks.drop_null().to_pylist():
            add_counts(counts, json.loads(mark))
    merge_parquet(files, out, schema)


# -- bulk item embedding ----------------------------------------------------------------------
class TextEmbedder:
    """One Ray actor holding one encoder copy (on a GPU when it was given one)."""

    def __init__(self, encoder: str | None, max_length: int) -> None:
        import torch

        from recsys.encoder import Encoder

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(1)
        self.encoder = Encoder(encoder, device=device, max_length=max_length)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [t or "" for t in batch.column("text").to_pylist()]
        vectors = np.asarray(self.encoder.encode(texts), dtype=np.float32)
        dim = vectors.shape[1]
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return pa.table({"item_id": batch.column("item_id"),
                         "vector": pa.FixedSizeListArray.from_arrays(flat, dim)})


def embed_with_ray(items_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                   encoder: str | None = None, max_length: int = 128, batch_size: int = 256,
                   workers: int | None = None, progress: bool = True) -> dict:
    """Embed the `text` (else `title`) of every item in an items Parquet file on Ray Data.

    Writes (item_id, vector) to `out_path` atomically, in input order; returns a summary.
    """
    from recsys.batch import merge_parquet
    from recsys.errors import DataError

    started = time.perf_counter()
    items_path, out = Path(items_path), Path(out_path)
    if not items_path.is_file():
        raise DataError("file not found", file=str(items_path))
    names = pq.read_schema(items_path).names
    if "item_id" not in names or not {"text", "title"} & set(names):
        raise DataError("needs columns item_id and text (or title)", file=str(items_path))
    text_column = "text" if "text" in names else "title"
    parts = out.parent / f".{out.name}.ray-parts"
    shutil.rmtree(parts, ignore_errors=True)
    with _Cluster(workers) as ray:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = progress
        n_workers = _worker_count(ray, workers)
        gpu = 1 if _gpus(ray) and not workers else 0
        rows = pq.ParquetFile(items_path).metadata.num_rows
        blocks = max(n_workers, min(-(-rows // batch_size), 8 * n_workers))
        items = ray.data.read_parquet(str(items_path)).select_columns(
            ["item_id", text_column]).repartition(blocks)
        if text_column != "text":
            items = items.rename_columns({text_column: "text"})
        vectors = items.map_batches(
            TextEmbedder, fn_constructor_kwargs={"encoder": encoder, "max_length": max_length},
            batch_size=batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=n_workers), num_cpus=1, num_gpus=gpu)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*minimum number of concurrent actors")
                vectors.write_parquet(str(parts))
            files = sorted(parts.glob("*.parquet"))
            schema = pq.read_schema(files[0]).remove_metadata() if files else None
            rows = merge_parquet(files, out, schema) if schema is not None else 0
        finally:
            shutil.rmtree(parts, ignore_errors=True)
    seconds = time.perf_counter() - started
    return {"engine": "ray", "items": rows, "workers": n_workers, "gpus": gpu,
            "seconds": round(seconds, 2), "items_per_s": round(rows / max(seconds, 1e-9), 1),
            "output": str(out)}


__all__ = ["score_with_ray", "embed_with_ray", "require_ray", "INSTALL_HINT"]
