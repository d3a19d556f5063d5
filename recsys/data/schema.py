"""The canonical dataset directory: the one layout every importer writes and every command reads.

A dataset directory holds `items.parquet`, `events.parquet` and `dataset.json`. The column lists
below are the contract; `recsys validate` checks a directory against them.
"""

from __future__ import annotations

import polars as pl

ITEMS_FILE = "items.parquet"
EVENTS_FILE = "events.parquet"
META_FILE = "dataset.json"

# Required columns of items.parquet and their types.
ITEM_COLUMNS: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "title": pl.String(),
    "text": pl.String(),
    "category": pl.String(),  # nullable
}
# Optional item columns with a fixed type; any other extra column is kept as it is.
CREATED_AT = pl.Datetime("us", "UTC")
ITEM_OPTIONAL_COLUMNS: dict[str, pl.DataType] = {
    "tags": pl.List(pl.String()),
    "created_at": CREATED_AT,
}

# Required columns of events.parquet and their types.
EVENT_COLUMNS: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "user_id": pl.String(),
    "item_id": pl.String(),
    "timestamp": pl.Datetime("us", "UTC"),
    "type": pl.String(),
}
# Optional event columns.
#   request_id: groups one logged impression list (the items shown together in one response).
#   value: the rating for type "rating"; free for other types.
#   split: "train" | "valid" | "test" where the source fixes an evaluation split (RecBole/UniSRec).
EVENT_OPTIONAL_COLUMNS: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "value": pl.Float64(),
    "split": pl.String(),
}

# Event types. A "click" is a positive interaction; "impression" is shown-and-not-clicked.
CLICK = "click"
IMPRESSION = "impression"
RATING = "rating"
EVENT_TYPES = frozenset({CLICK, IMPRESSION, RATING, "view", "purchase", "add_to_cart"})
SPLITS = frozenset({"train", "valid", "test"})

# dataset.json keys (all written by importers):
#   name: str            short name, e.g. "amazon-scientific"
#   source: str          importer used: parquet | mind | recbole | movielens
#   time: "real" | "order_only"   order_only means timestamps encode sequence order, not a calendar
#   protocol: "leave_one_out" | "time" | "impressions"   how `recsys evaluate` splits it by default
#   notes: str           how timestamps were made, thresholds used, anything a reader must know
#   allow_any_time: bool  optional; true keeps times before 1990 or more than a day ahead (the
#                         importers' --allow-any-time); otherwise real times must lie in that range
ALLOW_ANY_TIME = "allow_any_time"
TIME_KINDS = frozenset({"real", "order_only"})
PROTOCOLS = frozenset({"leave_one_out", "time", "impressions"})


def with_created_at(items: pl.DataFrame) -> pl.DataFrame:
    """`items` with a `created_at` column (null where the catalogue has none): the column that
    makes an item without events new to the next model (`features.state.BehaviourState.new_`)."""
    if "created_at" in items.columns:
        return items
    return items.with_columns(pl.lit(None, CREATED_AT).alias("created_at"))
