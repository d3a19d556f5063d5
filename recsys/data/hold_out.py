"""`recsys dataset hold-out-items`: a copy of a dataset in which a random share of the items are
brand new to the model, for measuring cold start.

The held-out items keep their row in the item table (their text is known, as a new product's
description is), but every event of theirs in the training and valid parts is removed; their test
events stay, and are the cold slice `recsys evaluate` reports. Their `created_at` becomes the
time of the last event before the test part, so the engine treats them as it treats items added
after the data it learned from (`BehaviourState.new_`). The evaluation split of the copy is
the original one: a leave-one-out split is written out as the `split` column (removing events
would otherwise move each user's last click), and for the time protocols the removal is repeated
until no held-out item has an event before the copy's own test window (removing early events can
move the window's start).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from features.state import POSITIVE_TYPES
from recsys.atomic_files import fsync_dir, write_json, write_parquet
from recsys.data.dataset import Dataset, load_dataset
from recsys.data.schema import CREATED_AT, EVENTS_FILE, ITEMS_FILE, META_FILE, with_created_at
from recsys.errors import RecsysError
from recsys.splits import Split

# A leave-one-out split marks events after a user's test click "after"; they are not history for
# any case and not training data, as a "test" non-click is not either.
_SPLIT_NAMES = {"after": "test"}


@dataclass
class HeldOut:
    """What `hold_out_items` wrote: counts for the command's summary line."""

    dataset: Dataset
    held_out_items: int
    items: int
    removed_events: int
    cold_test_targets: int
    users_left_without_history: int

    def summary(self, out: str | Path) -> str:
        return (f"held out {self.held_out_items} of {self.items} items -> {out}: removed "
                f"{self.removed_events} training/valid events, kept their "
                f"{self.cold_test_targets} test clicks (the cold slice); "
                f"{self.users_left_without_history} users kept with an empty history "
                f"(cold users: every training click was on a held-out item)")


def hold_out_items(dataset_path: str | Path, out: str | Path, *, fraction: float = 0.2,
                   seed: int = 0) -> HeldOut:
    """Write the hold-out copy of `dataset_path` to `out` (a new or empty folder)."""
    if not 0.0 < fraction < 1.0:
        raise RecsysError(f"--fraction must lie strictly between 0 and 1, got {fraction}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RecsysError(f"{out}: already exists and is not an empty folder (choose a new --out)")
    dataset = load_dataset(dataset_path)
    item_ids = dataset.items["item_id"].to_list()
    n_held = int(round(fraction * len(item_ids)))
    if n_held == 0 or n_held == len(item_ids):
        raise RecsysError(f"--fraction {fraction} of {len(item_ids)} items holds out "
                          f"{n_held}: choose a fraction that leaves some items on each side")
    rng = np.random.default_rng(seed)
    held = sorted(item_ids[i] for i in rng.choice(len(item_ids), n_held, replace=False))

    events, split_column = _remove_before_test(dataset, item_ids, set(held))
    removed = dataset.events.height - events.height
    kept = Dataset(items=_created_at_end(dataset, item_ids, set(held)), events=events,
                   meta={**dataset.meta, "name": out.resolve().name,
                         "notes": _notes(dataset, fraction, seed, n_held)},
                   path=out)
    if split_column is not None:
        kept.events = kept.events.with_columns(split_column)
    cold_targets = _cold_targets(kept, item_ids, set(held))
    emptied = _users_with_history(dataset, item_ids) - _users_with_history(kept, item_ids)
    _write(kept, out)
    return HeldOut(kept, n_held, len(item_ids), removed, cold_targets, len(emptied))


def _remove_before_test(dataset: Dataset, item_ids: list[str],
                        held: set[str]) -> tuple[pl.DataFrame, pl.Series | None]:
    """The events without the held-out items' training and valid events, and (leave-one-out)
    the split column to write with them."""
    held_expr = pl.col("item_id").is_in(pl.Series(sorted(held), dtype=pl.String).implode())
    if dataset.protocol == "leave_one_out":
        split = Split.of(dataset, item_ids)
        labelled = dataset.events.join(split.events.select("event_id", "split"), on="event_id",
                                       how="left")
        names = labelled["split"].replace(_SPLIT_NAMES)
        keep = ~(labelled.select(held_expr).to_series()
                 & names.is_in(["train", "valid"]).fill_null(True))
        return dataset.events.filter(keep), names.filter(keep).alias("split")
    events = dataset.events
    while True:
        split = Split.of(Dataset(dataset.items, events, dataset.meta, dataset.path), item_ids)
        early = held_expr & (pl.col("timestamp") < split.test_start)
        if events.filter(early).height == 0:
            return events, None
        events = events.filter(~early)


def _created_at_end(dataset: Dataset, item_ids: list[str], held: set[str]) -> pl.DataFrame:
    """The item table with the held-out items created at the last event before the test part
    (the other items keep their `created_at`, null where the catalogue has none)."""
    split = Split.of(dataset, item_ids)
    end = split.events_before_test()["timestamp"].max()
    is_held = pl.col("item_id").is_in(pl.Series(sorted(held), dtype=pl.String).implode())
    return with_created_at(dataset.items).with_columns(
        pl.when(is_held).then(pl.lit(end, CREATED_AT)).otherwise(pl.col("created_at"))
        .alias("created_at"))


def _cold_targets(dataset: Dataset, item_ids: list[str], held: set[str]) -> int:
    held_rows = {i for i, item in enumerate(item_ids) if item in held}
    return sum(1 for case in Split.of(dataset, item_ids).cases("test")
               for target in case.targets if target in held_rows)


def _users_with_history(dataset: Dataset, item_ids: list[str]) -> set[str]:
    """Users with a positive event before the test part."""
    split = Split.of(dataset, item_ids)
    clicks = split.events_before_test().filter(pl.col("type").is_in(POSITIVE_TYPES))
    return set(clicks["user_id"].unique().to_list())


def _notes(dataset: Dataset, fraction: float, seed: int, n_held: int) -> str:
    before = str(dataset.meta.get("notes") or "").strip()
    line = (f"hold-out-items: {n_held} items ({fraction:g}, seed {seed}) of {dataset.name} lost "
            "every training and valid event and are created at the last event before the test "
            "part; their test events are the cold slice")
    return f"{before}\n{line}" if before else line


def _write(dataset: Dataset, out: Path) -> None:
    """All three files into a sibling temporary folder, then one rename: a crash leaves no
    half-written dataset under `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_parquet(dataset.items, staging / ITEMS_FILE)
        write_parquet(dataset.events, staging / EVENTS_FILE)
        write_json(dataset.meta, staging / META_FILE)
        staging.chmod(0o755)
        if out.exists():
            out.rmdir()   # checked empty above
        staging.rename(out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
