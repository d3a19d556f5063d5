"""Standard RecBole atomic files: `<Name>.item` plus `<Name>.inter` or its train/valid/test split.

Headers are `field:type` (`user_id:token item_id:token rating:float timestamp:float`;
`item_id:token title:token_seq categories:token_seq ...`). Items: `title` is the first of the
title-like fields present (title, movie_title, name...), else the first `token_seq` field, else
the id, and is never cut; `text` joins every text field (`token_seq`, and the title) with ". ";
`category` is the first category-like field (categories, category, genre...) as written. Events
are clicks (`value` = the rating where there is one); with `.train/.valid/.test.inter` their
`split` is fixed by the file. A timestamp field gives real times (unit judged by magnitude);
without one, each user's events are one second apart from 1970 in file order (order only).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.importers.files import Conversion, read_event_times
from recsys.data.schema import ALLOW_ANY_TIME, CLICK
from recsys.data.timestamps import check_unit
from recsys.data.validate import combine
from recsys.errors import DataError

TITLE_FIELDS = ("title", "movie_title", "item_title", "name", "item_name", "product_name")
CATEGORY_FIELDS = ("categories", "category", "genre", "genres", "class", "section")
SPLIT_KINDS = ("train", "valid", "test")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def read_atomic(path: Path, *, has_header: bool = True) -> tuple[pl.DataFrame, dict[str, str]]:
    """A RecBole file's rows (all text) and each field's declared type (`token_seq`...)."""
    if not path.exists():
        raise DataError("file is missing", file=str(path))
    try:
        frame = pl.read_csv(path, separator="\t", has_header=has_header, quote_char=None,
                            infer_schema=False, encoding="utf8-lossy")
    except Exception as exc:  # polars' messages name its own options: say what is wrong instead
        raise DataError("cannot read as tab-separated RecBole fields (every row must have as "
                        "many tabs as the header)", file=str(path)) from exc
    if not has_header:
        return frame, {}
    types = {c.split(":", 1)[0]: (c.split(":", 1)[1] if ":" in c else "token")
             for c in frame.columns}
    return frame.rename({c: c.split(":", 1)[0] for c in frame.columns}), types


def import_atomic(root: Path, stem: str, *, name: str | None = None, drop_unknown: bool = False,
                  timestamp_unit: str = "auto", allow_any_time: bool = False) -> Dataset:
    """Read the standard atomic files `<stem>.*` in `root` into canonical frames."""
    item_path = root / f"{stem}.item"
    split_paths = {kind: root / f"{stem}.{kind}.inter" for kind in SPLIT_KINDS}
    split_paths = {kind: p for kind, p in split_paths.items() if p.exists()}
    inter_paths = split_paths or {"inter": root / f"{stem}.inter"}
    if not item_path.exists():
        raise DataError(f"file is missing (items with their text: item_id:token and fields "
                        f"such as title:token_seq; {stem}.text for UniSRec's layout)",
                        file=str(item_path))
    items = _items(*read_atomic(item_path), item_path)
    conversion = Conversion(check_unit(timestamp_unit), CLICK, drop_unknown, allow_any_time)
    known = items["item_id"].implode()
    parts, problems, dropped = [], [], 0
    for kind, path in inter_paths.items():
        events, types = read_atomic(path)
        events = _events(events, kind, path)
        if "timestamp" in events.columns:
            events = read_event_times(events, path, conversion, problems)
        unknown = ~events["item_id"].is_in(known)
        if unknown.any() and not drop_unknown:
            row = int(unknown.arg_true()[0])
            problems.append(DataError(
                f"item {events['item_id'][row]!r} is not in {item_path.name} "
                f"({int(unknown.sum())} events in all; --drop-unknown skips them)",
                file=str(path), row=row, column="item_id"))
        dropped += int(unknown.sum())
        parts.append(events.filter(~unknown))
    if problems:
        raise combine(problems)
    events = pl.concat(parts, how="diagonal_relaxed")
    real_time = "timestamp" in events.columns
    if not real_time:
        events = _order_only_times(events)
    report = [line for line in conversion.report if line.startswith("timestamps")][:1]
    if drop_unknown:
        report.append(f"--drop-unknown: dropped {dropped} events whose item is not in "
                      f"{item_path.name}.")
    files = ", ".join(p.name for p in inter_paths.values())
    notes = [
        f"RecBole atomic files {item_path.name}, {files}.",
        "Item title = the title field whole (never cut); text = the text fields joined by '. '; "
        "category = the first category-like field as written.",
        "Events are clicks (value = the rating where given)"
        + ("; split fixed by the train/valid/test files." if split_paths else "."),
        *report,
    ]
    if not real_time:
        notes.append("The files have no timestamp field: each user's events are 1 second apart "
                     "from 1970-01-01T00:00:00Z in file order (order only).")
    meta = {"name": name or stem, "source": "recbole",
            "time": "real" if real_time else "order_only",
            "protocol": "leave_one_out" if split_paths or not real_time else "time",
            "notes": " ".join(notes)}
    if allow_any_time:
        meta[ALLOW_ANY_TIME] = True
    return Dataset(items=items, events=events, meta=meta, report=report)


def _items(frame: pl.DataFrame, types: dict[str, str], path: Path) -> pl.DataFrame:
    if "item_id" not in frame.columns:
        raise DataError(f"required field is missing (found: {', '.join(frame.columns)})",
                        file=str(path), column="item_id:token")
    text_fields = [c for c in frame.columns if types.get(c) == "token_seq"]
    title = next((c for c in TITLE_FIELDS if c in frame.columns),
                 text_fields[0] if text_fields else "item_id")
    category = next((c for c in CATEGORY_FIELDS if c in frame.columns), None)
    parts = [title, *[c for c in text_fields if c != title]]
    cells = [pl.col(c).str.strip_chars().replace("", None) for c in parts]
    items = frame.with_columns(
        pl.col("item_id").str.strip_chars(),
        pl.col(title).str.strip_chars().alias("title"),
        pl.concat_str(cells, separator=". ", ignore_nulls=True).alias("text"),
        (pl.col(category).str.strip_chars() if category else pl.lit(None, dtype=pl.String)
         ).alias("category"),
    )
    front = ["item_id", "title", "text", "category"]
    return items.select(*front, *[c for c in frame.columns if c not in front])


def _events(frame: pl.DataFrame, kind: str, path: Path) -> pl.DataFrame:
    missing = [c for c in ("user_id", "item_id") if c not in frame.columns]
    if missing:
        raise DataError(f"required field{'s' if len(missing) > 1 else ''} missing: "
                        f"{', '.join(f'{c}:token' for c in missing)} (found: "
                        f"{', '.join(frame.columns)})", file=str(path))
    columns = [
        pl.format("{}-{}", pl.lit(kind), pl.int_range(pl.len())).alias("event_id"),
        pl.col("user_id").str.strip_chars(),
        pl.col("item_id").str.strip_chars(),
        pl.lit(CLICK).alias("type"),
    ]
    if "timestamp" in frame.columns:
        columns.append(pl.col("timestamp").str.strip_chars())
    if "rating" in frame.columns:
        columns.append(pl.col("rating").cast(pl.Float64, strict=False).alias("value"))
    if kind in SPLIT_KINDS:
        columns.append(pl.lit(kind).alias("split"))
    events = frame.select(columns)
    for column in ("user_id", "item_id"):
        nulls = events[column].is_null()
        if nulls.any():
            raise DataError("missing value", file=str(path), row=int(nulls.arg_true()[0]),
                            column=column)
    return events


def _order_only_times(events: pl.DataFrame) -> pl.DataFrame:
    position = pl.int_range(pl.len()).over("user_id")
    return events.with_columns(
        (pl.lit(EPOCH) + pl.duration(seconds=position)).dt.cast_time_unit("us")
        .alias("timestamp"))


__all__ = ["import_atomic", "read_atomic"]
