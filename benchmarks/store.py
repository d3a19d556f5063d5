"""The live store: SQLite against PostgreSQL, and two server replicas on one PostgreSQL database.

    python benchmarks/store.py [--seconds 3] [--json benchmarks/results/store.json]

In one run, on this machine (loopback only):
  * ingest: events stored per second through the store interface (`append`, what POST /events
    calls), batches of 1 and 10 events, one writer thread and four, on SQLite (WAL,
    synchronous=FULL) and on a throwaway PostgreSQL server started from the system's binaries
    with fsync on (both durable before `append` returns);
  * propagation: a click posted to replica A until replica B's `GET /users/{id}` shows it, and
    an item `PUT` on A until B's `GET /items/{id}` answers 200 (B's follower polls every
    RECSYS_FOLLOW_STORE_S, 0.2 s): p50 and p99 over `--samples` of each;
  * recommendations per second from one replica (concurrency 8) and from two replicas on the
    same PostgreSQL database (concurrency 4 each, at once), with the load client of
    benchmarks/serving.py.
The bundle is the test suite's (RecBole fixture, 341 items): the point is the store and the
replicas, not the model's cost (benchmarks/serving.py measures that on 100k items).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.serving import (  # noqa: E402
    API_KEY,
    free_port,
    load,
    recommendation_requests,
    run_client,
    stop_server,
)
from recsys.store import Event, open_store  # noqa: E402
from tests.postgres_server import TempPostgres  # noqa: E402

HEADERS = {"X-API-Key": API_KEY}


def ingest_rate(location: str, batch: int, writers: int, seconds: float, run: str) -> float:
    """Events appended per second by `writers` threads, each with its own store object."""
    stores = [open_store(location) for _ in range(writers)]
    counts = [0] * writers
    stop_at = time.perf_counter() + seconds

    def write(w: int) -> None:
        n = 0
        while time.perf_counter() < stop_at:
            stores[w].append([Event(f"{run}-{w}-{n}-{j}", f"u{(n + j) % 1000}", f"i{j}",
                                    time.time(), "click") for j in range(batch)])
            n += 1
        counts[w] = n * batch

    started = time.perf_counter()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for store in stores:
        store.close()
    return sum(counts) / elapsed


def train_bundle(workdir: Path) -> Path:
    from recsys.data.importers import import_dataset
    from training.pipeline import train

    models = workdir / "models"
    if not (models / "CURRENT").is_file():
        data = workdir / "recbole"
        import_dataset("recbole", ROOT / "tests" / "fixtures" / "recbole", data)
        train(data, models, version="v1", log=lambda _: None)
    return models


def start_replica(models: Path, store_url: str, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "RECSYS_API_KEYS": API_KEY, "RECSYS_STORE": store_url,
           "RECSYS_RATE_LIMIT_PER_S": "1000000", "RECSYS_RATE_LIMIT_BURST": "1000000",
           "RECSYS_MAX_PENDING": "1000", "RECSYS_LOG_LEVEL": "WARNING",
           "RECSYS_MODEL_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as handle:
        process = subprocess.Popen([sys.executable, "-m", "recsys.cli", "serve", str(models),
                                    "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                                   env=env, stdout=handle, stderr=handle)
    return process, port


def wait_ready(process: subprocess.Popen, port: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("a replica exited during start-up (see its log)")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("a replica did not become ready")


def percentiles(samples: list[float]) -> dict:
    ms = np.array(samples) * 1000
    return {"n": len(samples), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


def propagation(a: int, b: int, samples: int, clicked: str, item_text: str) -> dict:
    """Seconds from A's answer to B showing the change, for clicks and for added items."""
    clicks, items = [], []
    with httpx.Client(headers=HEADERS, timeout=60) as client:
        client.put(f"http://127.0.0.1:{a}/items", json={"items": [  # A loads its encoder
            {"item_id": "warm-up", "text": item_text}]})
        for n in range(samples):
            user = f"propagation-user-{n}-{time.time_ns()}"
            client.post(f"http://127.0.0.1:{a}/events", json={"events": [
                {"event_id": f"{user}-click", "user_id": user, "item_id": clicked,
                 "type": "click"}]}).raise_for_status()
            acked = time.perf_counter()
            # 404 (an unknown user) until B reads the click from the store
            while client.get(f"http://127.0.0.1:{b}/users/{user}").status_code != 200:
                time.sleep(0.002)
            clicks.append(time.perf_counter() - acked)
        for n in range(samples):
            item = f"propagation-item-{n}-{time.time_ns()}"
            client.put(f"http://127.0.0.1:{a}/items", json={"items": [
                {"item_id": item, "text": f"{item_text} {n}"}]}).raise_for_status()
            acked = time.perf_counter()
            while client.get(f"http://127.0.0.1:{b}/items/{item}").status_code != 200:
                time.sleep(0.002)
            items.append(time.perf_counter() - acked)
    return {"click": percentiles(clicks), "item": percentiles(items)}


def throughput(ports: list[int], users: list[str], concurrency: int, seconds: float) -> dict:
    async def both():
        import asyncio

        per = concurrency // len(ports)
        return await asyncio.gather(*[load(port, recommendation_requests(users), per, seconds)
                                      for port in ports])

    levels = run_client(both())
    return {"replicas": len(ports), "concurrency": concurrency,
            "throughput_rps": round(sum(level["throughput_rps"] for level in levels), 1),
            "p50_ms": round(statistics.mean(level["p50_ms"] for level in levels), 2),
            "p99_ms": round(max(level["p99_ms"] for level in levels), 2),
            "statuses": [level["statuses"] for level in levels]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/store-bench")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per level")
    parser.add_argument("--samples", type=int, default=50, help="propagation samples of each")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "store.json"))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RECSYS_CACHE", str(workdir / "cache"))
    result: dict = {"machine": f"{os.cpu_count()} CPUs", "seconds_per_level": args.seconds}

    database = TempPostgres(fsync=True)
    database.start()
    try:
        run = str(time.time_ns())
        with tempfile.TemporaryDirectory(prefix="store-bench-") as scratch:
            locations = {"sqlite": f"sqlite:///{scratch}/events.sqlite",
                         "postgresql": database.create_database(f"ingest_{run}")}
            result["ingest_events_per_s"] = []
            for batch, writers in ((1, 1), (10, 1), (1, 4)):
                row = {"batch": batch, "writers": writers}
                for name, location in locations.items():
                    row[name] = round(ingest_rate(location, batch, writers, args.seconds,
                                                  f"{name}-{batch}-{writers}"), 1)
                print(f"ingest batch={batch} writers={writers}: {row}", flush=True)
                result["ingest_events_per_s"].append(row)

        models = train_bundle(workdir)
        from recsys.recommender import Recommender

        model = Recommender.load(models)
        users = sorted(model.users)
        store_url = database.create_database(f"replicas_{run}")
        (a, port_a), (b, port_b) = (start_replica(models, store_url, workdir / f"{n}.log")
                                    for n in "ab")
        try:
            wait_ready(a, port_a)
            wait_ready(b, port_b)
            result["propagation"] = propagation(port_a, port_b, args.samples, model.item_ids[0],
                                                model.titles[0] + " (new edition)")
            print(f"propagation: {result['propagation']}", flush=True)
            result["recommend"] = [throughput([port_a], users, 8, args.seconds),
                                   throughput([port_a, port_b], users, 8, args.seconds)]
            print(f"recommend: {result['recommend']}", flush=True)
        finally:
            stop_server(a)
            stop_server(b)
    finally:
        database.remove()
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
