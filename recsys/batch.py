"""`recsys batch-score`: users Parquet in, top-k recommendations out (Parquet, or CSV when `--out`
ends in .csv), with the API's `Recommender`. Streams the input in chunks, checkpoints each chunk,
and publishes one file by rename.

Output rows: (user_id, rank, item_id, score[, reasons as a JSON string]) with rank 1-based. A
killed job leaves no file at `out`; rerunning it resumes from the finished chunks (kept in a hidden
`.OUT.parts` directory beside `out`, tied to the input file, the model version and the options).

By default the live store (the models folder's events.sqlite, or `store=`) is applied as the
server applies it (recsys.live_state): items deleted through the API never come out, items added
can, and each user's live events extend their history. It is read once at the start, and the
sequence numbers read are kept with the checkpoints, so a resumed run scores the same state.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from tqdm import tqdm

from recsys.atomic_files import atomic_path, fsync_dir
from recsys.errors import DataError, NotFoundError, RecsysError
from recsys.store.export import shown

USER_COLUMN = "user_id"
HISTORY_COLUMN = "history"
MAX_K = 1000
STATS_KEY = b"recsys.batch"  # per-chunk counts, kept in each checkpoint file's schema metadata
ENGINES = ("local", "ray")
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}

OUTPUT_SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()),
                           ("item_id", pa.string()), ("score", pa.float32())])
EXPLAIN_SCHEMA = OUTPUT_SCHEMA.append(pa.field("reasons", pa.string()))


@dataclass(frozen=True)
class UsersFile:
    """What the input file holds, checked before any scoring starts."""

    path: Path
    rows: int
    has_history: bool


def batch_score(models: str | os.PathLike[str], users_path: str | os.PathLike[str],
                out_path: str | os.PathLike[str], *, k: int = 10, chunk_size: int = 2000,
                exclude_seen: bool = True, engine: str = "local", explain: bool = False,
                progress: bool = True, workers: int | None = None, store: str | None = None,
                live: bool = True) -> dict:
    """Score every user in `users_path`, write `out_path` atomically, return the run summary.

    `store`: the live store's URL or path (default: MODELS/events.sqlite when there is one);
    `live=False` scores the bundle alone."""
    started = time.perf_counter()
    if not 1 <= k <= MAX_K:
        raise RecsysError(f"--k must be between 1 and {MAX_K}, got {k}")
    if chunk_size < 1:
        raise RecsysError(f"--chunk-size must be at least 1, got {chunk_size}")
    if engine not in ENGINES:
        raise RecsysError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    out = Path(out_path)
    output_format(out)
    users = inspect_users(users_path)
    if out.resolve() == users.path.resolve():
        raise RecsysError(f"--out {out} would overwrite the input file")
    if store is not None and not live:
        raise RecsysError("--store and --no-live contradict each other: choose one")
    store_location = live_store_location(models, store) if live else None

    live_report = None
    if engine == "ray":
        from recsys.ray_engine import score_with_ray

        counts, version, live_report = score_with_ray(
            models, users, out, k=k, chunk_size=chunk_size, exclude_seen=exclude_seen,
            explain=explain, workers=workers, progress=progress, store_location=store_location)
    else:
        counts, version, live_report = _score_local(
            models, users, out, k=k, chunk_size=chunk_size, exclude_seen=exclude_seen,
            explain=explain, progress=progress, store_location=store_location)
    seconds = time.perf_counter() - started
    return {
        "engine": engine, "model_version": version, "input": str(users.path), "output": str(out),
        "users_in": users.rows, "users_out": counts["users"], "rows_out": counts["rows"],
        "k": k, "sources": counts["sources"], "unknown_history_items": counts["unknown_items"],
        "chunks": counts["chunks"], "resumed_chunks": counts.get("resumed", 0),
        "seconds": round(seconds, 2), "users_per_s": round(users.rows / max(seconds, 1e-9), 1),
        "peak_rss_mb": peak_rss_mb(), "live_store": live_report,
        **({"workers": counts["workers"], "nodes": counts["nodes"]} if "nodes" in counts else {}),
    }


def live_store_location(models: str | os.PathLike[str], store: str | None) -> str | None:
    """The live store to apply: `store` (a URL or path, which must exist), else the models
    folder's own when there is one (MODELS or MODELS/VERSION given), else None."""
    from recsys.bundle_versions import MANIFEST
    from recsys.store.export import STORE_FILE, existing_store

    if store is not None:
        try:
            return existing_store(store)
        except NotFoundError as exc:
            raise NotFoundError(f"--store {exc}") from exc
    models = Path(models)
    # MODELS/VERSION names one bundle: the store is its models folder's
    for folder in [models] + ([models.parent] if (models / MANIFEST).is_file() else []):
        if (folder / STORE_FILE).is_file():
            return str(folder / STORE_FILE)
    return None


