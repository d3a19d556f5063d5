"""Overload ramp (RELIABILITY.md row 16): how the server refuses load past its caps.

    python benchmarks/overload.py [--workdir /tmp/overload-bench] [--seconds 5]
        [--json benchmarks/results/overload.json] [--baseline ROOT] [--rounds N]
        [--route /events] [--set RECSYS_NAME=VALUE] [--honour-retry-after]
        [--models /tmp/serving-bench/models] [--client-processes N]

Trains a small bundle on the RecBole test fixture (seconds; `--models` serves another models
folder instead, such as the serving benchmark's 100k-item bundle), starts `recsys serve` on
127.0.0.1 with its default caps (RECSYS_MAX_PENDING, RECSYS_MAX_PENDING_EVENTS) unless `--set`
changes them, and loads `GET /recommendations/{user}` and `POST /events` (one event per request)
with 8, 64, 256 and 1,024 keep-alive clients that send their next request the moment an answer
arrives, a 503 included (clients retrying at once; when the answer said `Connection: close`, the
retry goes out on a new connection at once, and its latency counts from the reconnect). Per
level: goodput (200s per second), the share of 503s, the p50/p99 latency of the 503s, and the
CPU cores the clients and the server used (the clients share the machine with the server;
`--client-processes` spreads the connections over several client event loops). Targets (issue
22): a refusal in under 50 ms p99, and goodput at 1,024 clients at least 80% of the best
level's. `--baseline ROOT` ramps another checkout too, alternating with this one for `--rounds`
rounds (the tables are the medians); `--honour-retry-after` makes the clients wait as a 503's
Retry-After says instead (a second table, not the target's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

import numpy as np  # noqa: E402

from benchmarks.serving import (  # noqa: E402
    _LoadConnection,
    _LoadRun,
    _request,
    event_requests,
    free_port,
    run_client,
    start_server,
    stop_server,
    tree_cpu_s,
)

LEVELS = (8, 64, 256, 1024)
# the server's own caps (benchmarks.serving.start_server raises RECSYS_MAX_PENDING for its
# throughput runs); `--set` changes them
DEFAULT_CAPS = {"RECSYS_MAX_PENDING": "64", "RECSYS_MAX_PENDING_EVENTS": "64"}
REFUSAL_P99_MS = 50.0
GOODPUT_SHARE = 0.8


class _ByStatus(_LoadRun):
    """The load client's run, keeping latencies per status (the 503s are what is measured),
    and reconnecting at once when the server closes a connection after a complete response."""

    def __init__(self, port: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.port = port
        self.by_status: dict[int, list[float]] = {}  # from the request's write
        self.waited: dict[int, list[float]] = {}  # from the retry's reconnect, where it had one
        self.reconnects = 0
        self.connecting: set[asyncio.Task] = set()
        self.honour_retry_after = False  # wait as a 503's Retry-After says before retrying

    def record(self, sent: float, status: int, body: bytes, connect_from: float | None = None
               ) -> None:
        super().record(sent, status, body)
        started = sent if connect_from is None else connect_from
        if started >= self.measure_from:
            done = time.perf_counter()
            self.by_status.setdefault(status, []).append(done - sent)
            self.waited.setdefault(status, []).append(done - started)

    def reconnect(self) -> None:
        """The client's retry after `Connection: close`: a new connection at once. The retry's
        latency starts now, so the connect (its wait in the listen backlog) is measured too."""
        if self.finished.done():
            return
        self.reconnects += 1
        self.open += 1
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(
            lambda: _RetryingConnection(self, started), "127.0.0.1", self.port))
        self.connecting.add(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task) -> None:
        self.connecting.discard(task)
        if task.cancelled() or task.exception() is not None:
            self.open -= 1
            if not self.finished.done():
                self.finished.set_exception(task.exception() or ConnectionError("connect"))
        else:
            self.transports.append(task.result()[0])


class _RetryingConnection(_LoadConnection):
    """One client: keep-alive while the server keeps the connection open; when a response says
    `Connection: close`, the next request goes out on a new connection, at once."""

    def __init__(self, run: _ByStatus, connect_from: float | None = None) -> None:
        super().__init__(run)
        self.connect_from = connect_from  # when this retry's reconnect began
        self.closing = False
        self.retry_after = 0.0

    def _read_head(self, head: bytes) -> None:
        self.closing = b"\r\nconnection: close" in head.lower()
        self.retry_after = _retry_after(head) if self.run.honour_retry_after else 0.0

    def _answered(self, body: bytes) -> bool:
        self.run.record(self.sent, self.status, body, self.connect_from)
        self.connect_from = None
        loop = asyncio.get_running_loop()
        if not self.closing:
            if self.status == 503 and self.retry_after:
                loop.call_later(self.retry_after, self._send)
                return False
            self._send()
            return True
        self.transport.close()
        if time.perf_counter() + self.retry_after < self.run.stop_at:
            loop.call_later(self.retry_after, self.run.reconnect)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closing and exc is None and not self.waiting:
            self.run.open -= 1  # closed after its last response: its retry has a new one
            if self.run.open == 0 and not self.run.finished.done():
                self.run.finished.set_result(None)
            return
        super().connection_lost(exc)


def _retry_after(head: bytes) -> float:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"retry-after:"):
            return float(line.split(b":", 1)[1])
    return 0.0


async def ramp_level(port: int, make_request, concurrency: int, seconds: float,
                     warmup_s: float, honour_retry_after: bool = False) -> dict:
    return level_figures(concurrency, [await measure_level(port, make_request, concurrency,
                                                           seconds, warmup_s,
                                                           honour_retry_after)])


async def measure_level(port: int, make_request, concurrency: int, seconds: float,
                        warmup_s: float, honour_retry_after: bool = False) -> dict:
    """One client's raw latencies (seconds) per status, and its measured window."""
    loop = asyncio.get_running_loop()
    run = _ByStatus(port, make_request, concurrency, seconds, warmup_s)
    run.honour_retry_after = honour_retry_after
    run.transports = []
    for start in range(0, concurrency, 128):  # connect in groups: the listen backlog is finite
        batch = [loop.create_connection(lambda: _RetryingConnection(run), "127.0.0.1", port)
                 for _ in range(min(128, concurrency - start))]
        run.transports += [t for t, _ in await asyncio.gather(*batch)]
    try:
        await run.finished
    finally:
        for task in list(run.connecting):
            task.cancel()
        for transport in run.transports:
            transport.close()
    return {"window_s": min(time.perf_counter(), run.stop_at) - run.measure_from,
            "by_status": run.by_status, "waited": run.waited, "reconnects": run.reconnects,
            "answered": run.answered}


