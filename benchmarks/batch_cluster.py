"""Batch scoring on a two-node Ray cluster started on this machine, next to the local engine on
the same users: users/s and wall seconds, medians of a few runs of each.

    .venv/bin/recsys import recbole tests/fixtures/recbole --out /tmp/bc/data
    .venv/bin/recsys train /tmp/bc/data --out /tmp/bc/models --version b1
    .venv/bin/python benchmarks/batch_cluster.py --models /tmp/bc/models --users 40000 --runs 5

The cluster is two `ray start` processes (a head, and a second node joined with `--address`),
one CPU slot each, so the engine's two actors land one on each node; every Ray run records the
node ids its chunks were scored on. Both nodes are stopped by process group at the end, even on
failure. `TwoNodeCluster` is also what tests/test_ray_cluster.py starts.
Results: benchmarks/results/batch_cluster.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TwoNodeCluster:
    """A head node and a second node, each its own `ray start --block` process group with its
    own temp dir, ports and one CPU slot. Ray listens on every interface, not just loopback, so
    the cluster takes only callers holding its token: `env` (RAY_ADDRESS and the token) is what a
    driver needs to use it."""

    def __init__(self, cpus_per_node: int = 1, object_store_mb: int = 150,
                 start_timeout_s: float = 120) -> None:
        self.ray_cli = str(Path(sys.executable).with_name("ray"))
        self.cpus = cpus_per_node
        self.store_bytes = object_store_mb * 2**20
        self.timeout = start_timeout_s
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []
        # short paths: Ray's unix socket names must fit in 107 bytes
        self.temp_dirs = [tempfile.mkdtemp(prefix="rayh", dir="/tmp"),
                          tempfile.mkdtemp(prefix="rayw", dir="/tmp")]
        self.node_ids: list[str] = []
        token = Path(self.temp_dirs[0]) / "auth_token"
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
        self.env = {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(token)}

    def _node_ports(self, head: bool) -> list[str]:
        # worker ports below the kernel's ephemeral range, where the free ports below come from
        low = random.randrange(*((20_000, 26_000) if head else (26_000, 32_000)), 200)
        ports = ["--min-worker-port", str(low), "--max-worker-port", str(low + 199),
                 "--node-manager-port", str(_free_port()),
                 "--object-manager-port", str(_free_port()),
                 "--dashboard-agent-listen-port", str(_free_port()),
                 "--dashboard-agent-grpc-port", str(_free_port()),
                 "--runtime-env-agent-port", str(_free_port()),
                 "--metrics-export-port", str(_free_port())]
        if head:
            ports += ["--port", str(self.port), "--dashboard-port", str(_free_port())]
        return ports

    def _start_node(self, head: bool) -> None:
        temp = self.temp_dirs[0 if head else 1]
        role = ["--head", "--include-dashboard", "false"] if head else ["--address", self.address]
        command = [self.ray_cli, "start", *role, *self._node_ports(head), "--temp-dir", temp,
                   "--num-cpus", str(self.cpus), "--num-gpus", "0",
                   "--object-store-memory", str(self.store_bytes), "--disable-usage-stats",
                   "--block"]
        # the workers import recsys from this checkout; Ray starts them at nice 15, which on a
        # shared machine starves them next to the local engine, so they run at normal priority
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT),
               "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}
        env.pop("RAY_ADDRESS")
        log = open(Path(temp) / "ray-start.log", "w")
        with log:
            self.nodes.append(subprocess.Popen(command, env=env, stdout=log,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               start_new_session=True))

    def _alive_node_ids(self) -> list[str]:
        status = subprocess.run([self.ray_cli, "status", "--address", self.address],
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, **self.env, "RAY_USAGE_STATS_ENABLED": "0"})
        active = status.stdout.split("Active:")[-1].split("Pending:")[0]
        return re.findall(r"node_([0-9a-f]{20,})", active)

    def _wait_for(self, n_nodes: int) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.poll() is not None:
                    log = Path(self.temp_dirs[self.nodes.index(node)]) / "ray-start.log"
                    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                    raise RuntimeError(f"ray start exited with {node.returncode}: "
                                       + " | ".join(tail))
            try:
                self.node_ids = self._alive_node_ids()
            except subprocess.TimeoutExpired:
                self.node_ids = []
            if len(self.node_ids) >= n_nodes:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster did not reach {n_nodes} nodes in {self.timeout:.0f} s")

    def start(self) -> TwoNodeCluster:
        try:
            self._start_node(head=True)
            self._wait_for(1)
            self._start_node(head=False)
            self._wait_for(2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM each node's process group (raylet, GCS, workers), SIGKILL what lingers."""
        for node in reversed(self.nodes):
            _signal_group(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for node in self.nodes:
            try:
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for node in self.nodes:
            _signal_group(node.pid, signal.SIGKILL)  # the group outlives `ray start` itself
            if node.poll() is None:
                node.wait()
        self.nodes = []
        for temp in self.temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)

    def __enter__(self) -> TwoNodeCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def run_once(engine: str, models: Path, users: Path, out: Path, *, k: int,
             chunk_size: int) -> dict:
    """One batch job in this process: the local engine through `batch_score`, the Ray engine
    through `score_with_ray` (whose counts name the nodes); both timed the same way."""
    from recsys.batch import batch_score, inspect_users
    from recsys.ray_engine import score_with_ray

    started = time.perf_counter()
    if engine == "local":
        summary = batch_score(models, users, out, k=k, chunk_size=chunk_size, progress=False)
        result = {"users_in": summary["users_in"], "rows_out": summary["rows_out"],
                  "chunks": summary["chunks"]}
    else:
        checked = inspect_users(users)
        counts, _, _ = score_with_ray(models, checked, out, k=k, chunk_size=chunk_size,
                                   exclude_seen=True, explain=False, progress=False)
        result = {"users_in": checked.rows, "rows_out": counts["rows"], "chunks": counts["chunks"],
                  "workers": counts["workers"], "chunks_per_node": counts["nodes"]}
    seconds = time.perf_counter() - started
    result.update({"seconds": round(seconds, 2),
                   "users_per_s": round(result["users_in"] / seconds, 1)})
    return result


