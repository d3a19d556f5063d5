"""Cold start: how each method ranks test targets whose item never appeared in a training click.

Reuses `recsys.evaluate`'s full-ranking code on the subset of cases (and targets) that are unseen
in the training part, so the numbers mean exactly what the main evaluation's numbers mean.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from features.state import POSITIVE_TYPES
from recsys.data.dataset import load_dataset
from recsys.recommender import Recommender
from recsys.splits import Case, Split


def items_seen_in_training(split: Split) -> set[int]:
    clicks = split.train_events().filter(pl.col("type").is_in(POSITIVE_TYPES))
    return set(int(i) for i in clicks["item"].unique().to_list())


def unseen_target_cases(cases: list[Case], seen: set[int]) -> list[Case]:
    """Each case keeps only its targets unseen in training; cases left with none are dropped."""
    out = []
    for case in cases:
        fresh = [t for t in case.targets if t not in seen]
        if fresh:
            out.append(Case(case.user_id, case.history, case.last_time, case.time, fresh,
                            case.shown))
    return out


def unseen_item_slice(models: str | Path, dataset_path: str | Path, split: str = "test") -> dict:
    """Full-ranking metrics (unmasked and masked) of every method on the unseen-target slice."""
    # the submodule, not `recsys.evaluate` (the package exports the function by that name)
    from recsys.evaluate import _full_ranking, evaluation_context, training_event_counts

    recommender = Recommender.load(models)
    data_split = Split.of(load_dataset(dataset_path), recommender.item_ids)
    if data_split.protocol == "impressions":
        raise ValueError("the unseen-item slice is defined for full-ranking protocols only")
    all_cases = data_split.cases(split)
    cases = unseen_target_cases(all_cases, items_seen_in_training(data_split))
    report = {"model_version": recommender.version, "split": split, "cases": len(cases),
              "all_cases": len(all_cases)}
    if not cases:
        return {**report, "metrics": {}}
    context = evaluation_context(recommender, data_split, split)
    metrics, _, _ = _full_ranking(recommender, context, cases, training_event_counts(data_split))
    report["metrics"] = metrics
    return report
