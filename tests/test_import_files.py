"""`recsys import files`: a user's own export in one command, every problem in one run (issue 25).

The fixture tests/fixtures/own_data is a news site's export in its own shape: articles.csv is a
semicolon CSV with a byte order mark (id;headline;body;section;published), clicks.jsonl holds
JSON lines with epoch milliseconds (user, article, ts).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from recsys.cli import EXIT_BAD_INPUT, main
from recsys.data import import_dataset, load_dataset
from recsys.errors import DataError

OWN = Path(__file__).parent / "fixtures" / "own_data"
ARTICLES, CLICKS = OWN / "articles.csv", OWN / "clicks.jsonl"
MAP = ("id=item_id,headline=title,body=text,section=category,published=created_at,"
       "user=user_id,article=item_id,ts=timestamp")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_items(path: Path, delimiter: str = ",", bom: bool = False) -> Path:
    rows = [["item_id", "title", "category"], ["a", "Alpha, the first", "x"], ["b", "Beta", "y"]]
    quote = ('"{}"'.format if delimiter == "," else str)
    text = "\n".join(delimiter.join(quote(c) if "," in c else c for c in row) for row in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (text + "\n").encode())
    return path


def write_events(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CLICK_ROWS = [{"user_id": "u1", "item_id": "a", "timestamp": "2025-09-01T10:00:00Z"},
              {"user_id": "u1", "item_id": "b", "timestamp": "2025-09-02T10:00:00Z"}]


# --- the fixture in its own shape --------------------------------------------------------------


def test_foreign_export_imports_with_one_documented_command(tmp_path, capsys):
    out = tmp_path / "news"
    code, stdout, err = run(capsys, "import", "files", "--items", str(ARTICLES), "--events",
                            str(CLICKS), "--out", str(out), "--map", MAP)
    assert code == 0, err
    dataset = load_dataset(out)
    assert (dataset.items.height, dataset.events.height) == (48, 326)
    assert dataset.events["user_id"].n_unique() == 30
    # The byte order mark did not stick to the first column name ("id" was found and renamed).
    assert dataset.items["item_id"][0] == "hb-101"
    assert dataset.items["title"][0] == "Harbour flood barrier to be raised by half a metre"
    assert dataset.items["category"][0] == "climate"
    first = json.loads(CLICKS.read_text().splitlines()[0])
    assert dataset.events["timestamp"][0] == datetime.fromtimestamp(first["ts"] / 1000, UTC)
    assert set(dataset.events["type"]) == {"click"}
    assert "epoch milliseconds (by magnitude)" in stdout
    assert "every event is a 'click' (--default-type)" in stdout
    assert dataset.meta["name"] == "news" and dataset.meta["time"] == "real"
    assert run(capsys, "validate", str(out))[0] == 0


def test_without_map_every_missing_column_is_named_in_one_run_with_a_map(tmp_path, capsys):
    out = tmp_path / "news"
    code, _, err = run(capsys, "import", "files", "--items", str(ARTICLES), "--events",
                       str(CLICKS), "--out", str(out))
    assert code == EXIT_BAD_INPUT
    assert "Traceback" not in err
    assert f"{ARTICLES}: missing columns item_id, title; found id, headline, body, section, " \
           "published" in err
    assert f"{CLICKS}: missing columns user_id, item_id, timestamp; found user, article, ts" in err
    assert f"try: --map {MAP}\n" in err
    assert not out.exists()
    # The suggestion is the fix: pasted as it is, the import works.
    suggested = err.split("try: --map ")[1].split()[0]
    assert run(capsys, "import", "files", "--items", str(ARTICLES), "--events", str(CLICKS),
               "--out", str(out), "--map", suggested)[0] == 0


def test_a_map_naming_a_column_neither_file_has_is_reported_with_the_rest(tmp_path):
    with pytest.raises(DataError) as error:
        import_dataset("files", None, tmp_path / "out", items=ARTICLES, events=CLICKS,
                       column_map="headlin=title,id=item_id")
    message = str(error.value)
    assert "neither file has: headlin" in message and "missing column title" in message
    assert "missing columns user_id, item_id, timestamp" in message


def test_help_prints_the_schema_and_an_example(capsys):
    with pytest.raises(SystemExit) as done:
        main(["import", "files", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for needle in ("items file (one row per item)", "item_id    required", "timestamp  required",
                   "epoch seconds/ms/us/ns", "--default-type", "example",
                   "recsys import files --items articles.csv --events clicks.jsonl"):
        assert needle in text


# --- reading the files ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "delimiter", "bom"), [
    ("items.csv", ",", False), ("items.csv", ";", True), ("items.csv", "\t", False),
    ("items.csv", "|", True), ("items.tsv", "\t", True)])
def test_csv_delimiter_is_sniffed_and_a_bom_accepted(tmp_path, name, delimiter, bom):
    items = write_items(tmp_path / name, delimiter, bom)
    events = write_events(tmp_path / "events.jsonl", CLICK_ROWS)
    dataset = import_dataset("files", None, tmp_path / "out", items=items, events=events)
    assert dataset.items.columns[:4] == ["item_id", "title", "text", "category"]
    assert dataset.items["title"].to_list() == ["Alpha, the first", "Beta"]


def test_parquet_and_ndjson_files_are_read_by_extension(tmp_path):
    pl.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"]}).write_parquet(tmp_path / "i.parquet")
    events = write_events(tmp_path / "e.ndjson", CLICK_ROWS)
    dataset = import_dataset("files", None, tmp_path / "out", items=tmp_path / "i.parquet",
                             events=events)
    assert dataset.events.height == 2


def test_empty_files_are_named_and_both_reported_at_once(tmp_path, capsys):
    (tmp_path / "items.csv").write_bytes(b"")
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\n")
    code, _, err = run(capsys, "import", "files", "--items", str(tmp_path / "items.csv"),
                       "--events", str(tmp_path / "events.csv"), "--out", str(tmp_path / "o"))
    assert code == EXIT_BAD_INPUT
    assert f"{tmp_path / 'items.csv'}: the file is empty" in err
    assert f"{tmp_path / 'events.csv'}: the file has no data rows" in err
    assert "polars" not in err.lower() and "Traceback" not in err


def test_a_ragged_semicolon_csv_names_the_row_not_polars_options(tmp_path, capsys):
    items = tmp_path / "items.csv"
    items.write_text("item_id;title\na;Alpha\nb;Beta; the sequel\n")
    events = write_events(tmp_path / "events.jsonl", CLICK_ROWS)
    code, _, err = run(capsys, "import", "files", "--items", str(items), "--events",
                       str(events), "--out", str(tmp_path / "o"))
    assert code == EXIT_BAD_INPUT
    assert f"{items}, row 1: 3 fields where the header has 2 (separator: semicolon)" in err
    assert "truncate_ragged_lines" not in err


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot tell the format from the extension '.xlsx'"):
        import_dataset("files", None, tmp_path / "o", items=tmp_path / "items.xlsx",
                       events=tmp_path / "e.jsonl")
    with pytest.raises(DataError, match="file not found"):
        import_dataset("files", None, tmp_path / "o", items=tmp_path / "items.csv",
                       events=tmp_path / "e.jsonl")


def test_a_broken_json_line_is_named(tmp_path):
    items = write_items(tmp_path / "items.csv")
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(CLICK_ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError) as error:
        import_dataset("files", None, tmp_path / "o", items=items, events=events)
    assert (error.value.file, error.value.row) == (str(events), 1)


# --- types and times ------------------------------------------------------------------------


def test_default_type_fills_a_missing_type_and_says_so(tmp_path):
    items = write_items(tmp_path / "items.csv")
    events = write_events(tmp_path / "events.jsonl", CLICK_ROWS)
    dataset = import_dataset("files", None, tmp_path / "o", items=items, events=events,
                             default_type="view")
    assert set(dataset.events["type"]) == {"view"}
    assert any("every event is a 'view'" in line for line in dataset.report)
    with pytest.raises(DataError, match="--default-type 'like'"):
        import_dataset("files", None, tmp_path / "o", items=items, events=events,
                       default_type="like")


def test_iso_times_without_a_zone_are_utc_and_the_summary_says_so_once(tmp_path):
    items = write_items(tmp_path / "items.csv")
    rows = [{**r, "timestamp": r["timestamp"].rstrip("Z")} for r in CLICK_ROWS]
    dataset = import_dataset("files", None, tmp_path / "o", items=items,
                             events=write_events(tmp_path / "events.jsonl", rows))
    assert dataset.events["timestamp"][0] == datetime(2025, 9, 1, 10, tzinfo=UTC)
    assert [line for line in dataset.report if "UTC" in line] == [
        "timestamps: 2 times without a zone read as UTC."]


def test_a_wrong_unit_is_refused_naming_file_row_and_value(tmp_path, capsys):
    items = write_items(tmp_path / "items.csv")
    rows = [{"user_id": "u1", "item_id": "a", "timestamp": 1756720800},
            {"user_id": "u1", "item_id": "b", "timestamp": 1756807200}]
    events = write_events(tmp_path / "events.jsonl", rows)
    argv = ["import", "files", "--items", str(items), "--events", str(events), "--out",
            str(tmp_path / "o")]
    code, _, err = run(capsys, *argv, "--timestamp-unit", "ms")
    assert code == EXIT_BAD_INPUT
    assert (f"{events}, row 0, column 'timestamp': timestamp 1756720800 is "
            "1970-01-21T07:58:40Z, before 1990-01-01") in err
    assert "2 rows in all" in err
    assert run(capsys, *argv, "--timestamp-unit", "ms", "--allow-any-time")[0] == 0
    assert load_dataset(tmp_path / "o").meta["allow_any_time"] is True
    assert run(capsys, *argv)[0] == 0  # by magnitude: seconds


def test_unreadable_times_are_named(tmp_path):
    items = write_items(tmp_path / "items.csv")
    rows = [CLICK_ROWS[0], {**CLICK_ROWS[1], "timestamp": "next tuesday"}]
    with pytest.raises(DataError) as error:
        import_dataset("files", None, tmp_path / "o", items=items,
                       events=write_events(tmp_path / "events.jsonl", rows))
    assert (error.value.row, error.value.column) == (1, "timestamp")
    assert "'next tuesday' is not a time" in str(error.value)


# --- --drop-unknown and per-format options --------------------------------------------------


def test_drop_unknown_works_for_files_and_counts(tmp_path, capsys):
    items = write_items(tmp_path / "items.csv")
    events = write_events(tmp_path / "events.jsonl",
                          [*CLICK_ROWS, {**CLICK_ROWS[0], "item_id": "gone"}])
    argv = ["import", "files", "--items", str(items), "--events", str(events), "--out",
            str(tmp_path / "o")]
    code, _, err = run(capsys, *argv)
    assert code == EXIT_BAD_INPUT
    assert f"{events}, row 2, column 'item_id': item 'gone' is not in items.csv" in err
    code, out, _ = run(capsys, *argv, "--drop-unknown")
    assert code == 0 and "dropped 1 events whose item is not in items.csv" in out


def test_parquet_format_takes_drop_unknown(tmp_path, capsys):
    """On 18b1391: TypeError 'unexpected keyword argument drop_unknown', with a traceback."""
    src = tmp_path / "src"
    shutil.copytree(Path(__file__).parent / "fixtures" / "canonical", src)
    events = pl.read_parquet(src / "events.parquet")
    extra = events.head(1).with_columns(pl.lit("zz-unknown").alias("item_id"),
                                        pl.lit("extra-1").alias("event_id"))
    pl.concat([events, extra]).write_parquet(src / "events.parquet")
    code, out, err = run(capsys, "import", "parquet", str(src), "--out", str(tmp_path / "o"),
                         "--drop-unknown")
    assert code == 0, err
    assert "dropped 1 events whose item is not in items.parquet" in out
    assert load_dataset(tmp_path / "o").events.height == events.height


@pytest.mark.parametrize("argv", [
    ["parquet", "SRC", "--click-threshold", "3"],
    ["mind", "SRC", "--map", "a=b"],
    ["movielens", "SRC", "--dataset", "x"],
    ["files", "SRC", "--items", "a.csv", "--events", "b.csv"],
])
def test_an_option_of_another_format_is_a_short_error(argv, tmp_path, capsys):
    argv = [str(tmp_path) if a == "SRC" else a for a in argv]
    with pytest.raises(SystemExit) as done:
        main(["import", *argv, "--out", str(tmp_path / "o")])
    assert done.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3  # usage line(s) and the one error line


def test_the_python_api_refuses_an_option_the_format_does_not_take(tmp_path):
    with pytest.raises(DataError, match="format 'parquet' does not take --click-threshold"):
        import_dataset("parquet", tmp_path, tmp_path / "o", click_threshold=3.0)


def test_movielens_drop_unknown(tmp_path, capsys):
    src = tmp_path / "ml"
    shutil.copytree(Path(__file__).parent / "fixtures" / "movielens", src)
    with (src / "ratings.csv").open("a") as handle:
        handle.write("26,999999999,4.0,836950403\n")
    code, out, _ = run(capsys, "import", "movielens", str(src), "--out", str(tmp_path / "o"),
                       "--drop-unknown")
    assert code == 0 and "dropped 1 ratings of movies not in movies.csv" in out


@pytest.mark.parametrize(("fmt", "folder", "name"), [("mind", "mind", "behaviors.tsv"),
                                                     ("movielens", "movielens", "ratings.csv")])
def test_other_formats_name_an_empty_file_in_words(tmp_path, fmt, folder, name):
    """On 18b1391 polars' own message came through ("cannot read: empty CSV")."""
    src = tmp_path / folder
    shutil.copytree(Path(__file__).parent / "fixtures" / folder, src)
    (src / name).write_bytes(b"")
    with pytest.raises(DataError) as error:
        import_dataset(fmt, src, tmp_path / "o")
    assert str(error.value) == f"{src / name}: the file is empty"


def test_validate_names_a_damaged_parquet_file_in_words(tmp_path):
    from recsys.data import validate_dataset

    root = tmp_path / "ds"
    shutil.copytree(Path(__file__).parent / "fixtures" / "canonical", root)
    (root / "items.parquet").write_bytes(b"not parquet at all")
    [problem] = [p for p in validate_dataset(root) if p.file == str(root / "items.parquet")]
    assert str(problem).startswith(f"{root / 'items.parquet'}: cannot read as Parquet: not a "
                                   "Parquet file, or a damaged one")


def test_suggestions_follow_spelling_and_case_as_well_as_the_synonym_table(tmp_path):
    items = write_items(tmp_path / "items.csv")
    events = write_events(tmp_path / "events.jsonl", [
        {"UserID": "u1", "itemId": "a", "timestmp": 1756720800, "Action": "click"}])
    with pytest.raises(DataError) as error:
        import_dataset("files", None, tmp_path / "o", items=items, events=events)
    assert "try: --map UserID=user_id,itemId=item_id,timestmp=timestamp,Action=type" in \
        str(error.value)
