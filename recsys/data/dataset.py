"""Loading a canonical dataset directory (see `recsys.data.schema`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data.schema import EVENTS_FILE, ITEMS_FILE, META_FILE


@dataclass
class Dataset:
    """Items, events and the importer's notes, as read from one dataset directory."""

    items: pl.DataFrame
    events: pl.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    # Lines an importer wants the user to read now (units guessed, rows dropped); not stored.
    report: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or (self.path.name if self.path else "dataset"))

    @property
    def protocol(self) -> str:
        return str(self.meta.get("protocol", "time"))

    @property
    def has_real_time(self) -> bool:
        return self.meta.get("time", "real") == "real"


def load_dataset(path: str | Path, *, validate: bool = True) -> Dataset:
    """Read a dataset directory; with `validate`, raise `DataError` on the first problem found."""
    root = Path(path)
    if validate:
        from recsys.data.validate import check_dataset

        check_dataset(root)
    meta_path = root / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return Dataset(
        items=pl.read_parquet(root / ITEMS_FILE),
        events=pl.read_parquet(root / EVENTS_FILE),
        meta=meta,
        path=root,
    )
