"""Training settings compared on the valid split: candidate counts per source, ranker settings
and how many label clicks per user the ranker learns from, in how many groups of users.

    python benchmarks/settings_sweep.py --data /tmp/amazon [--workdir /tmp/settings-sweep]
                                        [--json benchmarks/results/settings_amazon_valid.json]

Each setting is a `TrainConfig` changed from the defaults; it is trained with the function
behind `recsys train` (no fine-tuning) and scored with the one behind `recsys evaluate --split
valid`. Test is never read: the defaults in `recsys/retrieval/config.py`,
`training/train_ranker.py` and `training/pipeline.py` are picked from this table. Bundles are
kept in the workdir, so a rerun evaluates them again without training. Every setting is changed
from one label click and `refit_on_valid` off: a ranker fit again on the valid clicks would be
scored on clicks it learned from (the refit, and two label clicks with it, have their own
valid-only check, benchmarks/refit_valid.py).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

from recsys.atomic_files import write_json  # noqa: E402
from recsys.evaluate import evaluate  # noqa: E402
from training.pipeline import TrainConfig, train  # noqa: E402

# name -> changes to the defaults: {"retrieval": {...}, "ranker": {...}, other TrainConfig fields}
SETTINGS: dict[str, dict] = {
    "defaults": {},
    "label_clicks_2": {"label_clicks": 2},
    "label_clicks_3": {"label_clicks": 3},
    "label_clicks_2_folds_2": {"label_clicks": 2, "label_folds": 2},
    "label_clicks_2_folds_4": {"label_clicks": 2, "label_folds": 4},
    "label_clicks_2_folds_8": {"label_clicks": 2, "label_folds": 8},
    "semantic_covisitation_200": {"retrieval": {"n_semantic": 200, "n_covisitation": 200}},
    "semantic_50_item_item_100": {"retrieval": {"n_semantic": 50, "n_item_item": 100}},
    "num_leaves_63": {"ranker": {"num_leaves": 63}},
    "min_data_in_leaf_20": {"ranker": {"min_data_in_leaf": 20}},
    "learning_rate_0.02": {"ranker": {"learning_rate": 0.02}},
    "bagging_0.8": {"ranker": {"bagging_fraction": 0.8, "bagging_freq": 1}},
}
METRICS = ("ndcg@10", "recall@10", "recall@50", "mrr")


def config_for(changes: dict) -> TrainConfig:
    changes = dict(changes)
    config = TrainConfig()
    config.ranker = replace(config.ranker, refit_on_valid=False)
    config.label_clicks = 1
    config.label_folds = 1
    if "retrieval" in changes:
        config.retrieval = replace(config.retrieval, **changes.pop("retrieval"))
    if "ranker" in changes:
        config.ranker = replace(config.ranker, **changes.pop("ranker"))
    return replace(config, **changes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an imported dataset (recsys import)")
    parser.add_argument("--workdir", default="/tmp/settings-sweep")
    parser.add_argument("--only", help="comma-separated setting names (default: all)")
    parser.add_argument("--json",
                        default=str(ROOT / "benchmarks" / "results" / "settings_amazon_valid.json"))
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SETTINGS)
    models = Path(args.workdir) / "models"
    rows = {}
    for name in names:
        if not (models / name / "manifest.json").exists():
            print(f"training {name}: {SETTINGS[name]}", flush=True)
            train(args.data, models, config_for(SETTINGS[name]), version=name,
                  make_current=False, log=lambda m: None)
        report = evaluate(models / name, args.data, "valid", log=lambda m: None)
        rows[name] = {"changes": SETTINGS[name],
                      "pipeline": {m: round(report["metrics"]["pipeline"][m], 4)
                                   for m in METRICS}}
        print(f"{name}: " + ", ".join(f"{m} {v:.4f}" for m, v in rows[name]["pipeline"].items()),
              flush=True)
    print("\n| setting (valid) | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row['pipeline'][m]:.4f}" for m in METRICS) + " |")
    write_json({"split": "valid", "data": str(args.data),
                "command": "python benchmarks/settings_sweep.py --data DATA", "settings": rows},
               Path(args.json))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
