"""Encoder fine-tuning benchmarks: the user-side comparison, and the unseen-item (cold start) slice.

    python benchmarks/finetune.py user-sides DATASET --budget 600 --json OUT.json
    python benchmarks/finetune.py slice MODELS[/VERSION] [MODELS ...] --dataset DATASET
    python benchmarks/finetune.py components MODELS/VERSION --dataset DATASET --json OUT.json

`user-sides` fine-tunes once per user side with the same time budget and settings ("interest"
and "profile" in the CPU adapter mode, "text" in the transformer mode), selects on
valid Recall@50 (as `recsys train --finetune` does) and reports semantic retrieval alone, full
ranking over every item, unmasked, on valid and test. `slice` reports every method of
`recsys evaluate` on the test targets whose item never appeared in a training click.
`components` takes a bundle fine-tuned with the "interest" user side apart: semantic retrieval
with each half of the fine-tuning on or off (zero-shot or adapted item vectors, plain mean or
learned user side), on all cases and on the unseen-target cases, valid and test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.atomic_files import write_json  # noqa: E402
from recsys.data.dataset import load_dataset  # noqa: E402
from recsys.embedding_cache import encode_cached  # noqa: E402
from recsys.encoder import Encoder  # noqa: E402
from recsys.retrieval import user_profiles  # noqa: E402
from recsys.splits import Split  # noqa: E402
from training.finetune import (  # noqa: E402
    FinetuneConfig,
    RetrievalRecallEvaluator,
    adapted_vectors,
    finetune_encoder,
    retrieval_metrics,
)
from training.finetune_eval import unseen_item_slice  # noqa: E402
from training.pipeline import item_texts  # noqa: E402

METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


def _cases(split: Split, which: str, max_cases: int | None):
    cases = [c for c in split.cases(which) if c.history]
    if max_cases is not None and len(cases) > max_cases:
        keep = np.random.default_rng(0).choice(len(cases), max_cases, replace=False)
        cases = [cases[i] for i in np.sort(keep)]
    return cases


def retrieval_scores(model, texts, split: Split, user_side: str, history_items: int,
                     max_cases: int | None = None) -> dict:
    """Semantic retrieval with an encoder that reads texts at request time (both sides)."""
    out = {}
    for which in ("valid", "test"):
        evaluator = RetrievalRecallEvaluator(texts, _cases(split, which, max_cases),
                                             user_side=user_side, history_items=history_items,
                                             name=which)
        out[which] = {k: round(v, 4) for k, v in evaluator.scores(model).items()}
    return out


def vector_scores(vectors, profiles_of, split: Split, max_cases: int | None = None,
                  interest=None) -> dict:
    """Semantic retrieval from item vectors and a user side over them (as the bundle serves)."""
    out = {}
    for which in ("valid", "test"):
        cases = _cases(split, which, max_cases)
        metrics = retrieval_metrics(profiles_of([c.history for c in cases]), vectors, cases,
                                    interest)
        out[which] = {k: round(v, 4) for k, v in metrics.items()}
    return out


def user_sides(args) -> dict:
    dataset = load_dataset(args.dataset)
    texts = item_texts(dataset.items)
    item_ids = dataset.items["item_id"].to_list()
    split = Split.of(dataset, item_ids)
    base = Encoder(None, device=args.device)
    base_vectors = encode_cached(base, texts)
    report = {"dataset": dataset.name, "budget_s": args.budget, "max_cases": args.max_cases,
              "rows": {}}
    zero_shot = Encoder(None, device=args.device, max_length=128).model
    for side in ("profile", "text"):
        report["rows"][f"zero-shot, user side {side}"] = retrieval_scores(
            zero_shot, texts, split, side, 3, args.max_cases)
        print(side, "zero-shot", report["rows"][f"zero-shot, user side {side}"], flush=True)
    for side in args.sides:
        config = FinetuneConfig(user_side=side, time_budget_s=args.budget, seed=args.seed)
        with tempfile.TemporaryDirectory(prefix="finetune-bench-") as work:
            started = time.perf_counter()
            result = finetune_encoder(texts, split, base_vectors, work, config=config,
                                      device=args.device)
            shipped = Encoder(result.model_dir, device=args.device, max_length=128)
            if side == "text":
                row = retrieval_scores(shipped.model, texts, split, side, config.history_items,
                                       args.max_cases)
            else:   # cached-vector user sides: score what the bundle would hold
                vectors = (base_vectors if result.report["best_step"] is None
                           else adapted_vectors(shipped, base_vectors, texts))
                interest = result.interest
                row = vector_scores(
                    vectors, (lambda h, v=vectors: user_profiles(h, v)) if interest is None
                    else (lambda h, v=vectors, m=interest: m.profiles(h, v)),
                    split, args.max_cases, interest)
            row["finetune"] = {k: result.report[k] for k in
                               ("steps", "epochs_done", "best_step", "stop_reason", "valid")}
            row["seconds"] = round(time.perf_counter() - started, 1)
        report["rows"][f"fine-tuned, user side {side}"] = row
        print(side, "fine-tuned", {k: row[k] for k in ("valid", "test")}, flush=True)
    return report


def components(args) -> dict:
    from recsys.recommender import Recommender
    from training.finetune_eval import items_seen_in_training, unseen_target_cases

    recommender = Recommender.load(args.models)
    interest = recommender.context.interest
    if interest is None:
        raise SystemExit(f"{args.models}: no learned user side (interest.safetensors) "
                         "to take apart")
    dataset = load_dataset(args.dataset)
    split = Split.of(dataset, recommender.item_ids)
    base_vectors = encode_cached(Encoder(None, device="cpu"), item_texts(dataset.items))
    adapted = recommender.item_vectors
    variants = {
        "zero-shot vectors, plain mean": (base_vectors, None),
        "adapted vectors, plain mean": (adapted, None),
        "zero-shot vectors, learned user side": (base_vectors, interest),
        "adapted vectors, learned user side (the bundle)": (adapted, interest),
    }
    seen = items_seen_in_training(split)
    report = {"model_version": recommender.version, "rows": {}}
    for which in ("valid", "test"):
        every = [c for c in split.cases(which) if c.history]
        for part, cases in (("all", every), ("unseen", unseen_target_cases(every, seen))):
            for name, (vectors, model) in variants.items():
                histories = [c.history for c in cases]
                profiles = (user_profiles(histories, vectors) if model is None
                            else model.profiles(histories, vectors))
                metrics = retrieval_metrics(profiles, vectors, cases, model)
                row = {"cases": len(cases), **{k: round(metrics[k], 4) for k in METRICS}}
                report["rows"][f"{which} / {part} / {name}"] = row
                print(f"{which:5s} {part:6s} {len(cases):5d}  {name:48s}  "
                      f"R@50 {row['recall@50']:.4f}  NDCG@10 {row['ndcg@10']:.4f}", flush=True)
    return report


def cold_start(args) -> dict:
    return {str(models): unseen_item_slice(models, args.dataset, args.split)
            for models in args.models}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("user-sides")
    p.add_argument("dataset")
    p.add_argument("--budget", type=float, default=600.0, help="fine-tuning seconds per side")
    p.add_argument("--sides", nargs="*", default=["interest", "profile", "text"],
                   choices=["interest", "profile", "text"],
                   help="user sides to fine-tune (none: zero-shot rows only)")
    p.add_argument("--max-cases", type=int, default=None, help="sample valid/test cases")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p = sub.add_parser("slice")
    p.add_argument("models", nargs="+")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--json", default=None)
    p = sub.add_parser("components")
    p.add_argument("models")
    p.add_argument("--dataset", required=True)
    p.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    report = {"user-sides": user_sides, "slice": cold_start,
              "components": components}[args.command](args)
    if args.command == "slice":
        for models, part in report.items():
            print(f"{models} ({part['model_version']}): {part['cases']} of {part['all_cases']} "
                  f"{part['split']} cases have a target unseen in training")
            for method, values in part["metrics"].items():
                print(f"  {method:14s}" + "".join(f"  {m} {values[m]:.4f}" for m in METRICS))
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