def level_figures(concurrency: int, raws: list[dict]) -> dict:
    """The figures of one level from its clients' raw measurements (one per client process)."""
    window = max(raw["window_s"] for raw in raws)

    def joined(kind: str, status: int) -> np.ndarray:
        return np.array([x for raw in raws for x in raw[kind].get(status, [])]) * 1000

    statuses = {status for raw in raws for status in raw["by_status"]}
    total = sum(len(raw["by_status"][status]) for raw in raws for status in raw["by_status"])
    refused = joined("by_status", 503)
    refused_waited = joined("waited", 503)
    ok = joined("waited", 200)  # as the client waited, reconnect included
    return {"clients": concurrency, "requests": total,
            "goodput_rps": round(len(ok) / window, 1),
            "share_503": round(len(refused) / total, 3) if total else 0.0,
            "p50_503_ms": round(float(np.percentile(refused, 50)), 2) if refused.size else None,
            "p99_503_ms": round(float(np.percentile(refused, 99)), 2) if refused.size else None,
            "p99_503_with_reconnect_ms":
                round(float(np.percentile(refused_waited, 99)), 2) if refused.size else None,
            "p50_200_ms": round(float(np.percentile(ok, 50)), 2) if ok.size else None,
            "p99_200_ms": round(float(np.percentile(ok, 99)), 2) if ok.size else None,
            "reconnects": sum(raw["reconnects"] for raw in raws),
            "other_statuses": {str(k): sum(len(raw["by_status"].get(k, [])) for raw in raws)
                               for k in statuses if k not in (200, 503)}}