def _load_batch_benchmark():
    spec = importlib.util.spec_from_file_location("bench_batch", ROOT / "benchmarks" / "batch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/bc/bench")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" /
                                              "batch_cluster.json"))
    args = parser.parse_args(argv)

    import polars as pl
    import psutil

    from recsys.recommender import Recommender

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    recommender = Recommender.load(args.models)
    users_path = work / f"users-{args.users}.parquet"
    result: dict = {"command": " ".join(["benchmarks/batch_cluster.py"] + (argv or sys.argv[1:])),
                    "model_version": recommender.version, "items": len(recommender.item_ids),
                    "cpus": psutil.cpu_count(), "k": args.k, "chunk_size": args.chunk_size,
                    "ray_version": importlib.metadata.version("ray"),
                    "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    result["input"] = _load_batch_benchmark().synthetic_users(recommender, args.users, users_path,
                                                              row_group=args.chunk_size)
    del recommender
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    reference = work / "recs-local.parquet"
    with TwoNodeCluster() as cluster:
        result["cluster"] = {"nodes": len(cluster.node_ids), "cpus_per_node": cluster.cpus,
                             "node_ids": cluster.node_ids}
        os.environ.update(cluster.env)
        for run in range(args.runs):
            for engine in ("local", "ray"):  # interleaved: load on the shared machine hits both
                out = work / f"recs-{engine}.parquet"
                summary = run_once(engine, Path(args.models), users_path, out, k=args.k,
                                   chunk_size=args.chunk_size)
                if engine == "ray":
                    summary["same_rows_as_local"] = pl.read_parquet(out).equals(
                        pl.read_parquet(reference))
                    summary["nodes_used"] = sorted(summary["chunks_per_node"])
                    assert set(summary["nodes_used"]) == set(cluster.node_ids), summary
                    assert summary["same_rows_as_local"], "the Ray rows differ from the local ones"
                    out.unlink()
                assert summary["rows_out"] == args.users * args.k, summary
                runs[engine].append(summary)
                print(f"run {run + 1} {engine}: {summary}", flush=True)
    reference.unlink(missing_ok=True)
    result["runs"] = runs
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]  # the machine is shared
    result["median"] = {
        engine: {"users_per_s": statistics.median(r["users_per_s"] for r in done),
                 "seconds": statistics.median(r["seconds"] for r in done)}
        for engine, done in runs.items()}
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")

    print("\n| engine | users | users/s (median) | seconds (median) | runs |")
    print("|---|---|---|---|---|")
    for engine, median in result["median"].items():
        print(f"| {engine} | {args.users:,} | {median['users_per_s']:.0f} | "
              f"{median['seconds']:.1f} | {args.runs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
