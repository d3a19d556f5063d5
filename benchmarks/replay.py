"""Log replay on ml-latest-small (real timestamps): does retraining on new clicks help?

Train on the events before T1 (`recsys train`), feed the log of [T1, T2) through
`recsys retrain --promote auto`, then evaluate both bundles on [T2, end] (neither saw it).
T1 and T2 are event-count quantiles (default 70% and 85%): the last 15% of the log is the test.

    .venv/bin/python benchmarks/replay.py --data ../shared/data/ml-latest-small

Each bundle is evaluated as deployed: its own behavioural state, user histories = every click
before T2, full ranking over the catalogue. Results: benchmarks/results/replay.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def recsys(*args: str) -> tuple[str, float]:
    """Run a `recsys` command; returns its stdout and how long it took."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recsys.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"recsys {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout, time.perf_counter() - started


def first_run(work: Path, events: pl.DataFrame, t1, t2, timings: dict) -> dict:
    """`recsys train` on the events before T1, then `recsys retrain` with the log of [T1, T2)."""
    base = work / "base"
    base.mkdir()
    for name in ("items.parquet", "dataset.json"):
        shutil.copy(work / "full" / name, base / name)
    events.filter(pl.col("timestamp") < t1).write_parquet(base / "events.parquet")
    new_log = work / "log-t1-t2.parquet"
    events.filter((pl.col("timestamp") >= t1) & (pl.col("timestamp") < t2)).write_parquet(new_log)
    models = work / "models"
    _, timings["train_before_t1"] = recsys("train", str(base), "--out", str(models),
                                           "--version", "base")
    stdout, timings["retrain_t1_t2"] = recsys("retrain", str(models), "--events", str(new_log),
                                              "--promote", "auto")
    return json.loads(stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-latest-small"))
    parser.add_argument("--t1", type=float, default=0.7, help="event quantile where T1 falls")
    parser.add_argument("--t2", type=float, default=0.85, help="event quantile where T2 falls")
    parser.add_argument("--workdir", default="/tmp/batch/replay")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "replay.json"))
    parser.add_argument("--reuse", action="store_true",
                        help="evaluate the bundles a previous run left in --workdir again "
                             "(no import, train or retrain; their timings come from --json)")
    args = parser.parse_args(argv)

    from recsys.recommender import Recommender
    from training.replay import evaluate_window

    work = Path(args.workdir)
    models = work / "models"
    timings: dict[str, float] = {}
    if args.reuse:
        previous = json.loads(Path(args.json).read_text())
        timings = {k: v for k, v in previous["timings_s"].items() if not k.startswith("evaluate")}
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _, timings["import"] = recsys("import", "movielens", args.data, "--out", str(work / "full"))
    events = pl.read_parquet(work / "full" / "events.parquet").sort("timestamp", "event_id")
    t1 = events["timestamp"][int(events.height * args.t1)]
    t2 = events["timestamp"][int(events.height * args.t2)]
    t3 = events["timestamp"].max()
    if args.reuse:
        decision = previous["decision"]
    else:
        decision = first_run(work, events, t1, t2, timings)
    listing, _ = recsys("models", "list", str(models))


    results = {}
    for name, version in (("before retrain", "base"), ("after retrain", decision["version"])):
        started = time.perf_counter()
        recommender = Recommender.load(models / version)
        results[name] = evaluate_window(recommender, events, t2, None)
        results[name]["version"] = version
        timings[f"evaluate_{version}"] = round(time.perf_counter() - started, 1)
    report = {
        "command": " ".join(["benchmarks/replay.py"]
                            + (argv if argv is not None else sys.argv[1:])),
        "windows": {"train": f"< {t1}", "retrain_log": f"[{t1}, {t2})", "test": f"[{t2}, {t3}]"},
        "events": {"before_t1": int((events["timestamp"] < t1).sum()),
                   "t1_t2": int(((events["timestamp"] >= t1) & (events["timestamp"] < t2)).sum()),
                   "test": int((events["timestamp"] >= t2).sum())},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "results": results, "decision": decision, "models_list": listing.splitlines(),
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(f"train < {t1} | retrain log [{t1}, {t2}) | test [{t2}, {t3}]")
    print("| bundle | users (cold) | NDCG@10 | Recall@10 | Recall@50 | MRR | warm users: NDCG@10 "
          "| warm: Recall@50 | popularity NDCG@10 | popularity, warm: NDCG@10 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        m = r["metrics"]
        print(f"| {name} ({r['version']}) | {r['cases']} ({r['cold_cases']}) | "
              f"{m['pipeline']['ndcg@10']:.4f} | {m['pipeline']['recall@10']:.4f} | "
              f"{m['pipeline']['recall@50']:.4f} | {m['pipeline']['mrr']:.4f} | "
              f"{m['pipeline_warm']['ndcg@10']:.4f} | {m['pipeline_warm']['recall@50']:.4f} | "
              f"{m['popularity']['ndcg@10']:.4f} | {m['popularity_warm']['ndcg@10']:.4f} |")
    print(f"decision: {decision['decision']} ({decision['reason']})")
    print(f"timings (s): {report['timings_s']}; retrain steps: {decision['timings_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
