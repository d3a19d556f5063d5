"""Importer for data already (almost) in the canonical layout, as Parquet, CSV or JSON lines.

SRC holds one items file and one events file, each `.parquet`, `.csv` or `.jsonl`/`.ndjson`.
Filled in when absent: `event_id` (f"e{row}", row = 0-based data row of the events file),
`text` (a copy of `title`, also for empty text cells) and `category` (null). CSV cells are read
as text and converted by the schema, so ids such as "007" keep their leading zeros; a CSV `tags`
cell is "a|b|c".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.schema import META_FILE
from recsys.data.validate import find_problems, normalize_events, normalize_items
from recsys.errors import DataError

SUFFIXES = (".parquet", ".csv", ".jsonl", ".ndjson")


def import_parquet(src: str | Path, *, name: str | None = None, time: str | None = None,
                   protocol: str | None = None, notes: str | None = None) -> Dataset:
    """Read SRC's items and events files into canonical frames (nothing is written).

    dataset.json values come from the options, else from SRC/dataset.json when present,
    else time="real", protocol="time".
    """
    root = Path(src)
    items_path = _find(root, "items")
    events_path = _find(root, "events")
    items = _read(items_path)
    events = _read(events_path)

    if "title" in items.columns:
        title = pl.col("title").cast(pl.String)
        text = pl.col("text").cast(pl.String) if "text" in items.columns else None
        items = items.with_columns(
            (pl.coalesce(text, title) if text is not None else title).alias("text"))
    if "category" not in items.columns:
        items = items.with_columns(pl.lit(None, dtype=pl.String).alias("category"))
    generated_ids = "event_id" not in events.columns
    if generated_ids:
        # Row-based ids are deterministic: importing the same file twice gives the same ids.
        events = events.with_columns(
            pl.format("e{}", pl.int_range(pl.len(), dtype=pl.Int64)).alias("event_id"))

    source_meta = _source_meta(root)
    meta: dict[str, Any] = {
        "name": name or source_meta.get("name") or root.resolve().name,
        "source": "parquet",
        "time": time or source_meta.get("time", "real"),
        "protocol": protocol or source_meta.get("protocol", "time"),
        "notes": notes if notes is not None else _notes(source_meta, items_path, events_path,
                                                        generated_ids),
    }
    items = normalize_items(items, items_path)
    events = normalize_events(events, events_path)
    # Checked here too so that errors name the user's files and rows, not the output's.
    problems = find_problems(items, events, meta, items_file=items_path,
                             events_file=events_path)
    if problems:
        raise problems[0]
    return Dataset(items=items, events=events, meta=meta)


def _find(root: Path, stem: str) -> Path:
    found = [root / f"{stem}{suffix}" for suffix in SUFFIXES if (root / f"{stem}{suffix}").exists()]
    if not found:
        raise DataError(f"no {stem} file: expected one of "
                        + ", ".join(f"{stem}{s}" for s in SUFFIXES), file=str(root))
    if len(found) > 1:
        raise DataError(f"several {stem} files ({', '.join(p.name for p in found)}); keep one",
                        file=str(root))
    return found[0]


def _read(path: Path) -> pl.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix == ".csv":
            return pl.read_csv(path, infer_schema=False)
        return pl.read_ndjson(path, infer_schema_length=None)
    except Exception as exc:  # polars raises several error kinds for malformed files
        raise DataError(f"cannot read: {exc}", file=str(path)) from exc


def _source_meta(root: Path) -> dict[str, Any]:
    path = root / META_FILE
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"not valid JSON: {exc}", file=str(path)) from exc
    if not isinstance(meta, dict):
        raise DataError("must hold a JSON object", file=str(path))
    return meta


def _notes(source_meta: dict[str, Any], items_path: Path, events_path: Path,
           generated_ids: bool) -> str:
    parts = [f"Imported from {items_path.name} and {events_path.name}."]
    if generated_ids:
        parts.append("event_id was missing and was made from the row number (e<row>).")
    if source_meta.get("notes"):
        parts.append(f"Source notes: {source_meta['notes']}")
    return " ".join(parts)

