"""Same-run A/B of two versions of the server: which serves more requests per CPU second.

    python benchmarks/serving_ab.py --old f753f5d --new HEAD [--workdir /tmp/serving-bench]
                                    [--setting 2:32:1] [--rounds 6] [--seconds 5]
                                    [--json benchmarks/results/serving_ab.json]

This 2-core VM's speed drifts by tens of per cent within minutes, so two versions measured in
separate runs cannot be compared. Here both servers start side by side (clean checkouts of
the two git revisions, made as worktrees under the workdir; a compiled part is built in
place) on the serving benchmark's 100k-item bundle, and take turns under the same load
(`--seconds` of `GET /recommendations/{user}?k=10` at concurrency 32, 1 s warm-up), the order
alternating every round. Each turn records requests per second and the server's CPU per
request (all its processes, from /proc). Medians over the rounds are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# run as a script: the repository root first, never this folder (its serving.py is not the package)
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks import serving as bench  # noqa: E402  (the benchmark, not the package)


def commit_of(revision: str) -> str:
    """The commit a revision names (HEAD, a branch, a short hash), in full."""
    return subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=ROOT,
                          check=True, capture_output=True, text=True).stdout.strip()


def checkout(revision: str, into: Path) -> Path:
    """A clean worktree of `revision` at `into` (remade each run), its C part built in place."""
    commit = commit_of(revision)
    remove_checkout(into)
    subprocess.run(["git", "worktree", "add", "--force", "--detach", str(into), commit],
                   cwd=ROOT, check=True, capture_output=True)
    if (into / "setup.py").exists():
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=into,
                       check=True, capture_output=True)
    return into


def remove_checkout(into: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(into)], cwd=ROOT,
                   capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git revision measured as the baseline")
    parser.add_argument("--new", required=True, help="git revision measured against it")
    parser.add_argument("--workdir", default="/tmp/serving-bench")
    parser.add_argument("--setting", default="2:32:1",
                        help="PROCESSES:BATCH_MAX:MODEL_THREADS, as in benchmarks/serving.py")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "serving_ab.json"))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    models = workdir / "models"
    bench.build_catalogue(models)
    workers, batch_max, threads = args.setting.split(":")
    env = {"RECSYS_WORKERS": workers, "RECSYS_BATCH_MAX": batch_max,
           "RECSYS_MODEL_THREADS": threads}
    servers = {}
    try:
        for name, revision in (("old", args.old), ("new", args.new)):
            root = checkout(revision, workdir / f"ab-{name}")
            port = bench.free_port()
            store = workdir / f"events-ab-{name}-{int(time.time())}.sqlite"
            servers[name] = (bench.start_server(models, port, store, env, root=root), port)
        time.sleep(15 if int(workers) > 1 else 2)  # the other workers load their model
        users = [f"u{i}" for i in range(0, 20000, 67)]
        turns: dict[str, list[dict]] = {name: [] for name in servers}
        for round_ in range(args.rounds):
            for name in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                process, port = servers[name]
                cpu = bench.tree_cpu_s(process.pid)
                requests = bench.recommendation_requests(users)
                result = bench.run_client(bench.load(port, requests, 32, args.seconds,
                                                     warmup_s=1.0))
                cpu = bench.tree_cpu_s(process.pid) - cpu
                result.update(round=round_, server_cpu_ms_per_request=1000 * cpu
                              / max(result["answered"], 1))
                turns[name].append(result)
                print(f"round {round_ + 1}, {name}: {result['throughput_rps']:.0f} req/s, "
                      f"server CPU {result['server_cpu_ms_per_request']:.3f} ms/request, "
                      f"p99 {result['p99_ms']:.1f} ms, statuses {result['statuses']}", flush=True)
    finally:
        for process, _ in servers.values():
            bench.stop_server(process)
        for name in ("old", "new"):
            remove_checkout(workdir / f"ab-{name}")
    summary = {name: {"revision": getattr(args, name),
                      "commit": commit_of(getattr(args, name)),
                      "req_per_s_median": statistics.median(t["throughput_rps"] for t in rows),
                      "server_cpu_ms_per_request_median": statistics.median(
                          t["server_cpu_ms_per_request"] for t in rows)}
               for name, rows in turns.items()}
    print(f"\n| {args.setting} at c=32, {args.rounds} rounds | old ({args.old}) | new ({args.new}) "
          f"| new / old |\n|---|---|---|---|")
    for key, label, digits in (("req_per_s_median", "req/s, median", 0),
                               ("server_cpu_ms_per_request_median",
                                "server CPU per request, median (ms)", 3)):
        old, new = summary["old"][key], summary["new"][key]
        print(f"| {label} | {old:,.{digits}f} | {new:,.{digits}f} | {new / old:.2f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.json + ".tmp")
    tmp.write_text(json.dumps({"setting": args.setting, "rounds": args.rounds,
                               "seconds": args.seconds, "summary": summary, "turns": turns},
                              indent=1))
    tmp.replace(args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
