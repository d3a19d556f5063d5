"""The import formats and `import_dataset`, which turns a source into a dataset directory.

Each importer reads its source into canonical frames and writes nothing; `import_dataset`
checks them and only then writes the three files, each atomically.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys.atomic_files import write_json, write_parquet
from recsys.data.dataset import Dataset, load_dataset
from recsys.data.importers.files import import_files
from recsys.data.importers.mind import import_mind
from recsys.data.importers.movielens import import_movielens
from recsys.data.importers.parquet import import_parquet
from recsys.data.importers.recbole import import_recbole
from recsys.data.schema import EVENTS_FILE, ITEMS_FILE, META_FILE
from recsys.data.validate import combine, find_problems, normalize_events, normalize_items
from recsys.errors import DataError

# format name (as typed after `recsys import`) -> importer(src, **options) -> unwritten Dataset;
# `files` takes no SRC folder: its options name the two files.
IMPORTERS: dict[str, Callable[..., Dataset]] = {
    "files": import_files,
    "parquet": import_parquet,
    "mind": import_mind,
    "recbole": import_recbole,
    "movielens": import_movielens,
}


def import_dataset(fmt: str, src: str | Path | None, out: str | Path, **options: Any
                   ) -> Dataset:
    """Import SRC in format `fmt` into the dataset directory OUT and return it, loaded.

    `options` go to the importer (e.g. `click_threshold=3.5` for movielens, `drop_unknown=True`
    for any format, `items=` and `events=` for files, whose SRC is None). An option the format
    does not take is a `DataError`, and so is any bad input; OUT is then left as it was. The
    dataset's name defaults to OUT's folder name. The returned dataset's `report` holds the
    importer's summary lines.
    """
    importer = IMPORTERS.get(fmt)
    if importer is None:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(IMPORTERS)}")
    _check_options(fmt, importer, options)
    if fmt == "files":
        if src is not None:
            raise DataError("the files format reads --items and --events, not a source folder")
        imported = importer(**options)
    else:
        source = Path(str(src))
        if src is None or not source.is_dir():
            raise DataError("source folder not found", file=str(source))
        imported = importer(source, **options)
    if not imported.meta.get("name"):
        imported.meta["name"] = Path(out).resolve().name
    items = normalize_items(imported.items)
    events = normalize_events(imported.events)
    problems = find_problems(items, events, imported.meta)
    if problems:
        raise combine(problems)

    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    # dataset.json goes first and comes back last, so a crash between the writes leaves a
    # directory that fails validation rather than old events beside new items.
    (target / META_FILE).unlink(missing_ok=True)
    write_parquet(items, target / ITEMS_FILE)
    write_parquet(events, target / EVENTS_FILE)
    write_json(imported.meta, target / META_FILE)
    dataset = load_dataset(target, validate=True)
    dataset.report = imported.report
    return dataset


# Options whose command-line flag is not the option's name.
CLI_FLAGS = {"column_map": "--map", "dataset_name": "--dataset"}


def _check_options(fmt: str, importer: Callable[..., Dataset], options: dict[str, Any]) -> None:
    accepted = [p for p in inspect.signature(importer).parameters if p != "src"]
    wrong = [o for o in options if o not in accepted]
    if wrong:
        def flag(option: str) -> str:
            return CLI_FLAGS.get(option, "--" + option.replace("_", "-"))
        raise DataError(f"format {fmt!r} does not take {', '.join(map(flag, wrong))}; it takes "
                        f"{', '.join(map(flag, accepted))}")


__all__ = ["IMPORTERS", "import_dataset"]
