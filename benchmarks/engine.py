"""The recommendation engine in process: CPU per request by how many requests one call answers.

    python benchmarks/engine.py [--old REV --new REV] [--rounds 3] [--workdir /tmp/serving-bench]
                                [--json benchmarks/results/engine.json]

On the serving benchmark's 100k-item bundle (built there on first use), the compiled trees
predicting as the server does: `Recommender.recommend_histories` for 320 of its users, one
thread, in calls of 1, 4, 8, 16 and 32 users; thread CPU per request, median over the calls.
No HTTP, no event loop: the engine's own cost, which the server's batches pay.

With --old and --new, both git revisions (clean worktrees under the workdir, as
benchmarks/serving_ab.py makes them) are measured `--rounds` times, each round in two processes
that run at the same time, one pinned to each of two cores, swapping cores every round: this
VM's speed drifts by tens of per cent within seconds, and a drift then slows both sides alike
(taking turns left whole rounds on one side of a drift). Each process also visits every call
size several times over its run, so no size is measured in one stretch of time. Without
--old/--new, this checkout is measured once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

BATCHES = (1, 4, 8, 16, 32)
PASSES = 4   # visits of every call size, interleaved, over one process's run


def measure(models: Path) -> dict[int, float]:
    """ms of thread CPU per request for each call size (imports the checkout on sys.path)."""
    import numpy as np

    from recsys.index import set_search_threads
    from recsys.recommender import Recommender

    set_search_threads(1)
    recommender = Recommender.load(models, threads=1)
    recommender = recommender.with_ranker(recommender.ranker.with_compiled_trees())
    users = sorted(recommender.users)
    picked = [users[i] for i in np.random.default_rng(1).choice(len(users), 320, replace=False)]
    per_request: dict[int, list[float]] = {size: [] for size in BATCHES}
    for _ in range(PASSES):
        for size in BATCHES:
            for start in range(0, len(picked) - size + 1, size):
                group = picked[start:start + size]
                began = time.thread_time()
                recommender.recommend_histories([recommender.users[u] for u in group], 10,
                                                user_ids=group)
                per_request[size].append((time.thread_time() - began) / size)
    return {size: 1000 * statistics.median(times) for size, times in per_request.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/serving-bench")
    parser.add_argument("--old", help="git revision measured as the baseline")
    parser.add_argument("--new", help="git revision measured against it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "engine.json"))
    parser.add_argument("--measure-from", help=argparse.SUPPRESS)  # a checkout, internal
    args = parser.parse_args(argv)
    models = Path(args.workdir) / "models"
    if args.measure_from:  # one measurement of that checkout's code, in this process
        sys.path.insert(0, args.measure_from)
        print(json.dumps(measure(models)))
        return 0

    from benchmarks import serving as bench  # the benchmark, not the package
    from benchmarks.serving_ab import checkout, commit_of, remove_checkout

    bench.build_catalogue(models)
    if bool(args.old) != bool(args.new):
        parser.error("--old and --new go together")
    names = {"old": commit_of(args.old)[:7], "new": commit_of(args.new)[:7]} if args.old \
        else {"this checkout": None}
    roots = {}
    runs: dict[str, list[dict]] = {name: [] for name in names}
    try:
        for name, revision in names.items():
            roots[name] = checkout(revision, Path(args.workdir) / f"engine-{name}") \
                if revision else ROOT
        cores = sorted(os.sched_getaffinity(0))[:2]
        for round_ in range(args.rounds if args.old else 1):
            # both sides at once, on their own cores, swapping cores each round
            running = {}
            for i, name in enumerate(names):
                core = cores[(i + round_) % len(cores)] if len(cores) > 1 and len(names) > 1 \
                    else None
                running[name] = subprocess.Popen(
                    [sys.executable, str(ROOT / "benchmarks" / "engine.py"), "--measure-from",
                     str(roots[name]), "--workdir", args.workdir], cwd=roots[name],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    preexec_fn=None if core is None else
                    (lambda core=core: os.sched_setaffinity(0, {core})))
            for name, process in running.items():
                stdout, stderr = process.communicate()
                if process.returncode != 0:
                    raise RuntimeError(f"measuring {name} failed:\n{stderr}")
                row = {int(k): v for k, v in json.loads(stdout.splitlines()[-1]).items()}
                runs[name].append(row)
                print(f"round {round_ + 1}, {name}: " + ", ".join(
                    f"{size} per call {row[size]:.3f}" for size in BATCHES) + " ms/request",
                    flush=True)
    finally:
        for name, revision in names.items():
            if revision:
                remove_checkout(Path(args.workdir) / f"engine-{name}")
    print("\n| ms of CPU per request, median over rounds | "
          + " | ".join(f"{size} per call" for size in BATCHES) + " |")
    print("|---" * (len(BATCHES) + 1) + "|")
    for name, rows in runs.items():
        label = f"{name} ({names[name]})" if names[name] else name
        print(f"| {label} | " + " | ".join(
            f"{statistics.median(r[size] for r in rows):.3f}" for size in BATCHES) + " |")
    if args.old:   # the rounds' paired ratios: both sides of a round ran at the same time
        pairs = list(zip(runs["new"], runs["old"], strict=True))
        print("| new / old, median of the rounds' ratios | " + " | ".join(
            f"{statistics.median(n[size] / o[size] for n, o in pairs):.2f}" for size in BATCHES)
            + " |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.json + ".tmp")
    tmp.write_text(json.dumps({"revisions": names, "rounds": runs}, indent=1))
    tmp.replace(args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
