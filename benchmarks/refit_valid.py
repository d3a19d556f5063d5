"""Should the ranker be fit again on the valid clicks? Decided on valid alone.

The valid users are split in two halves by a seeded draw. Ranker X learns from the label rows
and stops early on half A, as `recsys train` does on the whole valid split; ranker Y is X's
setting fit again on the label rows and A's rows (`training.train_ranker.refit_on_valid`). Both
rank half B, scored as `recsys evaluate` scores the pipeline. Each seed is another split.

    python benchmarks/refit_valid.py --bundle MODELS/VERSION --data DATASET [--seeds 0,1,2]

The bundle supplies the item vectors, index and behavioural state (a `recsys train` bundle on
DATASET); its own ranker is not used. Writes benchmarks/results/refit_valid.json.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.atomic_files import write_json  # noqa: E402
from recsys.data.dataset import load_dataset  # noqa: E402
from recsys.evaluate import _full_ranking, training_event_counts  # noqa: E402
from recsys.ranking_context import RankingContext  # noqa: E402
from recsys.recommender import Recommender  # noqa: E402
from recsys.splits import Split  # noqa: E402
from training.ranker_data import build_groups, label_rows  # noqa: E402
from training.train_ranker import RankerConfig, train_ranker  # noqa: E402

METRICS = ("ndcg@10", "recall@50")


def one_split(recommender: Recommender, split: Split, train_rows, seed: int) -> dict:
    cases = split.cases("valid")
    in_a = np.random.default_rng(seed).random(len(cases)) < 0.5
    half_a = [c for c, a in zip(cases, in_a, strict=True) if a]
    half_b = [c for c, a in zip(cases, in_a, strict=True) if not a]
    rows_a = build_groups(recommender.context, half_a)
    features = list(recommender.ranker.features)
    config = RankerConfig(log_every=0)
    events = training_event_counts(split)
    out = {"seed": seed, "cases_a": len(half_a), "cases_b": len(half_b)}
    for name, refit in (("stopped_on_a", False), ("refit_with_a", True)):
        ranker, report = train_ranker(train_rows, rows_a, features,
                                      replace(config, refit_on_valid=refit), log=lambda m: None)
        scored = recommender.with_ranker(ranker)
        metrics, _, _ = _full_ranking(scored, scored.context, half_b, events)
        out[name] = {m: round(metrics["pipeline"][m], 4) for m in METRICS}
        out[name]["trees"] = report.get("refit_on_valid", {}).get("trees",
                                                                   report["best_iteration"])
    out["ratio_ndcg@10"] = round(out["refit_with_a"]["ndcg@10"]
                                 / out["stopped_on_a"]["ndcg@10"], 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" /
                                              "refit_valid.json"))
    args = parser.parse_args(argv)
    recommender = Recommender.load(args.bundle)
    dataset = load_dataset(args.data)
    split = Split.of(dataset, recommender.item_ids)
    saved = recommender.manifest.get("config", {})
    label_clicks, label_folds = saved.get("label_clicks", 1), saved.get("label_folds", 1)
    context = recommender.context
    train_rows = label_rows(
        split, lambda state: RankingContext(context.item_vectors, context.item_categories,
                                            context.index, state, context.retrieval,
                                            context.interest),
        n_items=len(recommender.item_ids), label_clicks=label_clicks, folds=label_folds)
    runs = []
    print("| seed | half B cases | stopped on A: NDCG@10 | Recall@50 | trees "
          "| refit with A: NDCG@10 | Recall@50 | trees | ratio NDCG@10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        run = one_split(recommender, split, train_rows, seed)
        runs.append(run)
        x, y = run["stopped_on_a"], run["refit_with_a"]
        print(f"| {seed} | {run['cases_b']:,} | {x['ndcg@10']:.4f} | {x['recall@50']:.4f} | "
              f"{x['trees']} | {y['ndcg@10']:.4f} | {y['recall@50']:.4f} | {y['trees']} | "
              f"{run['ratio_ndcg@10']:.3f} |", flush=True)
    ratios = sorted(r["ratio_ndcg@10"] for r in runs)
    write_json({"bundle": str(args.bundle), "dataset": dataset.name,
                "protocol": "valid users in two seeded halves; stop on A, score on B",
                "runs": runs, "median_ratio_ndcg@10": ratios[len(ratios) // 2],
                "command": "python benchmarks/refit_valid.py --bundle " + str(args.bundle)
                           + " --data " + str(args.data)}, Path(args.json))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
