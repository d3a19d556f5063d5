"""`recsys events export`: the live store's events and item changes as Parquet, for `retrain`.

DIR/events.parquet holds the events in the dataset events schema; DIR/item_changes.parquet the
latest change of each item added, changed or deleted through the API.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from recsys.atomic_files import write_parquet
from recsys.errors import NotFoundError, RecsysError
from recsys.store import EventStore, open_store

STORE_FILE = "events.sqlite"          # where the server keeps the store in a models folder
EVENTS_NAME = "events.parquet"
ITEM_CHANGES_NAME = "item_changes.parquet"
ITEM_CHANGES_SCHEMA = {"item_id": pl.String, "title": pl.String, "text": pl.String,
                       "category": pl.String, "deleted": pl.Boolean,
                       "updated_at": pl.Datetime("us", "UTC"), "seq": pl.Int64}


def existing_store(location: str | os.PathLike[str]) -> str:
    """The store at `location` (a URL, a SQLite file, or a models folder holding one), checked
    to exist: opening a missing SQLite file would create an empty store instead."""
    text = os.fspath(location)
    if "://" in text and not text.startswith("sqlite://"):
        return text       # a database server: open_store says whether it answers
    path = Path(text.partition("://")[2] if "://" in text else text)
    if path.is_dir():     # the server keeps its store in the models folder
        if not (path / STORE_FILE).is_file():
            raise NotFoundError(f"{path}: folder holds no event store ({STORE_FILE})")
        return str(path / STORE_FILE)
    if not path.is_file():
        raise NotFoundError(f"{path}: no event store there")
    return text


def shown(location: str) -> str:
    """`location` fit to print: a URL's password replaced by ***."""
    scheme, sep, rest = location.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return location
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def export_live_state(location: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> dict:
    """Write DIR/events.parquet and DIR/item_changes.parquet; returns the counts written."""
    out = Path(out_dir)
    if out.suffix.lower() in (".parquet", ".pq"):
        raise RecsysError(f"--out {out}: export writes a folder now (events.parquet and "
                          f"item_changes.parquet); name a folder, e.g. --out {out.with_suffix('')}")
    if out.exists() and not out.is_dir():
        raise RecsysError(f"--out {out} is a file; name a folder to write the export in")
    found = existing_store(location)
    store = open_store(found)
    try:
        # events first: an item added while exporting then still comes with its clicks
        events = events_frame(store)
        changes = item_changes_frame(store)
    finally:
        store.close()
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(changes, out / ITEM_CHANGES_NAME)
    write_parquet(events, out / EVENTS_NAME)
    return {"store": shown(found), "events": events.height, "item_changes": changes.height}


def events_frame(store: EventStore) -> pl.DataFrame:
    """Every stored event as a click log (the dataset events schema), in arrival order."""
    columns: dict[str, list] = {k: [] for k in ("event_id", "user_id", "item_id", "ts_us",
                                                 "type", "request_id", "value")}
    for _, e in store.events():
        columns["event_id"].append(e.event_id)
        columns["user_id"].append(e.user_id)
        columns["item_id"].append(e.item_id)
        columns["ts_us"].append(int(round(e.timestamp * 1_000_000)))
        columns["type"].append(e.type)
        columns["request_id"].append(e.request_id)
        columns["value"].append(e.value)
    return pl.DataFrame({
        "event_id": pl.Series(columns["event_id"], dtype=pl.String),
        "user_id": pl.Series(columns["user_id"], dtype=pl.String),
        "item_id": pl.Series(columns["item_id"], dtype=pl.String),
        "timestamp": pl.Series(columns["ts_us"], dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
        "type": pl.Series(columns["type"], dtype=pl.String),
        "request_id": pl.Series(columns["request_id"], dtype=pl.String),
        "value": pl.Series(columns["value"], dtype=pl.Float64),
    })


def item_changes_frame(store: EventStore) -> pl.DataFrame:
    """The latest change of each item (its text, or that it was deleted), oldest first."""
    from recsys.live_state import latest_changes

    changes = store.items()
    seqs = {item.item_id: seq for seq, item in changes}
    latest = latest_changes(changes)
    return pl.DataFrame({
        "item_id": [i.item_id for i in latest], "title": [i.title for i in latest],
        "text": [i.text for i in latest], "category": [i.category for i in latest],
        "deleted": [i.deleted for i in latest],
        "updated_at": pl.Series([int(round(i.updated * 1_000_000)) for i in latest],
                                dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
        "seq": [seqs[i.item_id] for i in latest],
    }, schema=ITEM_CHANGES_SCHEMA)


__all__ = ["EVENTS_NAME", "ITEM_CHANGES_NAME", "ITEM_CHANGES_SCHEMA", "existing_store",
           "export_live_state", "events_frame", "item_changes_frame", "shown"]