_JOBS: list[tuple] = []  # the client processes' work, inherited through fork (closures)


def _client_process(index: int) -> dict:
    port, make, concurrency, seconds, warmup_s, honour = _JOBS[index]
    count = len(_JOBS)

    def make_request(n: int) -> bytes:  # request numbers (event ids) unique across processes
        return make(n * count + index)
    started = _cpu_s()
    raw = run_client(measure_level(port, make_request, concurrency, seconds, warmup_s, honour))
    return {**raw, "cpu_s": _cpu_s() - started}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_level(port: int, make_request, concurrency: int, seconds: float, warmup_s: float,
              honour_retry_after: bool, processes: int, server_pid: int | None) -> dict:
    """One level, its connections shared among `processes` client processes (each its own
    event loop), with the CPU the clients and the server used meanwhile."""
    server_cpu = tree_cpu_s(server_pid) if server_pid else 0.0
    wall = time.perf_counter()
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    jobs = [(port, make_request, share, seconds, warmup_s, honour_retry_after)
            for share in shares if share]
    _JOBS[:] = jobs
    if len(jobs) == 1:
        raws = [_client_process(0)]
    else:
        with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:
            raws = pool.map(_client_process, range(len(jobs)))
    wall = time.perf_counter() - wall
    level = level_figures(concurrency, raws)
    level["client_processes"] = len(jobs)
    level["client_cores"] = round(sum(raw["cpu_s"] for raw in raws) / wall, 2)
    if server_pid:
        server_cpu = tree_cpu_s(server_pid) - server_cpu
        level["server_cores"] = round(server_cpu / wall, 2)
        # what an answer (a 503 or a 200, warm-up included) cost the server: the figure the
        # other jobs on the machine do not move much
        level["server_cpu_ms_per_answer"] = round(
            1000 * server_cpu / max(sum(raw["answered"] for raw in raws), 1), 3)
    return level


def ramp(port: int, users: list[str], seconds: float, warmup_s: float, label: str,
         only: list[str] | None = None, honour_retry_after: bool = False,
         processes: int = 1, server_pid: int | None = None) -> dict:
    routes = {
        "/recommendations": lambda: (lambda encoded: lambda n: encoded[n % len(encoded)])(
            [_request("GET", f"/recommendations/{u}?k=10") for u in users]),
        "/events": lambda: event_requests(1, f"{label}-{time.monotonic_ns()}"),
    }
    out = {}
    for route, make in routes.items():
        if only and route not in only:
            continue
        levels = []
        for clients in LEVELS:
            level = run_level(port, make(), clients, seconds, warmup_s, honour_retry_after,
                              processes, server_pid)
            print(f"{label} {route} {clients:5d} clients: goodput {level['goodput_rps']:7.1f}/s, "
                  f"503 {level['share_503']:.0%}, 503 p99 {level['p99_503_ms']} ms "
                  f"({level['p99_503_with_reconnect_ms']} ms with reconnect), "
                  f"200 p99 {level['p99_200_ms']} ms; CPU cores: client "
                  f"{level['client_cores']}, server {level.get('server_cores')} "
                  f"({level.get('server_cpu_ms_per_answer')} ms per answer)", flush=True)
            levels.append(level)
        out[route] = {"levels": levels}
    return out


def summarise(rounds: list[dict]) -> dict:
    """Per route and level, the median of each figure over the rounds, and the targets."""
    out = {}
    for route in rounds[0]:
        levels = []
        for i, first in enumerate(rounds[0][route]["levels"]):
            level = {"clients": first["clients"]}
            for key, value in first.items():
                if key == "clients" or not isinstance(value, (int, float, type(None))):
                    continue
                values = [r[route]["levels"][i][key] for r in rounds]
                values = [v for v in values if v is not None]
                level[key] = round(float(np.median(values)), 3) if values else None
            levels.append(level)
        best = max(level["goodput_rps"] for level in levels)
        top = levels[-1]
        refusals = [level["p99_503_ms"] for level in levels if level["p99_503_ms"] is not None]
        out[route] = {"levels": levels, "goodput_1024_share_of_best":
                      round(top["goodput_rps"] / best, 3) if best else None,
                      "worst_503_p99_ms": max(refusals) if refusals else None,
                      "worst_503_p99_with_reconnect_ms": max(
                          (level["p99_503_with_reconnect_ms"] for level in levels
                           if level["p99_503_with_reconnect_ms"] is not None), default=None),
                      "targets_met": {
                          "refusal_p99_under_50ms": all(r < REFUSAL_P99_MS for r in refusals),
                          "goodput_1024_at_least_80pct":
                              bool(best) and top["goodput_rps"] >= GOODPUT_SHARE * best}}
    return out


