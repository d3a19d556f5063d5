"""`recsys events export`: the live store's events as a click log in the dataset schema."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from recsys.errors import NotFoundError
from recsys.io import write_parquet
from recsys.store.sqlite import SqliteEventStore


def export_events(store_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> int:
    """Write every stored event as a click log (the dataset events schema); returns rows written."""
    store_path = Path(store_path)
    if not store_path.exists():
        raise NotFoundError(f"{store_path}: no event store there")
    store = SqliteEventStore(store_path)
    try:
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
    finally:
        store.close()
    frame = pl.DataFrame({
        "event_id": pl.Series(columns["event_id"], dtype=pl.String),
        "user_id": pl.Series(columns["user_id"], dtype=pl.String),
        "item_id": pl.Series(columns["item_id"], dtype=pl.String),
        "timestamp": pl.Series(columns["ts_us"], dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
        "type": pl.Series(columns["type"], dtype=pl.String),
        "request_id": pl.Series(columns["request_id"], dtype=pl.String),
        "value": pl.Series(columns["value"], dtype=pl.Float64),
    })
    write_parquet(frame, out_path)
    return frame.height


__all__ = ["export_events"]
