"""Importer for any tabular export: one items file and one events file, named by the user.

Each file is CSV, TSV, JSON lines or Parquet (by extension; see `tables`). `--map` renames
columns; every problem with both files is reported in one error, with the columns found and a
suggested `--map`. The same conversion (`conform`) serves `recsys import parquet`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.importers.columns import (
    EVENT_SYNONYMS,
    EVENTS_OPTIONAL,
    EVENTS_REQUIRED,
    ITEM_SYNONYMS,
    ITEMS_OPTIONAL,
    ITEMS_REQUIRED,
    parse_map,
    rename,
    suggest,
    unused_renames,
)
from recsys.data.importers.tables import read_table
from recsys.data.schema import ALLOW_ANY_TIME, CLICK, EVENT_TYPES
from recsys.data.timestamps import (
    TimestampError,
    check_unit,
    out_of_range,
    range_message,
    read_times,
)
from recsys.data.validate import combine, find_problems, normalize_events, normalize_items
from recsys.errors import DataError

SCHEMA_HELP = """\
items file (one row per item):
  item_id    required  text, unique
  title      required  text
  text       optional  what the encoder reads (default: the title)
  category   optional  text
  tags       optional  a list, or "a|b|c" in CSV
  created_at optional  a time
  any other column is kept as it is
events file (one row per event):
  user_id    required  text
  item_id    required  text, must be in the items file (--drop-unknown skips others)
  timestamp  required  epoch seconds/ms/us/ns (unit judged by magnitude, or --timestamp-unit)
                       or ISO 8601 ("2026-11-03T08:15:00+01:00"; no zone: read as UTC);
                       between 1990-01-01 and a day from now unless --allow-any-time
  type       optional  click, impression, view, purchase, add_to_cart or rating
                       (default: --default-type, which is click)
  event_id   optional  unique (default: e<row>)
  value      optional  a number (the rating for type rating)
  request_id optional  groups the impressions of one shown list
formats by extension: .csv (comma, semicolon, tab or pipe; UTF-8, BOM allowed), .tsv,
  .jsonl/.ndjson (one JSON object per line), .parquet"""


@dataclass
class Conversion:
    """How `conform` reads the user's columns (the options `files` and `parquet` share)."""

    timestamp_unit: str = "auto"
    default_type: str = CLICK
    drop_unknown: bool = False
    allow_any_time: bool = False
    report: list[str] = field(default_factory=list)  # lines for the import summary


def import_files(*, items: str | Path, events: str | Path, name: str | None = None,
                 column_map: str | dict[str, str] | None = None, timestamp_unit: str = "auto",
                 default_type: str = CLICK, drop_unknown: bool = False,
                 allow_any_time: bool = False) -> Dataset:
    """Read the `items` and `events` files into canonical frames (nothing is written).

    `column_map` renames columns in whichever file has them ("id=item_id,ts=timestamp" or a
    dict). Raises one `DataError` listing every problem found in both files.
    """
    items_path, events_path = Path(items), Path(events)
    renames = column_map if isinstance(column_map, dict) else parse_map(column_map)
    conversion = Conversion(check_unit(timestamp_unit), _check_type(default_type), drop_unknown,
                            allow_any_time)
    item_rows, event_rows = _read_both(items_path, events_path)
    _check_columns(item_rows, event_rows, items_path, events_path, renames)
    item_rows = rename(item_rows, renames, str(items_path))
    event_rows = rename(event_rows, renames, str(events_path))
    item_frame, event_frame = conform(item_rows, event_rows, items_path, events_path, conversion)
    notes = [f"Imported from {items_path.name} and {events_path.name}"
             + (f" with --map {','.join(f'{s}={t}' for s, t in renames.items())}." if renames
                else "."), *conversion.report]
    meta: dict[str, Any] = {"name": name, "source": "files", "time": "real", "protocol": "time",
                            "notes": " ".join(notes)}
    if allow_any_time:
        meta[ALLOW_ANY_TIME] = True
    return Dataset(items=item_frame, events=event_frame, meta=meta, report=conversion.report)


