"""The import formats and `import_dataset`, which turns a source folder into a dataset directory.

Each importer reads its source into canonical frames and writes nothing; `import_dataset`
checks them and only then writes the three files, each atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.data.dataset import Dataset, load_dataset
from recsys.data.importers.mind import import_mind
from recsys.data.importers.movielens import import_movielens
from recsys.data.importers.parquet import import_parquet
from recsys.data.importers.recbole import import_recbole
from recsys.data.schema import EVENTS_FILE, ITEMS_FILE, META_FILE
from recsys.data.validate import find_problems, normalize_events, normalize_items
from recsys.errors import DataError
from recsys.io import write_json, write_parquet

# format name (as typed after `recsys import`) -> importer(src, **options) -> unwritten Dataset
IMPORTERS: dict[str, Callable[..., Dataset]] = {
    "parquet": import_parquet,
    "mind": import_mind,
    "recbole": import_recbole,
    "movielens": import_movielens,
}


def import_dataset(fmt: str, src: str | Path, out: str | Path, **options: Any) -> Dataset:
    """Import SRC in format `fmt` into the dataset directory OUT and return it, loaded.

    `options` go to the importer (e.g. `click_threshold=3.5` for movielens, `drop_unknown=True`
    for mind). Raises `DataError` on bad input; OUT is then left as it was.
    """
    importer = IMPORTERS.get(fmt)
    if importer is None:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(IMPORTERS)}")
    source = Path(src)
    if not source.is_dir():
        raise DataError("source folder not found", file=str(source))
    imported = importer(source, **options)
    items = normalize_items(imported.items)
    events = normalize_events(imported.events)
    problems = find_problems(items, events, imported.meta)
    if problems:
        raise problems[0]

    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    # dataset.json goes first and comes back last, so a crash between the writes leaves a
    # directory that fails validation rather than old events beside new items.
    (target / META_FILE).unlink(missing_ok=True)
    write_parquet(items, target / ITEMS_FILE)
    write_parquet(events, target / EVENTS_FILE)
    write_json(imported.meta, target / META_FILE)
    return load_dataset(target, validate=True)


__all__ = ["IMPORTERS", "import_dataset"]
