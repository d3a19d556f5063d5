"""Importer for a folder already in (almost) the canonical layout: `items.*` and `events.*`.

Each file is `.parquet`, `.csv`, `.tsv` or `.jsonl`/`.ndjson` and is read like `recsys import
files` reads it (columns already named as the schema says; see `files.SCHEMA_HELP`): filled in
when absent are `event_id` (f"e{row}", row = 0-based data row of the events file), `text` (a
copy of `title`, also for empty text cells), `category` (null) and `type` (`default_type`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recsys.data.dataset import Dataset
from recsys.data.importers.files import Conversion, conform
from recsys.data.importers.tables import FORMATS, read_table
from recsys.data.schema import ALLOW_ANY_TIME, CLICK, META_FILE
from recsys.data.timestamps import check_unit
from recsys.errors import DataError

SUFFIXES = tuple(FORMATS)


def import_parquet(src: str | Path, *, name: str | None = None, time: str | None = None,
                   protocol: str | None = None, notes: str | None = None,
                   timestamp_unit: str = "auto", default_type: str = CLICK,
                   drop_unknown: bool = False, allow_any_time: bool = False) -> Dataset:
    """Read SRC's items and events files into canonical frames (nothing is written).

    dataset.json values come from the options, else from SRC/dataset.json when present,
    else time="real", protocol="time".
    """
    root = Path(src)
    items_path = _find(root, "items")
    events_path = _find(root, "events")
    conversion = Conversion(check_unit(timestamp_unit), default_type, drop_unknown,
                            allow_any_time)
    source_meta = _source_meta(root)
    kind = time or source_meta.get("time", "real")
    if kind != "real":
        conversion.allow_any_time = True  # order-only times encode a sequence, not a date
    items, events = conform(read_table(items_path), read_table(events_path), items_path,
                            events_path, conversion)
    meta: dict[str, Any] = {
        "name": name or source_meta.get("name") or root.resolve().name,
        "source": "parquet",
        "time": kind,
        "protocol": protocol or source_meta.get("protocol", "time"),
        "notes": notes if notes is not None else _notes(source_meta, items_path, events_path,
                                                        conversion.report),
    }
    if allow_any_time or source_meta.get(ALLOW_ANY_TIME):
        meta[ALLOW_ANY_TIME] = True
    return Dataset(items=items, events=events, meta=meta, report=conversion.report)


def _find(root: Path, stem: str) -> Path:
    found = [root / f"{stem}{suffix}" for suffix in SUFFIXES if (root / f"{stem}{suffix}").exists()]
    if not found:
        raise DataError(f"no {stem} file: expected one of "
                        + ", ".join(f"{stem}{s}" for s in SUFFIXES)
                        + " (other names: recsys import files --items F --events F)",
                        file=str(root))
    if len(found) > 1:
        raise DataError(f"several {stem} files ({', '.join(p.name for p in found)}); keep one",
                        file=str(root))
    return found[0]


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
           report: list[str]) -> str:
    parts = [f"Imported from {items_path.name} and {events_path.name}.", *report]
    if source_meta.get("notes"):
        parts.append(f"Source notes: {source_meta['notes']}")
    return " ".join(parts)
