"""The `--engine ray` path: batch scoring on a Ray cluster (one bundle copy per actor, one actor
per CPU slot), checkpointed chunk by chunk like the local engine; and bulk item embedding on Ray
Data.

Scoring: the driver reads the users file in the local engine's chunks, skips the chunks a killed
run already finished, and hands the others to the actors; each scored chunk comes back through
Ray's object store and the driver checkpoints it in the local engine's format
(`recsys.batch.Checkpoints`, `.OUT.parts/`), then publishes one file by rename. Only the bundle
has to be on storage every node reads; the input and the output stay with the driver.

Ray is an optional extra (`pip install 'recsys[ray]'`). Locally `ray.init()` starts a one-machine
cluster; set RAY_ADDRESS to use a running one.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.errors import DataError, RecsysError

INSTALL_HINT = "the ray engine needs Ray: pip install 'recsys[ray]' (or: pip install 'ray[data]')"
IN_FLIGHT_PER_ACTOR = 2   # one chunk being scored, one queued: an actor never waits on the driver
ACTOR_RESTARTS = 2        # a dead actor (its worker or node lost) is restarted, its chunk retried


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data ships with the "data" extra)
    except ImportError as exc:
        raise RecsysError(INSTALL_HINT) from exc
    return ray


class _Cluster:
    """Connect to RAY_ADDRESS, or start a local Ray for this job and stop it afterwards.

    `spare_slots`: CPU slots a local Ray gets beyond the workers (Ray Data's read and write tasks
    need one: with every slot held by a model actor they are never scheduled).
    """

    def __init__(self, workers: int | None, spare_slots: int = 0) -> None:
        self.ray = require_ray()
        self.started = False
        self.workers = workers
        self.spare_slots = spare_slots

    def __enter__(self):
        ray = self.ray
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            options = {"include_dashboard": False, "log_to_driver": False,
                       "logging_level": "ERROR"}
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(num_cpus=(self.workers or os.cpu_count() or 1) + self.spare_slots,
                         **options)
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
    """One Ray actor: loads the bundle once, then scores every chunk it is given."""

    def __init__(self, bundle: str, k: int, exclude_seen: bool, explain: bool,
                 live=None) -> None:
        from recsys.batch import warn_lightgbm_predict
        from recsys.index import set_search_threads
        from recsys.live_state import apply_snapshot
        from recsys.recommender import Recommender

        set_search_threads(1)  # one model copy per CPU slot: no nested thread pools
        self.recommender = Recommender.load(bundle, threads=1).with_compiled_ranker(
            warn_lightgbm_predict)
        if live is not None:  # the driver's snapshot of the live store, as the local engine's
            self.recommender = apply_snapshot(self.recommender, live)
        self.options = {"k": k, "exclude_seen": exclude_seen, "explain": explain, "live": live}

    def score(self, chunk: int, batch: pa.RecordBatch) -> tuple[int, pa.Table, dict, str]:
        """(chunk, rows, counts, id of the Ray node that scored it)."""
        import ray

        from recsys.batch import score_chunk

        table, stats = score_chunk(self.recommender, batch, **self.options)
        return chunk, table, stats, ray.get_runtime_context().get_node_id()


def score_with_ray(models, users, out: Path, *, k: int, chunk_size: int, exclude_seen: bool,
                   explain: bool, workers: int | None = None, progress: bool = True,
                   store_location: str | None = None) -> tuple[dict, str, dict | None]:
    """Score `users` (a checked `recsys.batch.UsersFile`) on Ray; returns (counts, version,
    live-store summary or None). With `store_location` the driver reads the live store once
    (`recsys.batch.read_live_state`, recorded for a resume) and every actor applies it.

    Besides the local engine's counts: `workers` (actors) and `nodes` ({Ray node id: chunks it
    scored in this run}; resumed chunks are not in it).
    """
    from tqdm import tqdm

    from recsys.batch import (
        Checkpoints,
        add_counts,
        chunks_to_score,
        job_key,
        new_counts,
        read_live_state,
    )
    from recsys.bundle_versions import read_manifest, resolve_bundle

    bundle = resolve_bundle(models)
    version = read_manifest(bundle)["version"]
    options = {"k": k, "chunk_size": chunk_size, "exclude_seen": exclude_seen,
               "explain": explain, "engine": "ray", "store": store_location}
    counts, nodes = new_counts(), {}
    with _Cluster(workers) as ray:
        parts = Checkpoints(out, job_key(users, version, options))
        live, live_report = (read_live_state(store_location, parts) if store_location
                             else (None, None))
        # the CPU slots free now: an actor asked for beyond them would wait, and its chunks too
        n_workers = int(workers) if workers else \
            max(1, int(ray.available_resources().get("CPU", 1)))
        scorer = ray.remote(num_cpus=1, max_restarts=ACTOR_RESTARTS,
                            max_task_retries=ACTOR_RESTARTS)(BundleScorer)
        live_ref = ray.put(live) if live is not None else None
        actors = [scorer.remote(str(bundle), k, exclude_seen, explain, live_ref)
                  for _ in range(n_workers)]
        in_flight: dict = {}   # object ref -> (index of the actor scoring it, users in the chunk)
        load = [0] * n_workers
        bar = tqdm(total=users.rows, unit="user", desc="batch-score (ray)", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)

        def finish_one() -> None:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            actor, rows = in_flight.pop(ref)
            load[actor] -= 1
            chunk, table, stats, node = ray.get(ref)
            parts.write(chunk, table, stats)
            add_counts(counts, stats)
            nodes[node] = nodes.get(node, 0) + 1
            bar.update(rows)

        try:
            for chunk, batch in chunks_to_score(users, chunk_size, parts, counts, bar):
                while len(in_flight) >= IN_FLIGHT_PER_ACTOR * n_workers:
                    finish_one()
                actor = load.index(min(load))
                in_flight[actors[actor].score.remote(chunk, batch)] = (actor, batch.num_rows)
                load[actor] += 1
            while in_flight:
                finish_one()
        except DataError:
            parts.discard()  # the input is bad: its checkpoints are worth nothing
            raise
        finally:
            bar.close()
    parts.publish(explain)
    counts["workers"] = n_workers
    counts["nodes"] = nodes
    return counts, version, live_report


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
    with _Cluster(workers, spare_slots=1) as ray:
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
