"""`recsys evaluate`: the pipeline and three baselines on one split, from the same cases.

Full-ranking protocols (leave_one_out, time) rank the target among ALL items: the pipeline's
ranked candidates first (new items kept at their semantic rank or better, as served:
`recsys.ranking_context.keep_new_items_up`), then every other item by semantic similarity to
the user's profile.
Each method is reported unmasked (history items may be recommended again) and masked (history
items removed before ranking). The impressions protocol ranks each logged list instead.

JSON contract (`--json FILE`, stable): {"dataset", "split", "protocol", "model_version",
"metrics": {METHOD: {METRIC: value}}, "slices": {...}, "details": {...}, "per_case": {...}} with
METHOD in pipeline, popularity, covisitation, semantic. "slices" holds "cold_items" (targets with
no event in the training part: new to the model) and "warm_items", each {"cases": N, "metrics":
{METHOD: {METRIC: value}}} (metrics empty when N is 0), over that slice's targets only; full
ranking adds the warm targets by how many training events they have ("warm_1-4_events",
"warm_5-14_events", "warm_15-49_events", "warm_50+_events"): where text should matter most.
"semantic_signal" is the semantic score's AUC of the targets against sampled catalogue items on
these cases (`recsys.semantic_signal`: auc, low, high, cases, negatives_per_target, verdict).
`per_case` holds what the HTML report plots:
"history_length" and, per method, "ndcg@10" (one value per case, unmasked), and "scores"
(pipeline ranker scores of clicked and of not-clicked candidates, the latter sampled).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from features.state import BehaviourState, created_seconds
from recsys.data.dataset import load_dataset
from recsys.interest import semantic_scores
from recsys.metrics import impression_metrics, rank_of, ranking_metrics
from recsys.progress import Steps
from recsys.ranking_context import RankingContext, keep_new_items_up, new_item_rows
from recsys.recommender import Recommender
from recsys.semantic_signal import SemanticSignal, semantic_signal
from recsys.splits import Case, Split

METHODS = ("pipeline", "popularity", "covisitation", "semantic")
# Bound the [users x items] score block held at once.
SCORE_BLOCK = 20_000_000
# Negative candidate scores kept for the report's score-distribution plot (seeded sample).
MAX_NEGATIVE_SCORES = 20_000
PER_CASE_K = 10
# Warm targets by their number of training events: the rarely seen items are where a text model
# should beat behaviour, the often seen ones where behaviour already knows them.
EVENT_BINS = ((1, 4), (5, 14), (15, 49), (50, np.inf))


def evaluate(models: str | Path, dataset_path: str | Path, split: str = "test", *,
             max_cases: int | None = None, seed: int = 0,
             log: Callable[[str], None] = print, steps: Steps | None = None) -> dict:
    started = time.perf_counter()
    steps = steps or Steps(2, log)
    steps.start(f"loading the bundle {models} and the dataset {dataset_path}")
    recommender = Recommender.load(models)
    dataset = load_dataset(dataset_path)
    data_split = Split.of(dataset, recommender.item_ids)
    cases = data_split.cases(split)
    if max_cases is not None and len(cases) > max_cases:
        keep = np.random.default_rng(seed).choice(len(cases), max_cases, replace=False)
        cases = [cases[i] for i in sorted(keep)]
    context = evaluation_context(recommender, data_split, split)
    saw_valid = valid_not_held_out(recommender.manifest) if split == "valid" else {}
    for note in saw_valid.values():
        log(f"note: {note}")
    steps.start(f"evaluating {recommender.version} on {dataset.name} {split}: {len(cases):,} "
                f"cases, protocol {data_split.protocol}")
    events = training_event_counts(data_split)
    with steps.bar(len(cases), "case") as bar:
        if data_split.protocol == "impressions":
            metrics, per_case, slices = _impressions(recommender, context, cases, events > 0, bar)
        else:
            metrics, per_case, slices = _full_ranking(recommender, context, cases, events, bar)
    per_case["history_length"] = [len(c.history) for c in cases]
    signal = semantic_signal(context, cases, seed=seed)
    seconds = time.perf_counter() - started
    return {
        "dataset": dataset.name, "split": split, "protocol": data_split.protocol,
        "model_version": recommender.version, "metrics": metrics, "slices": slices,
        "semantic_signal": signal.to_dict(),
        "details": {"cases": len(cases), "items": len(recommender.item_ids),
                    "seconds": round(seconds, 1),
                    "state": "bundle" if context.state is recommender.state else
                             "refit on events before the split window",
                    "features": list(recommender.ranker.features),
                    "ranker_used": recommender.ranker_used,
                    "ranker_saw_this_split": "ranker" in saw_valid,
                    "encoder_saw_this_split": "encoder" in saw_valid,
                    "gain_importance": recommender.manifest.get("ranker", {}).get(
                        "gain_importance", {})},
        "per_case": per_case,
    }


def valid_not_held_out(manifest: dict) -> dict[str, str]:
    """The parts of a bundle trained on the valid clicks ("ranker", "encoder"), each with a note
    saying so: its valid metrics are in sample."""
    notes = {}
    if "refit_on_valid" in manifest.get("ranker", {}):
        notes["ranker"] = ("this bundle's ranker was fit again on the valid clicks after early "
                           "stopping (RankerConfig.refit_on_valid), so its valid pipeline "
                           "metrics are not held out")
    finetune = (manifest.get("encoder") or {}).get("finetune") or {}
    if (finetune.get("data") or {}).get("valid_clicks_included"):
        notes["encoder"] = ("this bundle's encoder was fine-tuned again on the valid clicks "
                            "(FinetuneConfig.refit_on_valid), so its valid semantic and pipeline "
                            "metrics are not held out")
    return notes


def evaluation_context(recommender: Recommender, split: Split, which: str) -> RankingContext:
    """The bundle's state for valid; for test, the state refit on every event before the test
    part, as a deployed engine ingesting its events would have it. In leave-one-out that adds
    each user's valid click, which the test case's history already holds."""
    if which == "valid":
        return recommender.context
    state = BehaviourState(n_items=len(recommender.item_ids), real_time=recommender.real_time,
                           covis_window=recommender.state.covis_window,
                           covis_backward_weight=recommender.state.covis_backward_weight,
                           covis_top=recommender.state.covis_top,
                           item_item_lambda=recommender.state.item_item_lambda,
                           item_item_top=recommender.state.item_item_top)
    state.fit(split.events_before_test(), cutoff=split.test_start,
              created_s=created_seconds(split.dataset.items, recommender.item_ids))
    if recommender.state.item_item_ is None:
        state.item_item_ = None   # a bundle made before the item-item source: its rows as trained
    base = recommender.context
    return RankingContext(base.item_vectors, base.item_categories, base.index, state,
                          base.retrieval, base.interest)


def training_event_counts(split: Split) -> np.ndarray:
    """Each item row's number of events (any type) in the training part."""
    return np.bincount(split.train_events()["item"].to_numpy().astype(np.int64),
                       minlength=len(split.dataset.items))