def build_models(workdir: Path, models: Path | None = None) -> tuple[Path, list[str]]:
    """The models folder (`models`, or a small bundle trained under `workdir`) and its users."""
    from recsys.data.importers import import_dataset
    from recsys.recommender import Recommender
    from training.pipeline import train

    if models is not None:
        return models, sorted(Recommender.load(models).users)
    models = workdir / "models"
    if not (models / "CURRENT").exists():
        dataset = workdir / "recbole"
        if not dataset.exists():
            import_dataset("recbole", ROOT / "tests" / "fixtures" / "recbole", dataset)
        train(dataset, models, version="v1", log=lambda _: None)
    users = sorted(Recommender.load(models).users)
    return models, users


def serve_and_ramp(models: Path, users: list[str], root: Path, seconds: float,
                   warmup_s: float, label: str, env: dict[str, str],
                   only: list[str] | None, honour_retry_after: bool, processes: int) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="overload-store-") as scratch:
        server = start_server(models, port, Path(scratch) / "events.sqlite", root=root,
                              extra_env={"RECSYS_LOG_LEVEL": "WARNING", **DEFAULT_CAPS, **env})
        try:
            return ramp(port, users, seconds, warmup_s, label, only, honour_retry_after,
                        processes, server.pid)
        finally:
            stop_server(server)


def _items(models: Path) -> int | None:
    version = (models / "CURRENT").read_text().strip()
    manifest = json.loads((models / version / "manifest.json").read_text())
    return manifest.get("index", {}).get("items")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/overload-bench")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per level")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--baseline", help="another checkout to ramp first (before/after)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="ramps per checkout, baseline and this one alternating; the "
                             "tables are the medians")
    parser.add_argument("--route", action="append", choices=("/recommendations", "/events"),
                        help="ramp only this route (repeatable; default both)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a RECSYS_* setting for both servers (default: their own)")
    parser.add_argument("--honour-retry-after", action="store_true",
                        help="clients wait as a 503's Retry-After says (default: retry at once)")
    parser.add_argument("--models", type=Path,
                        help="serve this models folder (e.g. the serving benchmark's 100k-item "
                             "bundle, /tmp/serving-bench/models) instead of the small bundle")
    parser.add_argument("--client-processes", type=int, default=1,
                        help="share each level's connections among this many client processes")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.set)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    models, users = build_models(workdir, args.models)
    result = {"benchmark": "overload ramp (RELIABILITY.md row 16)",
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": "python benchmarks/overload.py " + " ".join(argv or sys.argv[1:]),
              "models": str(models), "items": _items(models),
              "client_processes": args.client_processes,
              "seconds_per_level": args.seconds, "rounds": args.rounds,
              "settings": {**DEFAULT_CAPS, **env},
              "clients_honour_retry_after": args.honour_retry_after,
              "targets": {"refusal_p99_ms_under": REFUSAL_P99_MS,
                          "goodput_1024_share_of_best_at_least": GOODPUT_SHARE}}
    before, after = [], []
    for round_ in range(args.rounds):
        # the baseline first in even rounds, last in odd ones: the machine's drift hits both
        for label in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
            if label == "before" and not args.baseline:
                continue
            root, runs = (Path(args.baseline), before) if label == "before" else (ROOT, after)
            runs.append(serve_and_ramp(models, users, root, args.seconds, args.warmup, label,
                                       env, args.route, args.honour_retry_after,
                                       args.client_processes))
    if before:
        result["baseline"] = summarise(before)
    result["routes"] = summarise(after)
    result["rounds_raw"] = {"baseline": before, "routes": after}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