def output_format(out: Path) -> str:
    """"parquet" or "csv", from the extension of `out`; any other extension is refused."""
    fmt = OUTPUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise RecsysError(f"--out {out}: unknown output format "
                          f"{out.suffix or '(no extension)'!r}: name the file .parquet or .csv")
    return fmt


# -- input -------------------------------------------------------------------------------------
def inspect_users(path: str | os.PathLike[str]) -> UsersFile:
    """Check the users file from its metadata alone (no rows read): columns, types, row count."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    try:
        meta = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several kinds for a file that is not Parquet
        raise DataError(f"cannot read Parquet ({exc})", file=str(path)) from exc
    schema = meta.schema_arrow
    if USER_COLUMN not in schema.names:
        raise DataError(f"missing required column (found {', '.join(schema.names) or 'none'})",
                        file=str(path), column=USER_COLUMN)
    if not _is_text(schema.field(USER_COLUMN).type):
        raise DataError(f"must hold strings, found {schema.field(USER_COLUMN).type} "
                        "(cast the ids to text)", file=str(path), column=USER_COLUMN)
    has_history = HISTORY_COLUMN in schema.names
    if has_history:
        kind = schema.field(HISTORY_COLUMN).type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) \
                or not _is_text(kind.value_type):
            raise DataError(f"must be a list of item id strings, found {kind}",
                            file=str(path), column=HISTORY_COLUMN)
    rows = meta.metadata.num_rows
    if rows == 0:
        raise DataError("no rows: nothing to score", file=str(path))
    # Row-group statistics usually say whether any user id is null before a row is read.
    column = schema.names.index(USER_COLUMN)
    offset = 0
    for group in range(meta.metadata.num_row_groups):
        stats = meta.metadata.row_group(group).column(column).statistics
        if stats is not None and stats.has_null_count and stats.null_count > 0:
            _raise_null_user(path, offset, pq.read_table(path, columns=[USER_COLUMN]))
        offset += meta.metadata.row_group(group).num_rows
    return UsersFile(path, rows, has_history)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or \
        (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind))


def _raise_null_user(path: Path, offset: int, table: pa.Table) -> None:
    nulls = np.flatnonzero(table.column(USER_COLUMN).is_null().to_numpy(zero_copy_only=False))
    row = int(nulls[0]) if nulls.size else offset
    raise DataError("empty user id", file=str(path), row=row, column=USER_COLUMN)


def read_chunks(users: UsersFile, chunk_size: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row, batch) for each chunk, streamed row group by row group."""
    columns = [USER_COLUMN] + ([HISTORY_COLUMN] if users.has_history else [])
    offset = 0
    for batch in pq.ParquetFile(users.path).iter_batches(batch_size=chunk_size, columns=columns):
        if batch.column(USER_COLUMN).null_count:
            _raise_null_user(users.path, offset, pa.Table.from_batches([batch]))
        yield offset, batch
        offset += batch.num_rows


# -- scoring one chunk (shared by the local and the Ray engine) ---------------------------------
def score_chunk(recommender, batch: pa.RecordBatch | pa.Table, *, k: int, exclude_seen: bool,
                explain: bool, live=None) -> tuple[pa.Table, dict]:
    """Recommendations for one chunk of users in one `recommend_histories` call.

    A row's `history`, when given, is what that user is scored on (unknown item ids skipped);
    otherwise a user gets their training history followed, with a `live` snapshot (whose item
    changes `recommender` already has), by their live events as the server ranks them; a user
    with neither gets popularity.
    """
    from recsys.live_state import live_history
    from recsys.recommender import Filters, History

    user_ids = [str(u) for u in batch.column(USER_COLUMN).to_pylist()]
    given = batch.column(HISTORY_COLUMN).to_pylist() if HISTORY_COLUMN in batch.schema.names \
        else [None] * len(user_ids)
    histories, unknown = [], 0
    for user, items in zip(user_ids, given, strict=True):
        if items is None:
            histories.append(live_history(recommender, live, user) if live is not None
                             else recommender.users.get(user) or History())
            continue
        rows = [recommender.item_rows[i] for i in items
                if i is not None and i in recommender.item_rows]
        unknown += len(items) - len(rows)
        histories.append(History(rows))
    # with a live snapshot, time is measured from its latest event, as the server measures it
    recs = recommender.recommend_histories(histories, k, Filters(exclude_seen=exclude_seen),
                                           now=live.now(recommender) if live is not None
                                           else None, explain=explain, user_ids=user_ids)
    sizes = np.fromiter((len(r.item_ids) for r in recs), dtype=np.int64, count=len(recs))
    columns = {
        "user_id": pa.array(np.repeat(np.asarray(user_ids, dtype=object), sizes), pa.string()),
        "rank": pa.array(np.concatenate([np.arange(1, s + 1) for s in sizes]) if len(recs)
                         else np.zeros(0), pa.int32()),
        "item_id": pa.array([i for r in recs for i in r.item_ids], pa.string()),
        "score": pa.array(np.fromiter((s for r in recs for s in r.scores), dtype=np.float32,
                                      count=int(sizes.sum())), pa.float32()),
    }
    schema = OUTPUT_SCHEMA
    if explain:
        columns["reasons"] = pa.array([json.dumps(reason, sort_keys=True) for r in recs
                                       for reason in (r.reasons or [{}] * len(r.item_ids))],
                                      pa.string())
        schema = EXPLAIN_SCHEMA
    sources: dict[str, int] = {}
    for r in recs:
        sources[r.source] = sources.get(r.source, 0) + 1
    stats = {"users": int((sizes > 0).sum()), "rows": int(sizes.sum()), "sources": sources,
             "unknown_items": unknown}
    return pa.Table.from_pydict(columns, schema=schema), stats