def items_with_training_events(split: Split) -> np.ndarray:
    """Which item rows have an event (any type) in the training part: a target outside them is
    brand new to the model, a cold item."""
    return training_event_counts(split) > 0


def _slice_targets(cases: list[Case], events: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Per slice, per case, which of the case's targets belong to it (boolean over targets):
    cold and warm by `events` (training events per item row), then the warm by `EVENT_BINS`."""
    counts = [events[np.asarray(c.targets, dtype=np.int64)] for c in cases]
    out = {"cold_items": [n == 0 for n in counts], "warm_items": [n > 0 for n in counts]}
    for low, high in EVENT_BINS:
        name = f"warm_{low}+_events" if high == np.inf else f"warm_{low}-{high}_events"
        out[name] = [(n >= low) & (n <= high) for n in counts]
    return out


def _ranking_slices(ranks: dict[str, list[list[float]]], cases: list[Case],
                    events: np.ndarray) -> dict:
    """The metrics again on each slice's targets: a case counts in a slice with the targets it
    has there (a case with a cold and a warm target is in both, each with its own)."""
    out = {}
    for name, members in _slice_targets(cases, events).items():
        used = [j for j, m in enumerate(members) if m.any()]
        metrics = {}
        for method in METHODS if used else ():
            metrics[method] = ranking_metrics(
                [np.asarray(ranks[method][j])[members[j]] for j in used])
            masked = ranking_metrics(
                [np.asarray(ranks[f"{method}_masked"][j])[members[j]] for j in used])
            metrics[method].update({f"{k}_masked": v for k, v in masked.items()})
        out[name] = {"cases": len(used), "metrics": metrics}
    return out


def _chunks(cases: list[Case], n_items: int, bar=None):
    size = max(1, min(1000, SCORE_BLOCK // max(n_items, 1)))
    for start in range(0, len(cases), size):
        chunk = cases[start:start + size]
        yield chunk
        if bar is not None:
            bar.update(len(chunk))


def _full_ranking(recommender: Recommender, context: RankingContext, cases: list[Case],
                  events: np.ndarray, bar=None) -> tuple[dict[str, dict[str, float]], dict,
                                                         dict]:
    """Every method's metrics over all items, the per-case rows and the slices; `events` is
    `training_event_counts`."""
    n_items = len(recommender.item_ids)
    state = context.state
    pop_position = np.empty(n_items, dtype=np.float64)
    pop_position[state.popular_rows_] = np.arange(n_items)
    popularity = 1.0 - pop_position / n_items               # in (0, 1], higher = more popular
    is_new = new_item_rows(state)
    ranks: dict[str, list[list[float]]] = {f"{m}{s}": [] for m in METHODS for s in ("", "_masked")}
    scores_seen = _ScoreSample()
    for chunk in _chunks(cases, n_items, bar):
        requests = context.requests([c.history for c in chunk], np.array([c.time for c in chunk]),
                                    np.array([c.last_time for c in chunk]))
        candidates, rows = context.rows(requests)
        scores = recommender.ranker.predict(rows)
        scores_seen.add(scores, candidates.hits([c.targets for c in chunk]))
        semantic = semantic_scores(requests.profiles, context.item_vectors,
                                   [c.history for c in chunk], context.interest)
        covis = requests.covisitation_scores(state.covisitation)
        rows_of = candidates.slices(len(chunk))
        for j, case in enumerate(chunk):
            if not case.history:
                # no history: every method serves the popularity fallback
                methods = {m: popularity for m in METHODS}
            else:
                mask = rows_of[j]
                order = keep_new_items_up(np.argsort(-scores[mask], kind="stable"),
                                          candidates.item[mask], candidates.sem_rank[mask],
                                          is_new)
                pipeline = semantic[j].astype(np.float64).copy()
                ranked_items = candidates.item[mask][order]
                pipeline[ranked_items] = 10.0 + (len(order) - np.arange(len(order)))
                covis_row = np.asarray(covis[j].todense()).ravel().astype(np.float64)
                top = covis_row.max() if covis_row.size else 0.0
                covisitation = np.where(covis_row > 0, 2.0 + covis_row / max(top, 1e-12),
                                        popularity)
                methods = {"pipeline": pipeline, "popularity": popularity,
                           "covisitation": covisitation, "semantic": semantic[j]}
            seen = np.unique(np.asarray(case.history, dtype=np.int64))
            for name, score in methods.items():
                ranks[name].append([rank_of(score, t) for t in case.targets])
                masked = np.asarray(score, dtype=np.float64).copy()
                masked[seen] = -np.inf
                ranks[f"{name}_masked"].append([rank_of(masked, t) for t in case.targets])
    out: dict[str, dict[str, float]] = {}
    for name in METHODS:
        out[name] = ranking_metrics(ranks[name])
        masked = ranking_metrics(ranks[f"{name}_masked"])
        out[name].update({f"{k}_masked": v for k, v in masked.items()})
    per_case = {f"ndcg@{PER_CASE_K}": {
        name: [round(ranking_metrics([r], (PER_CASE_K,))[f"ndcg@{PER_CASE_K}"], 6)
               for r in ranks[name]] for name in METHODS},
        "scores": scores_seen.result()}
    return out, per_case, _ranking_slices(ranks, cases, events)


class _ScoreSample:
    """Ranker scores of positive candidates (all) and negative ones (a bounded, seeded sample)."""

    def __init__(self, limit: int = MAX_NEGATIVE_SCORES, seed: int = 0) -> None:
        self.limit = limit
        self.rng = np.random.default_rng(seed)
        self.positive: list[np.ndarray] = []
        self.negative: list[np.ndarray] = []
        self.n_negative = 0

    def add(self, scores: np.ndarray, is_target: np.ndarray) -> None:
        self.positive.append(scores[is_target])
        negative = scores[~is_target]
        self.n_negative += negative.size
        # keep each chunk's share of the sample small enough that the total stays bounded
        if negative.size > self.limit // 10:
            negative = self.rng.choice(negative, self.limit // 10, replace=False)
        self.negative.append(negative)

    def result(self) -> dict:
        positive = np.concatenate(self.positive) if self.positive else np.zeros(0)
        negative = np.concatenate(self.negative) if self.negative else np.zeros(0)
        if negative.size > self.limit:
            negative = self.rng.choice(negative, self.limit, replace=False)
        return {"positive": [round(float(v), 5) for v in positive],
                "negative": [round(float(v), 5) for v in negative],
                "negative_total": int(self.n_negative)}


def _impressions(recommender: Recommender, context: RankingContext, cases: list[Case],
                 trained: np.ndarray, bar=None) -> tuple[dict[str, dict[str, float]], dict,
                                                         dict]:
    state = context.state
    per_method: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    labels: list[np.ndarray] = []
    shown_items: list[np.ndarray] = []
    scores_seen = _ScoreSample()
    for chunk in _chunks(cases, len(recommender.item_ids), bar):
        requests = context.requests([c.history for c in chunk], np.array([c.time for c in chunk]),
                                    np.array([c.last_time for c in chunk]))
        shown = [list(dict.fromkeys(c.shown or [])) for c in chunk]
        candidates, rows = context.rows(requests, given=shown)
        scores = recommender.ranker.predict(rows)
        scores_seen.add(scores, candidates.hits([c.targets for c in chunk]))
        covis = requests.covisitation_scores(state.covisitation)
        semantic = semantic_scores(requests.profiles, context.item_vectors,
                                   [c.history for c in chunk], context.interest)
        rows_of = candidates.slices(len(chunk))
        for j, case in enumerate(chunk):
            mask = rows_of[j]
            items = candidates.item[mask]
            labels.append(np.isin(items, case.targets).astype(np.float64))
            shown_items.append(items)
            per_method["pipeline"].append(scores[mask])
            per_method["popularity"].append(state.clicks_[items])
            per_method["covisitation"].append(np.asarray(covis[j, items].todense()).ravel())
            per_method["semantic"].append(semantic[j, items])
    metrics = {name: impression_metrics(per_method[name], labels) for name in METHODS}
    per_case = {f"ndcg@{PER_CASE_K}": {
        name: [round(impression_metrics([s], [y], (PER_CASE_K,))[f"ndcg@{PER_CASE_K}"], 6)
               for s, y in zip(per_method[name], labels, strict=True)] for name in METHODS},
        "scores": scores_seen.result()}
    return metrics, per_case, _impression_slices(per_method, labels, shown_items, trained)


def _impression_slices(per_method: dict[str, list[np.ndarray]], labels: list[np.ndarray],
                       shown_items: list[np.ndarray], trained: np.ndarray) -> dict:
    """Per slice: the lists with a clicked item of the slice, ranked with only those clicks as
    positives (the other clicked items left out, the non-clicked kept)."""
    out = {}
    for name, want_trained in (("cold_items", False), ("warm_items", True)):
        keep_rows, kept = [], []
        for j, (label, items) in enumerate(zip(labels, shown_items, strict=True)):
            positive = (label > 0) & (trained[items] == want_trained)
            if positive.any():
                keep_rows.append(j)
                kept.append(positive | (label <= 0))
        metrics = {method: impression_metrics(
            [per_method[method][j][k] for j, k in zip(keep_rows, kept, strict=True)],
            [labels[j][k] for j, k in zip(keep_rows, kept, strict=True)])
            for method in (METHODS if keep_rows else ())}
        out[name] = {"cases": len(keep_rows), "metrics": metrics}
    return out


def format_table(report: dict) -> str:
    """The report as a fixed-width table, methods as rows."""
    metrics = report["metrics"]
    names = list(next(iter(metrics.values())).keys())
    if report["protocol"] != "impressions":
        names = [n for n in names if not n.endswith("_masked")] + \
                [n for n in names if n.endswith("_masked")]
    width = max(len(n) for n in names) + 2
    lines = [f"{report['dataset']} / {report['split']} / {report['protocol']} / "
             f"model {report['model_version']} / {report['details']['cases']} cases",
             "method".ljust(14) + "".join(n.rjust(width) for n in names)]
    for method, values in metrics.items():
        lines.append(method.ljust(14) + "".join(f"{values[n]:.4f}".rjust(width) for n in names))
    lines.extend(format_slices(report))
    if "semantic_signal" in report:   # reports written before the check lack it
        lines.append(SemanticSignal(**report["semantic_signal"]).describe(report["split"]))
    return "\n".join(lines)


def slice_headline(report: dict) -> tuple[str, str]:
    """The two metrics the compact slice table shows (unmasked)."""
    return ("auc", "ndcg@10") if report["protocol"] == "impressions" else ("ndcg@10", "recall@50")


def format_slices(report: dict) -> list[str]:
    """Cold and warm items in a few lines: per slice, each method's two headline metrics."""
    slices = report.get("slices")
    if not slices:   # reports written before slices existed
        return []
    first, second = slice_headline(report)
    lines = [f"slices by target item ({first} / {second}; cold = no training event, "
             "warm_N-M_events = N to M):",
             "slice".ljust(26) + "".join(m.rjust(16) for m in METHODS)]
    for name, part in slices.items():
        values = part["metrics"]
        cells = "".join((f"{values[m][first]:.4f}/{values[m][second]:.4f}" if m in values
                         else "-").rjust(16) for m in METHODS)
        lines.append(f"{name} ({part['cases']})".ljust(26) + cells)
    return lines
