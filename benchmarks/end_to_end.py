"""Issue 2's end-to-end run: import + train + evaluate on a shared dataset, each step timed.

    .venv/bin/python benchmarks/end_to_end.py [--dataset amazon-scientific] [--split test]

Runs the real `recsys` commands in subprocesses (as a user would), prints the evaluation table
and the wall time of each step, and writes benchmarks/results/end_to_end_<dataset>.json.
The embedding cache is pointed at a fresh directory so the timing includes encoding the catalogue.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
FORMATS = {"amazon-scientific": "recbole", "ml-latest-small": "movielens",
           "mind-sample": "mind", "ebnerd-sample": "mind"}


def run(step: str, args: list[str], env: dict, timings: dict) -> str:
    started = time.perf_counter()
    result = subprocess.run([str(Path(sys.executable).parent / "recsys"), *args], env=env,
                            capture_output=True, text=True)
    timings[step] = round(time.perf_counter() - started, 1)
    if result.returncode != 0:
        sys.exit(f"{step} failed:\n{result.stderr[-4000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="amazon-scientific", choices=sorted(FORMATS))
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--keep-cache", action="store_true",
                        help="reuse ~/.cache/recsys (the timing then excludes encoding)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="recsys-e2e-"))
    env = dict(os.environ)
    if not args.keep_cache:
        env["RECSYS_CACHE"] = str(work / "cache")
    timings: dict[str, float] = {}
    data, models, report = work / "data", work / "models", work / "report.json"
    run("import", ["import", FORMATS[args.dataset], str(SHARED / args.dataset), "--out", str(data)],
        env, timings)
    run("train", ["train", str(data), "--out", str(models)], env, timings)
    table = run("evaluate", ["evaluate", str(models), str(data), "--split", args.split,
                             "--json", str(report)], env, timings)
    print(table)
    print("wall seconds:", json.dumps(timings))
    result = {"dataset": args.dataset, "split": args.split, "timings_s": timings,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "encoding_cached": args.keep_cache,
              "evaluation": {k: v for k, v in json.loads(report.read_text()).items()
                             if k != "per_case"}}  # per-case rows belong in --report, not here
    out = ROOT / "benchmarks" / "results" / f"end_to_end_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
