"""Validation of dataset directories: each problem names its file, row and column."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from recsys.data import check_dataset, load_dataset, validate_dataset
from recsys.data.validate import normalize_events, normalize_items
from recsys.errors import DataError

CANONICAL = Path(__file__).parent / "fixtures" / "canonical"


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """A writable copy of the canonical fixture, valid until a test breaks it."""
    root = tmp_path / "ds"
    shutil.copytree(CANONICAL, root)
    return root


def rewrite(root: Path, name: str, change) -> None:
    frame = pl.read_parquet(root / name)
    change(frame).write_parquet(root / name)


def set_cell(column: str, row: int, value, dtype=None) -> callable:
    """A change that puts `value` in one cell (the column cast to `dtype` first if given)."""
    def change(frame: pl.DataFrame) -> pl.DataFrame:
        col = pl.col(column).cast(dtype) if dtype is not None else pl.col(column)
        target = dtype or frame.schema[column]
        return frame.with_columns(
            pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value, dtype=target))
            .otherwise(col).alias(column))
    return change


def only_problem(root: Path) -> DataError:
    problems = validate_dataset(root)
    assert len(problems) == 1, [str(p) for p in problems]
    with pytest.raises(DataError) as error:
        check_dataset(root)
    assert error.value is problems[0] or str(error.value) == str(problems[0])
    return problems[0]


def test_fixture_is_valid() -> None:
    assert validate_dataset(CANONICAL) == []
    check_dataset(CANONICAL)
    assert load_dataset(CANONICAL).items.height > 0


def test_missing_directory_and_files(dataset_dir: Path, tmp_path: Path) -> None:
    assert "not found" in str(validate_dataset(tmp_path / "nowhere")[0])
    (dataset_dir / "events.parquet").unlink()
    problem = only_problem(dataset_dir)
    assert problem.file == str(dataset_dir / "events.parquet")
    assert "missing" in str(problem)


def test_missing_column_names_file_and_column(dataset_dir: Path) -> None:
    rewrite(dataset_dir, "events.parquet", lambda f: f.drop("user_id"))
    problem = only_problem(dataset_dir)
    assert (problem.file, problem.column) == (str(dataset_dir / "events.parquet"), "user_id")
    assert "events.parquet" in str(problem) and "'user_id'" in str(problem)


def test_wrong_type_names_first_bad_row(dataset_dir: Path) -> None:
    rewrite(dataset_dir, "events.parquet",
            set_cell("timestamp", 5, "not a time", dtype=pl.String))
    problem = only_problem(dataset_dir)
    assert (problem.row, problem.column) == (5, "timestamp")
    assert "'not a time'" in str(problem)


def test_duplicate_item_id_names_second_occurrence(dataset_dir: Path) -> None:
    # Row 2 again, inserted as row 9: every event still finds its item.
    rewrite(dataset_dir, "items.parquet",
            lambda f: pl.concat([f.head(9), f.slice(2, 1), f.slice(9)]))
    problem = only_problem(dataset_dir)
    assert (problem.file, problem.row, problem.column) == (
        str(dataset_dir / "items.parquet"), 9, "item_id")
    assert "first at row 2" in str(problem)


def test_duplicate_event_id(dataset_dir: Path) -> None:
    rewrite(dataset_dir, "events.parquet", set_cell("event_id", 4, "1-1"))
    rewrite(dataset_dir, "events.parquet", set_cell("event_id", 1, "1-1"))
    problem = only_problem(dataset_dir)
    assert (problem.row, problem.column) == (4, "event_id")


def test_event_for_unknown_item_names_row(dataset_dir: Path) -> None:
    rewrite(dataset_dir, "events.parquet", set_cell("item_id", 11, "no-such-item"))
    problem = only_problem(dataset_dir)
    assert (problem.file, problem.row, problem.column) == (
        str(dataset_dir / "events.parquet"), 11, "item_id")
    assert "'no-such-item'" in str(problem)


def test_null_user_names_row(dataset_dir: Path) -> None:
    rewrite(dataset_dir, "events.parquet", set_cell("user_id", 3, None))
    problem = only_problem(dataset_dir)
    assert (problem.row, problem.column) == (3, "user_id")


@pytest.mark.parametrize("column", ["event_id", "timestamp"])
def test_other_required_nulls(dataset_dir: Path, column: str) -> None:
    rewrite(dataset_dir, "events.parquet", set_cell(column, 6, None))
    assert (only_problem(dataset_dir).row, only_problem(dataset_dir).column) == (6, column)


def test_unknown_event_type_and_split(dataset_dir: Path) -> None:
    rewrite(dataset_dir, "events.parquet", set_cell("type", 8, "like"))
    rewrite(dataset_dir, "events.parquet",
            lambda f: f.with_columns(pl.lit("train", dtype=pl.String).alias("split")))
    rewrite(dataset_dir, "events.parquet", set_cell("split", 2, "holdout"))
    problems = validate_dataset(dataset_dir)
    assert [(p.row, p.column) for p in problems] == [(8, "type"), (2, "split")]
    assert "'like'" in str(problems[0]) and "'holdout'" in str(problems[1])


@pytest.mark.parametrize(("meta", "column"), [({"time": "fake", "protocol": "time"}, "time"),
                                              ({"time": "real"}, "protocol")])
def test_dataset_json_time_and_protocol(dataset_dir: Path, meta: dict, column: str) -> None:
    (dataset_dir / "dataset.json").write_text(json.dumps(meta))
    problem = only_problem(dataset_dir)
    assert (problem.file, problem.column) == (str(dataset_dir / "dataset.json"), column)


def test_dataset_json_missing_or_broken(dataset_dir: Path) -> None:
    (dataset_dir / "dataset.json").write_text("{not json")
    assert "not valid JSON" in str(only_problem(dataset_dir))
    (dataset_dir / "dataset.json").unlink()
    assert only_problem(dataset_dir).file == str(dataset_dir / "dataset.json")


def test_several_problems_are_all_reported(dataset_dir: Path) -> None:
    rewrite(dataset_dir, "events.parquet", set_cell("user_id", 3, None))
    rewrite(dataset_dir, "items.parquet", lambda f: f.drop("title"))
    problems = validate_dataset(dataset_dir)
    assert [p.column for p in problems] == ["title", "user_id"]
    with pytest.raises(DataError) as error:
        check_dataset(dataset_dir)
    assert (error.value.file, error.value.column) == (problems[0].file, "title")
    assert "2 problems" in str(error.value) and "row 3" in str(error.value)
    with pytest.raises(DataError):
        load_dataset(dataset_dir)


def test_many_bad_rows_are_one_problem_with_a_count(dataset_dir: Path) -> None:
    # One problem per check and column, not per row, keeps the report short (and under the
    # MAX_PROBLEMS cap) however large the file.
    rewrite(dataset_dir, "events.parquet",
            lambda f: f.with_columns(pl.lit(None, dtype=pl.String).alias("user_id")))
    problem = only_problem(dataset_dir)
    rows = pl.read_parquet(dataset_dir / "events.parquet").height
    assert problem.row == 0 and f"({rows} rows)" in str(problem)


# --- normalize_* ---------------------------------------------------------------------------


def test_normalize_events_reads_every_timestamp_form() -> None:
    when = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    base = {"event_id": ["e"], "user_id": ["u"], "item_id": ["i"], "type": ["click"]}
    forms = [
        pl.Series([when.timestamp()]).cast(pl.Int64),  # unix seconds
        pl.Series([when.timestamp()]),  # float seconds
        pl.Series([str(int(when.timestamp()))]),  # seconds as text (CSV)
        pl.Series(["2020-01-02T05:04:05+02:00"]),  # ISO with an offset
        pl.Series([datetime(2020, 1, 2, 3, 4, 5)]),  # naive: taken as UTC
        pl.Series([when]).dt.convert_time_zone("Europe/Copenhagen").dt.cast_time_unit("ns"),
    ]
    for form in forms:
        events = normalize_events(pl.DataFrame({**base, "timestamp": form}))
        assert events.schema["timestamp"] == pl.Datetime("us", "UTC")
        assert events["timestamp"][0] == when, form


def test_normalize_orders_columns_and_keeps_extras() -> None:
    frame = pl.DataFrame({"extra": [1], "tags": ["a|b"], "category": [None], "text": ["t"],
                          "title": ["t"], "item_id": [7]})
    items = normalize_items(frame, "items.csv")
    assert items.columns == ["item_id", "title", "text", "category", "tags", "extra"]
    assert items["item_id"].to_list() == ["7"] and items["tags"].to_list() == [["a", "b"]]
    assert items.schema["category"] == pl.String


def test_normalize_error_names_file_row_column() -> None:
    frame = pl.DataFrame({"event_id": ["a", "b"], "user_id": ["u", "u"], "item_id": ["i", "i"],
                          "timestamp": ["2020-01-01", "2020-01-02"], "type": ["rating"] * 2,
                          "value": ["4.5", "five"]})
    with pytest.raises(DataError) as error:
        normalize_events(frame, "events.csv")
    assert (error.value.file, error.value.row, error.value.column) == ("events.csv", 1, "value")
    assert str(error.value).startswith("events.csv, row 1, column 'value': value 'five'")
