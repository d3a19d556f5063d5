"""Matching a user's column names to the schema: `--map SRC=DST` renames and suggested maps.

A suggestion comes from a small table of names exports commonly use (`headline` for `title`,
`ts` for `timestamp`...) and otherwise from spelling (difflib), so "UserID" finds `user_id`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

import polars as pl

from recsys.errors import DataError

ITEMS_REQUIRED = ("item_id", "title")
ITEMS_OPTIONAL = ("text", "category", "tags", "created_at")
EVENTS_REQUIRED = ("user_id", "item_id", "timestamp")
EVENTS_OPTIONAL = ("type", "event_id", "value", "request_id", "split")

# Names seen in real exports, per file (an `id` is an item in a catalogue, not in a click log).
ITEM_SYNONYMS = {
    "item_id": ("id", "item", "itemid", "article", "article_id", "articleid", "product",
                "product_id", "news_id", "newsid", "doc_id", "document_id", "content_id",
                "movie_id", "movieid", "sku", "asin"),
    "title": ("headline", "name", "heading", "product_name", "subject", "item_name"),
    "text": ("body", "description", "abstract", "summary", "content", "article_text",
             "full_text", "lead", "teaser"),
    "category": ("section", "genre", "genres", "categories", "topic", "department", "vertical",
                 "category_name", "subcategory"),
    "tags": ("keywords", "labels", "tag"),
    "created_at": ("published", "published_at", "publish_date", "pubdate", "created",
                   "publication_date", "date", "release_date"),
}
EVENT_SYNONYMS = {
    "user_id": ("user", "userid", "customer", "customer_id", "visitor", "visitor_id", "member",
                "member_id", "account", "account_id", "reader", "reader_id", "client_id",
                "uid"),
    "item_id": ("item", "itemid", "article", "article_id", "articleid", "product", "product_id",
                "news_id", "newsid", "doc_id", "content_id", "movie_id", "movieid", "sku",
                "asin"),
    "timestamp": ("ts", "time", "date", "datetime", "event_time", "eventtime", "time_stamp",
                  "clicked_at", "occurred_at", "event_timestamp", "when", "created_at"),
    "type": ("event_type", "eventtype", "action", "event", "interaction", "interaction_type"),
    "value": ("rating", "score", "stars"),
    "request_id": ("impression_id", "impressionid", "request"),
}
CLOSE_ENOUGH = 0.8


def parse_map(text: str | None) -> dict[str, str]:
    """`"a=b,c=d"` as {"a": "b", "c": "d"}; a `DataError` for an entry that is not SRC=DST."""
    renames: dict[str, str] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        source, equals, target = entry.partition("=")
        if not equals or not source.strip() or not target.strip():
            raise DataError(f"--map: {entry.strip()!r} is not SRC=DST (e.g. headline=title)")
        if source.strip() in renames:
            raise DataError(f"--map: {source.strip()!r} is renamed twice")
        renames[source.strip()] = target.strip()
    return renames


def rename(frame: pl.DataFrame, renames: Mapping[str, str], file: str) -> pl.DataFrame:
    """`frame` with the `renames` that apply to its columns; a clash is a `DataError`."""
    applied = {source: target for source, target in renames.items() if source in frame.columns}
    names = [applied.get(c, c) for c in frame.columns]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise DataError(f"after --map two columns would be called {', '.join(clash)}", file=file)
    return frame.rename(applied)


def unused_renames(renames: Mapping[str, str], *frames: pl.DataFrame) -> list[str]:
    """Sources in `renames` that no frame has (a typo the user must hear about)."""
    present = {c for frame in frames for c in frame.columns}
    return [source for source in renames if source not in present]


def suggest(found: Iterable[str], wanted: Iterable[str],
            synonyms: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """found column -> schema column, for each wanted column a found one plausibly means."""
    schema_names = set(synonyms) | set(wanted)
    available = [c for c in found if c not in schema_names]
    suggestions: dict[str, str] = {}
    for target in wanted:
        candidates = [c for c in available if c not in suggestions]
        by_plain = {_plain(c): c for c in candidates}
        match = next((by_plain[s] for s in (_plain(target), *synonyms.get(target, ()))
                      if s in by_plain), None)
        if match is None:
            close = difflib.get_close_matches(_plain(target), list(by_plain), n=1,
                                              cutoff=CLOSE_ENOUGH)
            match = by_plain[close[0]] if close else None
        if match is not None:
            suggestions[match] = target
    return suggestions


def _plain(name: str) -> str:
    """A name as compared: lower case, words joined by "_" ("User ID" -> "user_id")."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


__all__ = ["EVENTS_OPTIONAL", "EVENTS_REQUIRED", "EVENT_SYNONYMS", "ITEMS_OPTIONAL",
           "ITEMS_REQUIRED", "ITEM_SYNONYMS", "parse_map", "rename", "suggest",
           "unused_renames"]
