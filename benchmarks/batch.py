"""Batch scoring at scale: synthetic users over the real amazon-scientific catalogue, scored by
`recsys batch-score` with the local and the Ray engine, next to the raw cost of the FAISS batch
search and the LightGBM batch prediction for the same kind of users, measured in the same run.
The target: an engine's time per user at most 1.5x the raw cost (`engine_over_raw` in the JSON).

    .venv/bin/recsys import recbole ../shared/data/amazon-scientific --out /tmp/batch/amazon
    .venv/bin/recsys train /tmp/batch/amazon --out /tmp/batch/models-amazon
    .venv/bin/python benchmarks/batch.py --models /tmp/batch/models-amazon --users 250000

Each engine runs as its own `recsys batch-score` process; the resident memory of its whole process
tree (Ray's raylet and workers included) is sampled every 0.5 s. Results:
benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_OVER_RAW = 1.5  # issue 23: engine time per user at most 1.5x raw FAISS + LightGBM


def synthetic_users(recommender, n_users: int, path: Path, seed: int = 0,
                    row_group: int = 10_000) -> dict:
    """Histories made from real ones: a random real user's history prefix (at least one item),
    plus one item drawn by popularity, so lengths and co-occurrence look like the catalogue's."""
    rng = np.random.default_rng(seed)
    real = [h.items for h in recommender.users.values() if h.items]
    clicks = recommender.state.clicks_.astype(np.float64) + 1.0
    popular = rng.choice(len(clicks), size=n_users, p=clicks / clicks.sum())
    picks = rng.integers(0, len(real), size=n_users)
    ids = recommender.item_ids
    histories = []
    for u in range(n_users):
        source = real[picks[u]]
        prefix = source[:int(rng.integers(1, len(source) + 1))]
        histories.append([ids[r] for r in prefix] + [ids[int(popular[u])]])
    frame = pl.DataFrame({"user_id": [f"synthetic-{u:07d}" for u in range(n_users)],
                          "history": pl.Series(histories, dtype=pl.List(pl.String))})
    frame.write_parquet(path, row_group_size=row_group)
    lengths = np.array([len(h) for h in histories])
    return {"users": n_users, "history_len_mean": round(float(lengths.mean()), 2),
            "history_len_max": int(lengths.max()), "file_mb": round(path.stat().st_size / 2**20, 1)}


def raw_cost(recommender, users_path: Path, sample: int, chunk_size: int) -> dict:
    """Median seconds per user of FAISS search + LightGBM predict alone (features prepared
    outside the timer), on the first `sample` users of the same file: the same profiles and the
    same number of candidate rows the engine scores. LightGBM's own predict, as the batch engine
    uses it (compiled trees are a serving option, `RECSYS_COMPILED_RANKER`)."""
    from recsys.recommender import History

    frame = pl.read_parquet(users_path).head(sample)
    rows_of = recommender.item_rows
    faiss_s, lgbm_s, users = [], [], []
    n_semantic = recommender.retrieval.n_semantic
    for start in range(0, frame.height, chunk_size):
        chunk = frame[start:start + chunk_size]
        histories = [History([rows_of[i] for i in h if i in rows_of])
                     for h in chunk["history"].to_list()]
        requests = recommender.request_batch(histories)
        _, rows = recommender.context.rows(requests, [set(h.items) for h in histories])
        matrix = recommender.ranker.matrix(rows)
        fetch = n_semantic + max(len(h.items) for h in histories)
        started = time.perf_counter()
        recommender.index.index_.search(np.ascontiguousarray(requests.profiles), fetch)
        faiss_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        recommender.ranker.booster.predict(matrix, num_threads=recommender.ranker.threads)
        lgbm_s.append(time.perf_counter() - started)
        users.append(chunk.height)
    per_user_faiss = statistics.median(t / n for t, n in zip(faiss_s, users, strict=True))
    per_user_lgbm = statistics.median(t / n for t, n in zip(lgbm_s, users, strict=True))
    per_user = per_user_faiss + per_user_lgbm
    return {"sample_users": int(sum(users)), "chunks": len(users),
            "faiss_ms_per_1k_users": round(per_user_faiss * 1e6, 1),
            "lightgbm_ms_per_1k_users": round(per_user_lgbm * 1e6, 1),
            "users_per_s": round(1.0 / per_user, 1)}


