"""The command line: lifecycle commands, exit codes, and the evaluate --json contract."""

import json

import polars as pl
import pytest

from recsys.cli import EXIT_BAD_INPUT, main
from tests.conftest import FIXTURES


def test_import_validate_train_evaluate(tmp_path, capsys):
    data, models = tmp_path / "data", tmp_path / "models"
    assert main(["import", "recbole", str(FIXTURES / "recbole"), "--out", str(data)]) == 0
    assert main(["validate", str(data)]) == 0
    assert main(["train", str(data), "--out", str(models), "--version", "first"]) == 0
    report_path = tmp_path / "eval.json"
    assert main(["evaluate", str(models), str(data), "--split", "test", "--json",
                 str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["dataset"] and report["split"] == "test"
    assert report["protocol"] == "leave_one_out" and report["model_version"] == "first"
    assert set(report["metrics"]) == {"pipeline", "popularity", "covisitation", "semantic"}
    names = {"recall@10", "ndcg@10", "recall@50", "ndcg@50", "mrr"}
    for values in report["metrics"].values():
        assert set(values) == names | {f"{n}_masked" for n in names}
        assert all(0.0 <= v <= 1.0 for v in values.values())
    out = capsys.readouterr().out
    assert "pipeline" in out and "semantic" in out

    assert main(["models", "list", str(models)]) == 0
    assert "* first" in capsys.readouterr().out


def test_validate_reports_file_row_and_column(tmp_path, recbole_dataset, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("items.parquet", "dataset.json"):
        (broken / name).write_bytes((recbole_dataset / name).read_bytes())
    events = pl.read_parquet(recbole_dataset / "events.parquet")
    events = events.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(None).otherwise(pl.col("user_id")).alias("user_id"))
    events.write_parquet(broken / "events.parquet")
    assert main(["validate", str(broken)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "events.parquet" in err and "row 7" in err and "user_id" in err


def test_bad_source_exits_non_zero_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["import", "movielens", str(tmp_path / "missing"), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "missing" in capsys.readouterr().err
    assert not (out / "events.parquet").exists()


def test_evaluate_without_models_is_a_clear_error(tmp_path, recbole_dataset, capsys):
    assert main(["evaluate", str(tmp_path), str(recbole_dataset)]) == EXIT_BAD_INPUT
    assert "recsys train" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == EXIT_BAD_INPUT
    assert "quickstart" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["promote"])
def test_promote_needs_an_existing_version(action, models_dir, capsys):
    assert main(["models", action, str(models_dir), "../etc"]) == EXIT_BAD_INPUT
    assert "invalid model version" in capsys.readouterr().err
