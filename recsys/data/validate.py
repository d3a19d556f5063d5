"""Checks a dataset (directory or frames) against the contract in `recsys.data.schema`.

Row numbers in every `DataError` raised here are 0-based indexes of data rows in the file named
(the parquet row order; for CSV the header line is not counted).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data.schema import (
    ALLOW_ANY_TIME,
    EVENT_COLUMNS,
    EVENT_OPTIONAL_COLUMNS,
    EVENT_TYPES,
    EVENTS_FILE,
    ITEM_COLUMNS,
    ITEM_OPTIONAL_COLUMNS,
    ITEMS_FILE,
    META_FILE,
    PROTOCOLS,
    SPLITS,
    TIME_KINDS,
)
from recsys.data.timestamps import TimestampError, out_of_range, range_message, read_times
from recsys.errors import DataError

# Enough to show a user every kind of problem without flooding the terminal.
MAX_PROBLEMS = 50
UTC_MICROS = pl.Datetime("us", "UTC")
# A CSV file has no list type: a `tags` cell is written "a|b|c".
TAG_SEPARATOR = "|"


def normalize_items(frame: pl.DataFrame, file: str | Path = ITEMS_FILE) -> pl.DataFrame:
    """Cast `frame` to the item schema (required columns first, extra columns kept as they are).

    Raises `DataError` naming `file`, the first bad row and the column when a required column
    is missing or a value cannot be converted.
    """
    return _normalize(frame, ITEM_COLUMNS, ITEM_OPTIONAL_COLUMNS, str(file))


def normalize_events(frame: pl.DataFrame, file: str | Path = EVENTS_FILE) -> pl.DataFrame:
    """Cast `frame` to the event schema; timestamps become Datetime("us", "UTC").

    Timestamps may be datetimes (naive ones are taken as UTC), ISO 8601 strings (no zone: UTC),
    or epoch numbers (integers, floats or strings of digits) whose unit is judged by magnitude
    (`recsys.data.timestamps`). Raises `DataError` like `normalize_items`.
    """
    return _normalize(frame, EVENT_COLUMNS, EVENT_OPTIONAL_COLUMNS, str(file))


def validate_dataset(path: str | Path, *, allow_any_time: bool = False) -> list[DataError]:
    """Every problem found in the dataset directory `path` (at most `MAX_PROBLEMS`), or [].

    `allow_any_time` skips the timestamp range check (as `allow_any_time` in dataset.json does).
    """
    root = Path(path)
    if not root.is_dir():
        return [DataError("dataset directory not found", file=str(root))]
    problems: list[DataError] = []
    meta = _read_meta(root / META_FILE, problems)
    items = _read_parquet(root / ITEMS_FILE, problems)
    events = _read_parquet(root / EVENTS_FILE, problems)
    # A missing or unreadable file is None here: the other files are still checked on their own.
    problems.extend(find_problems(items, events, meta, items_file=root / ITEMS_FILE,
                                  events_file=root / EVENTS_FILE, meta_file=root / META_FILE,
                                  check_time_range=False if allow_any_time else None))
    return problems[:MAX_PROBLEMS]


def check_dataset(path: str | Path) -> None:
    """Raise a `DataError` for the dataset directory `path` if anything is wrong with it.

    With one problem that error is raised as it is; with several, the raised error carries the
    first one's file, row and column and lists all of them in its message.
    """
    problems = validate_dataset(path)
    if not problems:
        return
    raise combine(problems)


def combine(problems: list[DataError]) -> DataError:
    """One error for `problems`: the only one as it is, or one listing them all."""
    if len(problems) == 1:
        return problems[0]
    listing = "\n".join(f"  - {problem}" for problem in problems)
    combined = DataError(f"{len(problems)} problems found:\n{listing}")
    # The message already names every location; the attributes point at the first problem.
    first = problems[0]
    combined.file, combined.row, combined.column = first.file, first.row, first.column
    return combined


def find_problems(items: pl.DataFrame | None, events: pl.DataFrame | None,
                  meta: Mapping[str, Any] | None, *, items_file: str | Path = ITEMS_FILE,
                  events_file: str | Path = EVENTS_FILE, meta_file: str | Path = META_FILE,
                  check_time_range: bool | None = None, unknown_items: bool = True
                  ) -> list[DataError]:
    """Every problem with in-memory dataset frames, as `validate_dataset` would report them.

    Importers call this before writing anything, so a bad import leaves no files behind; the
    `*_file` names are what the errors call each frame. `meta=None` skips the dataset.json
    checks (a missing file is reported by the caller). Timestamps outside the plausible range
    (`recsys.data.timestamps`) are problems when `check_time_range`, which by default holds for
    real-time datasets whose dataset.json does not set `allow_any_time` (order-only timestamps
    encode a sequence, not a calendar). `unknown_items=False` skips the check that every event's
    item is in the items (for an importer about to drop those events).
    """
    items_file, events_file, meta_file = str(items_file), str(events_file), str(meta_file)
    if check_time_range is None:
        check_time_range = (meta is not None and meta.get("time", "real") == "real"
                            and not meta.get(ALLOW_ANY_TIME))

    problems: list[DataError] = []
    if meta is not None:
        problems.extend(_meta_problems(meta, meta_file))
    item_ids: pl.Series | None = None
    if items is not None:
        cast_items, type_problems = _conform(items, ITEM_COLUMNS, ITEM_OPTIONAL_COLUMNS,
                                             items_file)
        problems.extend(type_problems)
        if "item_id" in items.columns and "item_id" not in {p.column for p in type_problems}:
            item_ids = cast_items["item_id"]
            problems.extend(_null_problems(cast_items, ["item_id"], items_file))
            problems.extend(_duplicate_problems(cast_items, "item_id", items_file, "item id"))
    if events is not None:
        cast_events, type_problems = _conform(events, EVENT_COLUMNS, EVENT_OPTIONAL_COLUMNS,
                                              events_file)
        problems.extend(type_problems)
        bad = {p.column for p in type_problems}
        usable = [c for c in events.columns if c not in bad]
        typed_events = cast_events.select(usable)
        problems.extend(_null_problems(
            typed_events,
            [c for c in ("event_id", "user_id", "item_id", "timestamp") if c in usable],
            events_file))
        if "event_id" in usable:
            problems.extend(_duplicate_problems(typed_events, "event_id", events_file, "event id"))
        if "timestamp" in usable and check_time_range:
            problems.extend(_time_range_problems(typed_events["timestamp"], events_file))
        if "item_id" in usable and item_ids is not None and unknown_items:
            problems.extend(_unknown_item_problems(typed_events["item_id"], item_ids, events_file,
                                                   Path(items_file).name))
        if "type" in usable:
            problems.extend(_outside_problems(typed_events["type"], EVENT_TYPES, events_file,
                                              "unknown event type", allow_null=False))
        if "split" in usable:
            # A null split means "no fixed split" for that event; only wrong names are errors.
            problems.extend(_outside_problems(typed_events["split"], SPLITS, events_file,
                                              "unknown split", allow_null=True))
    return problems[:MAX_PROBLEMS]


# --- reading -------------------------------------------------------------------------------


def _read_parquet(path: Path, problems: list[DataError]) -> pl.DataFrame | None:
    if not path.exists():
        problems.append(DataError("file is missing", file=str(path)))
        return None
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several kinds for a corrupt file
        problems.append(DataError("cannot read as Parquet: not a Parquet file, or a damaged "
                                  f"one ({type(exc).__name__})", file=str(path)))
        return None


def _read_meta(path: Path, problems: list[DataError]) -> dict[str, Any] | None:
    if not path.exists():
        problems.append(DataError("file is missing", file=str(path)))
        return None
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        problems.append(DataError(f"not valid JSON: {exc}", file=str(path)))
        return None
    if not isinstance(meta, dict):
        problems.append(DataError("must hold a JSON object", file=str(path)))
        return None
    return meta


def _meta_problems(meta: Mapping[str, Any] | None, file: str) -> Iterator[DataError]:
    if meta is None:
        return
    for key, allowed in (("time", TIME_KINDS), ("protocol", PROTOCOLS)):
        value = meta.get(key)
        if value not in allowed:
            yield DataError(f"'{key}' is {value!r}; expected one of {sorted(allowed)}",
                            file=file, column=key)


# --- types ---------------------------------------------------------------------------------


def _normalize(frame: pl.DataFrame, required: Mapping[str, pl.DataType],
               optional: Mapping[str, pl.DataType], file: str) -> pl.DataFrame:
    cast, problems = _conform(frame, required, optional, file)
    if problems:
        raise problems[0]
    return cast


def _conform(frame: pl.DataFrame, required: Mapping[str, pl.DataType],
             optional: Mapping[str, pl.DataType], file: str
             ) -> tuple[pl.DataFrame, list[DataError]]:
    """`frame` cast to the schema, columns in schema order, plus one problem per bad column."""
    problems = [DataError("required column is missing", file=file, column=name)
                for name in required if name not in frame.columns]
    typed = {**required, **optional}
    columns: dict[str, pl.Series] = {}
    for name in frame.columns:
        original = frame[name]
        if name not in typed:
            columns[name] = original
            continue
        converted, problem = _cast(original, typed[name], file)
        if problem is not None:
            problems.append(problem)
            converted = original
        columns[name] = converted
    order = [c for c in typed if c in columns] + [c for c in frame.columns if c not in typed]
    return pl.DataFrame([columns[c] for c in order]), problems


def _cast(series: pl.Series, dtype: pl.DataType, file: str
          ) -> tuple[pl.Series, DataError | None]:
    """`series` converted to `dtype`, or the problem naming the first value that does not fit."""
    if series.dtype == dtype:
        return series, None
    try:
        if dtype == UTC_MICROS:
            converted = read_times(series).times
        elif dtype == pl.List(pl.String()) and series.dtype == pl.String():
            converted = series.str.split(TAG_SEPARATOR).list.eval(
                pl.element().filter(pl.element() != ""))
        else:
            converted = series.cast(dtype, strict=False)
    except TimestampError as exc:
        return series, DataError(str(exc), file=file, row=exc.row, column=series.name)
    except Exception:  # an impossible cast (e.g. a struct to a string) fails as a whole
        converted = pl.Series(series.name, [None] * len(series), dtype=dtype)
    lost = series.is_not_null() & converted.is_null()
    if not lost.any():
        return converted.rename(series.name), None
    row = int(lost.arg_true()[0])
    count = int(lost.sum())
    return series, DataError(
        f"value {_show(series[row])} ({series.dtype}) cannot be read as {dtype}"
        + (f"; {count} rows like it" if count > 1 else ""),
        file=file, row=row, column=series.name)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- values --------------------------------------------------------------------------------


def _first_rows(mask: pl.Series) -> tuple[int, int]:
    """(first row where `mask` holds, how many rows it holds for)."""
    return int(mask.arg_true()[0]), int(mask.sum())


def _null_problems(frame: pl.DataFrame, columns: list[str], file: str) -> Iterator[DataError]:
    for name in columns:
        nulls = frame[name].is_null()
        if nulls.any():
            row, count = _first_rows(nulls)
            yield DataError(f"missing value ({count} rows)" if count > 1 else "missing value",
                            file=file, row=row, column=name)


def _duplicate_problems(frame: pl.DataFrame, column: str, file: str, what: str
                        ) -> Iterator[DataError]:
    ids = frame[column]
    repeats = ~ids.is_first_distinct() & ids.is_not_null()
    if repeats.any():
        row, count = _first_rows(repeats)
        value = ids[row]
        first = int((ids == value).arg_true()[0])
        more = f"; {count} repeated rows in all" if count > 1 else ""
        yield DataError(f"duplicate {what} {_show(value)} (first at row {first}){more}",
                        file=file, row=row, column=column)


def _time_range_problems(times: pl.Series, file: str) -> Iterator[DataError]:
    outside = out_of_range(times)
    if outside.any():
        row, count = _first_rows(outside)
        more = f"; {count} rows in all" if count > 1 else ""
        yield DataError(range_message(times, row) + more, file=file, row=row,
                        column=times.name)


def _unknown_item_problems(event_items: pl.Series, item_ids: pl.Series, file: str,
                           items_name: str = ITEMS_FILE) -> Iterator[DataError]:
    unknown = ~event_items.is_in(item_ids.drop_nulls().implode()) & event_items.is_not_null()
    if unknown.any():
        row, count = _first_rows(unknown)
        more = f"; {count} events in all" if count > 1 else ""
        yield DataError(f"item {_show(event_items[row])} is not in {items_name}{more}",
                        file=file, row=row, column="item_id")


def _outside_problems(values: pl.Series, allowed: frozenset[str], file: str, what: str,
                      *, allow_null: bool) -> Iterator[DataError]:
    outside = ~values.is_in(sorted(allowed))
    outside = outside & values.is_not_null() if allow_null else outside | values.is_null()
    if outside.any():
        row, count = _first_rows(outside)
        more = f"; {count} rows in all" if count > 1 else ""
        yield DataError(f"{what} {_show(values[row])}; expected one of {sorted(allowed)}{more}",
                        file=file, row=row, column=values.name)