def run_engine(engine: str, models: Path, users: Path, out: Path, chunk_size: int,
               timeout_s: float) -> dict:
    """One `recsys batch-score` process; peak memory of its process tree sampled meanwhile."""
    command = [sys.executable, "-m", "recsys.cli", "batch-score", str(models), str(users),
               "--out", str(out), "--k", "10", "--chunk-size", str(chunk_size), "--engine", engine]
    started = time.perf_counter()
    # Ray starts its workers at nice 15; on a machine shared with other jobs that starves them,
    # so they run at the local engine's priority for a like-for-like comparison.
    env = {**os.environ, "RAY_worker_niceness": "0"}
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True, env=env)
    peak = {"tree_mb": 0.0, "driver_mb": 0.0}
    done = threading.Event()

    def sample() -> None:
        parent = psutil.Process(job.pid)
        while not done.is_set():
            try:
                procs = [parent] + parent.children(recursive=True)
                total = 0
                for proc in procs:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
                peak["tree_mb"] = max(peak["tree_mb"], total / 2**20)
                peak["driver_mb"] = max(peak["driver_mb"], parent.memory_info().rss / 2**20)
            except psutil.Error:
                pass
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, _ = job.communicate(timeout=timeout_s)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    if job.returncode != 0:
        raise SystemExit(f"{engine} engine failed with exit code {job.returncode}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    recs = pl.scan_parquet(out).select(pl.len(), pl.col("user_id").n_unique()).collect()
    summary.update({"wall_s_with_startup": round(wall, 1),
                    "peak_tree_rss_mb": round(peak["tree_mb"], 1),
                    "peak_driver_rss_mb": round(peak["driver_mb"], 1),
                    "checked_rows": int(recs.item(0, 0)), "checked_users": int(recs.item(0, 1))})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="models dir trained on amazon-scientific")
    parser.add_argument("--users", type=int, default=250_000)
    parser.add_argument("--chunk-size", type=int, default=2000)
    parser.add_argument("--raw-sample", type=int, default=10_000,
                        help="users on which the raw FAISS + LightGBM cost is timed")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--workdir", default="/tmp/batch/bench")
    parser.add_argument("--timeout-s", type=float, default=5400)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "batch.json"))
    args = parser.parse_args(argv)

    from recsys.recommender import Recommender

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    recommender = Recommender.load(args.models)
    users_path = work / f"users-{args.users}.parquet"
    result: dict = {"command": " ".join(["benchmarks/batch.py"] + (argv or sys.argv[1:])),
                    "model_version": recommender.version, "items": len(recommender.item_ids),
                    "cpus": psutil.cpu_count(), "engines": {}}
    result["input"] = synthetic_users(recommender, args.users, users_path)
    print(f"input: {result['input']}", flush=True)
    result["raw"] = raw_cost(recommender, users_path, args.raw_sample, args.chunk_size)
    print(f"raw FAISS + LightGBM: {result['raw']}", flush=True)

    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    for engine in args.engines.split(","):
        out = work / f"recs-{engine}.parquet"
        summary = run_engine(engine, Path(args.models), users_path, out, args.chunk_size,
                             args.timeout_s)
        summary["engine_over_raw"] = round(result["raw"]["users_per_s"] / summary["users_per_s"], 2)
        assert summary["rows_out"] == summary["checked_rows"] == args.users * 10, summary
        result["engines"][engine] = summary
        out.unlink()
        print(f"{engine}: {summary}", flush=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")  # keep what is done so far
    # the machine is shared and noisy: time the raw cost again after the engines, use the faster
    result["raw_after"] = raw_cost(recommender, users_path, args.raw_sample, args.chunk_size)
    best_raw = max(result["raw"]["users_per_s"], result["raw_after"]["users_per_s"])
    result["target_engine_over_raw"] = TARGET_OVER_RAW
    for summary in result["engines"].values():
        summary["engine_over_raw"] = round(best_raw / summary["users_per_s"], 2)
        summary["meets_target"] = summary["engine_over_raw"] <= TARGET_OVER_RAW
    json_path.write_text(json.dumps(result, indent=2) + "\n")

    print("\n| engine | users | users/s | seconds | peak RSS, process tree (MB) "
          f"| engine time / raw time (target <= {TARGET_OVER_RAW}) |")
    print("|---|---|---|---|---|---|")
    for engine, s in result["engines"].items():
        print(f"| {engine} | {s['users_in']:,} | {s['users_per_s']:.0f} | {s['seconds']:.0f} | "
              f"{s['peak_tree_rss_mb']:.0f} | {s['engine_over_raw']:.2f} |")
    print(f"| raw FAISS + LightGBM (before / after) | {result['raw']['sample_users']:,} | "
          f"{result['raw']['users_per_s']:.0f} / {result['raw_after']['users_per_s']:.0f} "
          "| | | 1.0 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