def conform(items: pl.DataFrame, events: pl.DataFrame, items_path: Path, events_path: Path,
            conversion: Conversion) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Canonical items and events from frames whose columns already carry schema names.

    Fills the optional columns, reads the timestamps, checks everything (one `DataError` with
    every problem) and drops events of unknown items when asked. Adds summary lines to
    `conversion.report`.
    """
    report = conversion.report
    if "title" in items.columns:
        title = pl.col("title").cast(pl.String)
        text = (pl.col("text").cast(pl.String).replace("", None) if "text" in items.columns
                else None)
        items = items.with_columns(
            (pl.coalesce(text, title) if text is not None else title).alias("text"))
    if "category" not in items.columns:
        items = items.with_columns(pl.lit(None, dtype=pl.String).alias("category"))
    if "event_id" not in events.columns:
        # Row-based ids are deterministic: importing the same file twice gives the same ids.
        events = events.with_columns(
            pl.format("e{}", pl.int_range(pl.len(), dtype=pl.Int64)).alias("event_id"))
        report.append("event_id: none given, made from the row number (e<row>).")
    events = _fill_type(events, conversion.default_type, report)

    problems: list[DataError] = []
    if "timestamp" in events.columns:
        events = read_event_times(events, events_path, conversion, problems)
    problems.extend(find_problems(items, events, None, items_file=items_path,
                                  events_file=events_path, check_time_range=False,
                                  unknown_items=not conversion.drop_unknown))
    if problems:
        raise combine(problems[:50])
    items = normalize_items(items, items_path)
    events = normalize_events(events, events_path)
    if conversion.drop_unknown:
        known = events["item_id"].is_in(items["item_id"].implode())
        dropped = int((~known).sum())
        events = events.filter(known)
        report.append(f"--drop-unknown: dropped {dropped} events whose item is not in "
                      f"{items_path.name}.")
    return items, events


def _read_both(items_path: Path, events_path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    frames, problems = [], []
    for path in (items_path, events_path):
        try:
            frames.append(read_table(path))
        except DataError as problem:
            problems.append(problem)
    if problems:
        raise combine(problems)
    return frames[0], frames[1]


def _check_columns(items: pl.DataFrame, events: pl.DataFrame, items_path: Path,
                   events_path: Path, renames: dict[str, str]) -> None:
    """One `DataError` naming every missing column of both files and a `--map` that may fix it."""
    lines: list[str] = []
    suggested: dict[str, str] = {}
    unused = unused_renames(renames, items, events)
    if unused:
        lines.append(f"--map names columns that neither file has: {', '.join(unused)}")
    for frame, path, required, optional, synonyms in (
            (items, items_path, ITEMS_REQUIRED, ITEMS_OPTIONAL, ITEM_SYNONYMS),
            (events, events_path, EVENTS_REQUIRED, EVENTS_OPTIONAL, EVENT_SYNONYMS)):
        after = [renames.get(c, c) for c in frame.columns]
        missing = [c for c in required if c not in after]
        if not missing:
            continue
        lines.append(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                     f"{', '.join(missing)}; found {', '.join(frame.columns)}")
        unmapped = [c for c in frame.columns if c not in renames]
        absent = [c for c in (*required, *optional) if c not in after]
        for source, target in suggest(unmapped, absent, synonyms).items():
            if suggested.get(source, target) == target:
                suggested[source] = target
    if not lines:
        return
    if suggested:
        full = {**renames, **suggested}
        lines.append("try: --map " + ",".join(f"{s}={t}" for s, t in full.items()))
    lines.append("(`recsys import files --help` shows the schema)")
    raise DataError("the files do not match the schema:\n  " + "\n  ".join(lines))


def _check_type(default_type: str) -> str:
    if default_type not in EVENT_TYPES:
        raise DataError(f"--default-type {default_type!r}: choose one of "
                        f"{', '.join(sorted(EVENT_TYPES))}")
    return default_type


def _fill_type(events: pl.DataFrame, default_type: str, report: list[str]) -> pl.DataFrame:
    if "type" not in events.columns:
        report.append(f"type: no type column, every event is a '{default_type}' "
                      "(--default-type).")
        return events.with_columns(pl.lit(default_type).alias("type"))
    kinds = events["type"].cast(pl.String)
    empty = kinds.is_null() | (kinds.str.strip_chars() == "")
    if empty.any():
        report.append(f"type: {int(empty.sum())} empty cells read as '{default_type}' "
                      "(--default-type).")
    return events.with_columns(kinds.str.strip_chars().replace("", None)
                               .fill_null(default_type).alias("type"))


def read_event_times(events: pl.DataFrame, path: Path, conversion: Conversion,
                     problems: list[DataError]) -> pl.DataFrame:
    """`events` with its timestamps read as UTC; unreadable or implausible ones are problems."""
    raw = events["timestamp"]
    try:
        read = read_times(raw, conversion.timestamp_unit)
    except TimestampError as exc:
        problems.append(DataError(str(exc), file=str(path), row=exc.row, column="timestamp"))
        return events
    unreadable = read.times.is_null() & raw.is_not_null()
    if raw.dtype == pl.String:
        unreadable &= raw.str.strip_chars() != ""
    if unreadable.any():
        row = int(unreadable.arg_true()[0])
        count = int(unreadable.sum())
        problems.append(DataError(
            f"{raw[row]!r} is not a time (epoch number or ISO 8601)"
            + (f"; {count} rows like it" if count > 1 else ""),
            file=str(path), row=row, column="timestamp"))
        return events
    if not conversion.allow_any_time:
        outside = out_of_range(read.times)
        if outside.any():
            row = int(outside.arg_true()[0])
            count = int(outside.sum())
            problems.append(DataError(
                range_message(read.times, row, raw[row])
                + (f"; {count} rows in all" if count > 1 else ""),
                file=str(path), row=row, column="timestamp"))
    line = read.describe()
    if line:
        conversion.report.append(line + ".")
    return events.with_columns(read.times.alias("timestamp"))


__all__ = ["SCHEMA_HELP", "Conversion", "conform", "import_files", "read_event_times"]
