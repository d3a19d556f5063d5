"""The live store: events and item changes written durably before they are acknowledged.

`EventStore` is the interface the API, batch scoring and retraining use; `open_store` opens one
from a URL or path. `SqliteEventStore` (recsys.store.sqlite) is the embedded default.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from recsys.errors import RecsysError

log = logging.getLogger(__name__)

POSITIVE_TYPES = frozenset({"click", "purchase", "add_to_cart"})  # extend the user's history
POPULAR_TTL_S = 2.0


class EventStoreError(RecsysError):
    """The store is corrupt or unreadable: the server refuses to start on it."""


class StoreUnavailable(RecsysError):
    """A write could not be made durable (disk full, I/O error): nothing was acknowledged."""


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    timestamp: float          # epoch seconds
    type: str
    request_id: str | None = None
    value: float | None = None


@dataclass(frozen=True)
class StoredItem:
    """A cold-start item as the API received it, with its vector (None when deleted)."""

    item_id: str
    title: str
    text: str
    category: str | None
    vector: np.ndarray | None
    encoder: str              # fingerprint of the encoder that made `vector`
    deleted: bool
    updated: float


class EventStore(Protocol):
    def append(self, events: Sequence[Event]) -> list[bool]:
        """Store events durably; True for each new one, False for a duplicate id."""

    def events(self, since_seq: int = 0) -> Iterator[tuple[int, Event]]:
        """Every stored event in arrival order, with its sequence number."""

    def count(self) -> int: ...

    def recent_items(self, user_id: str, limit: int, since: float) -> tuple[list[str], float]:
        """Item ids of the user's latest positive events after `since` (oldest first, at most
        `limit`), and the time of their last event of any kind (NaN if none)."""

    def recent_events(self, user_id: str, limit: int,
                      since: float) -> tuple[list[tuple[str, float, str]], float]:
        """The events `recent_items` picks, as (item id, epoch seconds, type), and the same
        last time."""

    def popular_items(self, k: int, exclude: set[str]) -> list[tuple[str, int]]:
        """The most clicked items in the store (the fallback when no model is loaded)."""

    def put_items(self, items: Sequence[StoredItem]) -> None: ...

    def items(self, since_seq: int = 0) -> list[tuple[int, StoredItem]]:
        """Cold-start item changes after `since_seq`, oldest first, with their sequence."""

    def item(self, item_id: str) -> StoredItem | None:
        """The latest change of one cold-start item (None if the API never changed it)."""

    def items_seq(self) -> int:
        """The sequence number of the latest item change (0 if none)."""

    def close(self) -> None: ...


# A history's positive events are looked for among the user's latest HISTORY_WINDOW x limit
# events of any kind: one indexed read, bounded however many impressions a user has.
HISTORY_WINDOW = 4


def recent_positive(latest: Sequence[tuple[str, str, int]], limit: int,
                    since: float) -> tuple[list[tuple[str, float, str]], float]:
    """From a user's latest events, newest first, as (item id, type, epoch microseconds): the
    positive ones after `since` (at most `limit`, oldest first, as (item id, epoch seconds,
    type)), and the time of the latest event of any kind (NaN if none). The one rule every
    store and the offline snapshot (`recsys.live_state.LiveSnapshot`) apply."""
    if not latest:
        return [], math.nan
    since_us = since * 1_000_000
    events = [(item, ts_us / 1_000_000, type_) for item, type_, ts_us in latest
              if type_ in POSITIVE_TYPES and ts_us > since_us][:limit]
    return events[::-1], latest[0][2] / 1_000_000


class RecentFromLatest:
    """`recent_items` and `recent_events` for a store that reads a user's latest events
    (`_latest_rows(user_id, n)`, newest first)."""

    def _latest_rows(self, user_id: str, n: int) -> list[tuple[str, str, int]]:
        raise NotImplementedError

    def recent_events(self, user_id: str, limit: int,
                      since: float) -> tuple[list[tuple[str, float, str]], float]:
        return recent_positive(self._latest_rows(user_id, HISTORY_WINDOW * limit), limit, since)

    def recent_items(self, user_id: str, limit: int, since: float) -> tuple[list[str], float]:
        events, last = self.recent_events(user_id, limit, since)
        return [item for item, _, _ in events], last


def open_store(location: str | os.PathLike[str], *, verify: bool = True) -> EventStore:
    """The store at `location`: a path or `sqlite:///path` (the embedded SQLite file), or
    `postgresql://user:password@host:port/database` (a shared PostgreSQL database)."""
    text = os.fspath(location)
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme in ("postgresql", "postgres"):
            from recsys.store.postgres import PostgresEventStore

            return PostgresEventStore(text)
        if scheme != "sqlite":
            raise RecsysError(f"unknown store URL scheme {scheme!r}; use sqlite:///PATH or "
                              "postgresql://USER@HOST:PORT/DATABASE")
        text = rest
    from recsys.store.sqlite import SqliteEventStore

    return SqliteEventStore(Path(text), verify=verify)


__all__ = ["Event", "EventStore", "EventStoreError", "HISTORY_WINDOW", "POSITIVE_TYPES",
           "RecentFromLatest", "StoreUnavailable",
           "StoredItem", "open_store", "recent_positive"]