# -- the local engine --------------------------------------------------------------------------
SCORING_THREADS = 2


def warn_lightgbm_predict(reason: str) -> None:
    """Where the ranker's trees do not compile: the job still runs, on LightGBM's predict."""
    print(f"warning: scoring with LightGBM's predict: {reason}", file=sys.stderr)


def chunks_to_score(users: UsersFile, chunk_size: int, parts: Checkpoints, counts: dict,
                    bar) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(chunk number, rows) of each chunk an earlier attempt of the job did not write; those
    it wrote are counted as resumed. Both engines score what this yields."""
    for chunk, (_, batch) in enumerate(read_chunks(users, chunk_size)):
        stats = parts.done(chunk)
        if stats is None:
            yield chunk, batch
            continue
        counts["resumed"] += 1
        add_counts(counts, stats)
        bar.update(batch.num_rows)


def _score_local(models, users: UsersFile, out: Path, *, k: int, chunk_size: int,
                 exclude_seen: bool, explain: bool, progress: bool,
                 store_location: str | None = None) -> tuple[dict, str, dict | None]:
    from recsys.index import set_search_threads
    from recsys.recommender import Recommender

    # the compiled trees, as the server predicts: the ranker is most of a chunk's time otherwise
    recommender = Recommender.load(models).with_compiled_ranker(warn_lightgbm_predict)
    options = {"k": k, "chunk_size": chunk_size, "exclude_seen": exclude_seen,
               "explain": explain, "engine": "local", "store": store_location}
    parts = Checkpoints(out, job_key(users, recommender.version, options))
    live, live_report = None, None
    if store_location is not None:
        from recsys.live_state import apply_snapshot

        live, live_report = read_live_state(store_location, parts)
        recommender = apply_snapshot(recommender, live)
    counts = new_counts()
    bar = tqdm(total=users.rows, unit="user", desc="batch-score", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    # Two chunks are scored at once: FAISS, LightGBM and the compiled loops release the GIL, so
    # one chunk's Python work runs while the other's native work does. Chunks are written in
    # order, at most two are in flight.
    scoring: deque = deque()

    def finish(limit: int) -> None:
        while len(scoring) > limit:
            chunk, rows, future = scoring.popleft()
            table, stats = future.result()
            parts.write(chunk, table, stats)
            add_counts(counts, stats)
            bar.update(rows)

    # One FAISS thread per chunk in flight, as each Ray actor runs: the chunks already fill the
    # cores, and a flat search's sums (so the order of near-tied items) follow its thread count,
    # which is how the two engines give the same rows. OpenMP's setting is per thread: each
    # scoring thread makes it.
    try:
        with ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="batch-score",
                                initializer=set_search_threads, initargs=(1,)) as pool:
            for chunk, batch in chunks_to_score(users, chunk_size, parts, counts, bar):
                scoring.append((chunk, batch.num_rows, pool.submit(
                    score_chunk, recommender, batch, k=k, exclude_seen=exclude_seen,
                    explain=explain, live=live)))
                finish(SCORING_THREADS - 1)
            finish(0)
    except DataError:
        parts.discard()  # the input is bad: its checkpoints are worth nothing
        raise
    finally:
        bar.close()
    parts.publish(explain)
    return counts, recommender.version, live_report


def read_live_state(store_location: str, parts: Checkpoints):
    """The store's live state (a `LiveSnapshot`) and its summary, read up to the sequence
    numbers this job recorded when it first ran (a resume), else up to now (and recorded for a
    resume). Both engines apply it with `recsys.live_state.apply_snapshot`."""
    from recsys.live_state import LiveSnapshot
    from recsys.store import open_store

    recorded = parts.job.get("live") or {}
    store = open_store(store_location)
    try:
        snapshot = LiveSnapshot.read(store, events_seq=recorded.get("events_seq"),
                                     items_seq=recorded.get("items_seq"))
    finally:
        store.close()
    if not recorded:
        parts.note(live={"events_seq": snapshot.events_seq, "items_seq": snapshot.items_seq})
    report = {"store": shown(store_location), "events_seq": snapshot.events_seq,
              "items_seq": snapshot.items_seq, "item_changes": len(snapshot.item_changes),
              "live_users": snapshot.users}
    return snapshot, report


def new_counts() -> dict:
    return {"users": 0, "rows": 0, "sources": {}, "unknown_items": 0, "chunks": 0, "resumed": 0}


def add_counts(counts: dict, stats: dict) -> None:
    counts["chunks"] += 1
    counts["users"] += stats["users"]
    counts["rows"] += stats["rows"]
    counts["unknown_items"] += stats["unknown_items"]
    for source, n in stats["sources"].items():
        counts["sources"][source] = counts["sources"].get(source, 0) + n


def job_key(users: UsersFile, version: str, options: dict) -> str:
    """Identifies one job: same input file (path, size, mtime), bundle version and options."""
    stat = users.path.stat()
    raw = json.dumps({"input": str(users.path.resolve()), "size": stat.st_size,
                      "mtime_ns": stat.st_mtime_ns, "version": version, **options},
                     sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class Checkpoints:
    """Finished chunks of one job as Parquet files in `.OUT.parts/`, each written atomically.

    A rerun of the same job (same key) skips the chunks already there; a different job wipes them.
    `publish` concatenates the chunks, in order, into `out` via a temporary file and a rename.
    """

    def __init__(self, out: Path, key: str) -> None:
        self.out = out
        self.dir = out.parent / f".{out.name}.parts"
        self.job: dict = {}   # job.json: the key, and what the job noted for its resumes
        job = self.dir / "job.json"
        if self.dir.exists():
            try:
                self.job = json.loads(job.read_text())
            except (OSError, ValueError):
                self.job = {}
            if self.job.get("key") != key:
                shutil.rmtree(self.dir)
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            self.job = {}
            self.note(key=key)

    def note(self, **fields) -> None:
        """Keep `fields` in job.json, for a resume of this job to read back from `job`."""
        self.job = {**self.job, **fields}
        with atomic_path(self.dir / "job.json") as tmp:
            tmp.write_text(json.dumps(self.job))

    def path(self, chunk: int) -> Path:
        return self.dir / f"part-{chunk:07d}.parquet"

    def done(self, chunk: int) -> dict | None:
        """The stats of a finished chunk, or None when it still has to be scored."""
        path = self.path(chunk)
        if not path.exists():
            return None
        try:
            metadata = pq.read_schema(path).metadata or {}
            return json.loads(metadata[STATS_KEY])
        except Exception:  # unreadable checkpoint: score the chunk again
            path.unlink(missing_ok=True)
            return None

    def write(self, chunk: int, table: pa.Table, stats: dict) -> None:
        table = table.replace_schema_metadata({STATS_KEY: json.dumps(stats).encode()})
        with atomic_path(self.path(chunk)) as tmp:
            pq.write_table(table, tmp)

    def publish(self, explain: bool) -> None:
        parts = sorted(self.dir.glob("part-*.parquet"))
        merge_parquet(parts, self.out, EXPLAIN_SCHEMA if explain else OUTPUT_SCHEMA)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.out.parent.exists():
            fsync_dir(self.out.parent)


def merge_parquet(parts: list[Path], out: Path, schema: pa.Schema) -> int:
    """Stream the Parquet `parts` (in order) into one file at `out`, atomically: Parquet, or CSV
    when `out` ends in .csv (flat columns, reasons as a JSON string). Returns rows written."""
    rows = 0
    with atomic_path(out) as tmp:
        writer = pa_csv.CSVWriter(str(tmp), schema) if output_format(out) == "csv" \
            else pq.ParquetWriter(tmp, schema)
        with writer:
            for part in parts:
                table = pq.read_table(part).replace_schema_metadata(None)
                writer.write_table(table.select(schema.names).cast(schema))
                rows += table.num_rows
    return rows


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


__all__ = ["batch_score", "inspect_users", "score_chunk", "merge_parquet", "output_format",
           "OUTPUT_SCHEMA"]
