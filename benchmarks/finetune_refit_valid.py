"""Should the shipped encoder be fine-tuned again on the valid clicks? Decided on valid alone.

`FinetuneConfig.refit_on_valid` trains the shipped encoder, for the epochs valid chose, on every
click before test, each user's valid click included, so no held-out valid score can judge it.
Here the valid clicks stand in for test: a copy of a leave-one-out DATASET without its test
clicks, in which each user's valid click is the test click and their last training click the
valid one (`valid_as_test`). `recsys train --finetune` runs with the refit off and on, and
`recsys evaluate --split test` scores both on the copy, that is on the real valid clicks.

    python benchmarks/finetune_refit_valid.py --data /tmp/amazon --workdir /tmp/refit

Writes benchmarks/results/finetune_refit_valid.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.atomic_files import write_json  # noqa: E402
from recsys.data.dataset import load_dataset  # noqa: E402
from recsys.data.schema import EVENTS_FILE  # noqa: E402
from recsys.evaluate import evaluate  # noqa: E402
from recsys.splits import Split  # noqa: E402
from training.finetune import FinetuneConfig  # noqa: E402
from training.pipeline import TrainConfig, train  # noqa: E402

METHODS = ("pipeline", "semantic")
METRICS = ("ndcg@10", "recall@50")


def valid_as_test(data: Path, out: Path) -> Path:
    """The copy: test clicks dropped, valid -> test, each user's last training click -> valid."""
    dataset = load_dataset(data)
    split = Split.of(dataset, dataset.items["item_id"].to_list())
    if split.protocol != "leave_one_out":
        raise SystemExit(f"{data}: needs a leave-one-out dataset, it is {split.protocol}")
    events = (split.events.filter(pl.col("split") != "test").drop("item")
              .with_columns(pl.col("split").replace({"valid": "test"})))
    trained = pl.col("split") == "train"
    last_trained = trained & (trained.cast(pl.Int32).cum_sum(reverse=True).over("user_id") == 1)
    events = events.with_columns(
        pl.when(last_trained).then(pl.lit("valid")).otherwise(pl.col("split")).alias("split"))
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(data, out)
    events.select(dataset.events.columns).write_parquet(out / EVENTS_FILE)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a leave-one-out dataset")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/finetune_refit_valid"))
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "finetune_refit_valid.json")
    args = parser.parse_args()
    data = valid_as_test(args.data, args.workdir / "valid_as_test")
    report = {"data": str(args.data), "scored_on": "the real valid clicks (test of the copy)",
              "runs": {}}
    for name, refit in (("selected_on_valid", False), ("refit_on_valid", True)):
        started = time.perf_counter()
        config = TrainConfig(finetune=FinetuneConfig(refit_on_valid=refit))
        train(data, args.workdir / "models", config, version=name, make_current=False)
        seconds = time.perf_counter() - started
        result = evaluate(args.workdir / "models" / name, data, "test")
        report["runs"][name] = {
            "train_seconds": round(seconds, 1),
            "metrics": {m: {k: round(result["metrics"][m][k], 4) for k in METRICS}
                        for m in METHODS},
            "slices": {s: {"cases": v["cases"],
                           "ndcg@10": {m: round(v["metrics"][m]["ndcg@10"], 4)
                                       for m in METHODS}}
                       for s, v in result["slices"].items()}}
    write_json(report, args.out)
    columns = [(m, k) for m in METHODS for k in METRICS]
    print(f"{'run':<20} {'train s':>8}" + "".join(f" {m + ' ' + k:>20}" for m, k in columns))
    for name, run in report["runs"].items():
        print(f"{name:<20} {run['train_seconds']:>8.0f}"
              + "".join(f" {run['metrics'][m][k]:>20.4f}" for m, k in columns))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
