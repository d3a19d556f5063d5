"""The shared live store: events and item changes in one PostgreSQL database, for many replicas.

Same promises as the SQLite store: a write returns only once its transaction committed
(synchronous_commit as the server has it, `on` by default), a retried `event_id` is stored once
(ON CONFLICT DO NOTHING), and item changes carry a sequence number in commit order (writers take
a table lock, so a follower reading `seq > last` never skips a change committed late).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from recsys.errors import DataError
from recsys.store import (
    POPULAR_TTL_S,
    POSITIVE_TYPES,
    Event,
    EventStoreError,
    RecentFromLatest,
    StoredItem,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

# A replica that lost the database answers at once for this long instead of waiting for a
# connection on every request; then one request tries again.
RETRY_AFTER_S = 1.0
CONNECT_TIMEOUT_S = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recsys_events (
    seq BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts_us BIGINT NOT NULL,
    type TEXT NOT NULL,
    request_id TEXT,
    value DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS recsys_events_by_user ON recsys_events (user_id, ts_us);
CREATE SEQUENCE IF NOT EXISTS recsys_items_seq;
CREATE TABLE IF NOT EXISTS recsys_items (
    item_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,            -- a new one on every change: what replicas follow
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    category TEXT,
    vector BYTEA,
    encoder TEXT NOT NULL,
    deleted BOOLEAN NOT NULL,
    updated_us BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS recsys_items_by_seq ON recsys_items (seq);
"""


def redact(url: str) -> str:
    """The URL with its password replaced by ***: it goes into logs and error lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class PostgresEventStore(RecentFromLatest):
    """A connection pool on one PostgreSQL database; every method may run on any thread."""

    def __init__(self, url: str, *, max_connections: int = 10) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise EventStoreError("a postgresql:// store needs psycopg 3: "
                                  "pip install 'recsys[postgres]'") from exc
        self._psycopg = psycopg
        self.url = url
        self.name = redact(url)
        self._down_until = 0.0
        self._popular_cache: tuple[float, list[tuple[str, int]]] = (-math.inf, [])
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max_connections, open=False, timeout=CONNECT_TIMEOUT_S,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            # a connection broken by a database restart is replaced before use, not failed on
            check=ConnectionPool.check_connection, reconnect_timeout=0, name="recsys-store")
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S + 1)
            with self._pool.connection() as db:
                db.execute("SELECT pg_advisory_lock(7412)")  # two replicas creating at once
                try:
                    db.execute(_SCHEMA)
                finally:
                    db.execute("SELECT pg_advisory_unlock(7412)")
        except Exception as exc:
            self._pool.close()
            raise EventStoreError(f"cannot open the store {self.name}: "
                                  f"{_one_line(exc)}") from exc

    # -- connections ----------------------------------------------------------------------------
    def _connection(self):
        """A pooled connection, or StoreUnavailable at once while the database is known down."""
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(f"the store {self.name} is unreachable (retrying)")
        return _Guarded(self)

    def _failed(self, exc: BaseException, what: str) -> StoreUnavailable:
        if isinstance(exc, (self._psycopg.OperationalError, self._psycopg.InterfaceError)) and \
                not self._pool_busy():
            self._down_until = time.monotonic() + RETRY_AFTER_S
        log.error("store %s: %s failed: %s", self.name, what, _one_line(exc))
        return StoreUnavailable(f"{what} failed: the store {self.name} is unavailable "
                                f"({_one_line(exc)})")

    def _pool_busy(self) -> bool:
        """Every connection is open and in use: a wait for one timed out under load, which says
        nothing about the database being down (then the pool could not keep its connections)."""
        stats = self._pool.get_stats()
        return stats.get("pool_size", 0) >= self._pool.max_size and \
            stats.get("pool_available", 0) == 0

    # -- events ---------------------------------------------------------------------------------
    def append(self, events: Sequence[Event]) -> list[bool]:
        if not events:
            return []
        columns = list(zip(*[
            (e.event_id, e.user_id, e.item_id, int(round(e.timestamp * 1_000_000)), e.type,
             e.request_id, None if e.value is None else float(e.value)) for e in events],
                           strict=True))
        with self._connection() as db:
            # one statement, one transaction: the rows are committed when execute returns
            inserted = {row[0] for row in db.execute(
                "INSERT INTO recsys_events (event_id, user_id, item_id, ts_us, type, request_id,"
                " value) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[],"
                " %s::text[], %s::text[], %s::float8[]) ON CONFLICT (event_id) DO NOTHING "
                "RETURNING event_id", [list(c) for c in columns]).fetchall()}
        fresh = []
        for e in events:  # an id repeated within the batch is new only the first time
            fresh.append(e.event_id in inserted)
            inserted.discard(e.event_id)
        if any(fresh):
            self._popular_cache = (-math.inf, [])
        return fresh

    def events(self, since_seq: int = 0) -> Iterator[tuple[int, Event]]:
        # a server-side cursor: an export streams the table instead of holding it in memory
        with self._connection() as db, db.transaction(), \
                db.cursor(name="recsys_events_scan") as cursor:
            cursor.execute("SELECT seq, event_id, user_id, item_id, ts_us, type, request_id, "
                           "value FROM recsys_events WHERE seq > %s ORDER BY seq", (since_seq,))
            for seq, event_id, user, item, ts_us, type_, request_id, value in cursor:
                yield seq, Event(event_id, user, item, ts_us / 1_000_000, type_, request_id,
                                 value)

    def count(self) -> int:
        with self._connection() as db:
            return int(db.execute("SELECT COUNT(*) FROM recsys_events").fetchone()[0])

    def _latest_rows(self, user_id: str, n: int) -> list[tuple[str, str, int]]:
        with self._connection() as db:
            return db.execute(
                "SELECT item_id, type, ts_us FROM recsys_events WHERE user_id = %s "
                "ORDER BY ts_us DESC, seq DESC LIMIT %s", (user_id, n)).fetchall()

    def popular_items(self, k: int, exclude: set[str]) -> list[tuple[str, int]]:
        """Recounted at most every POPULAR_TTL_S: a scan of the store, used only without a model."""
        stamp, ranked = self._popular_cache
        if time.monotonic() - stamp > POPULAR_TTL_S:
            with self._connection() as db:
                ranked = [(item, int(n)) for item, n in db.execute(
                    "SELECT item_id, COUNT(*) AS n FROM recsys_events WHERE type = ANY(%s) "
                    "GROUP BY item_id ORDER BY n DESC, item_id LIMIT 1000",
                    (sorted(POSITIVE_TYPES),)).fetchall()]
            self._popular_cache = (time.monotonic(), ranked)
        return [(item, n) for item, n in ranked if item not in exclude][:k]

    # -- cold-start items -----------------------------------------------------------------------
    def put_items(self, items: Sequence[StoredItem]) -> None:
        rows = [(i.item_id, i.title, i.text, i.category,
                 None if i.vector is None else
                 np.ascontiguousarray(i.vector, dtype="<f4").tobytes(),
                 i.encoder, bool(i.deleted), int(round(i.updated * 1_000_000))) for i in items]
        if not rows:
            return
        with self._connection() as db:
            with db.transaction():
                # writers in turn: sequence order is then commit order for followers
                db.execute("LOCK TABLE recsys_items IN SHARE ROW EXCLUSIVE MODE")
                with db.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO recsys_items (item_id, seq, title, text, category, vector, "
                        "encoder, deleted, updated_us) VALUES (%s, nextval('recsys_items_seq'), "
                        "%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (item_id) DO UPDATE SET "
                        "seq = EXCLUDED.seq, title = EXCLUDED.title, text = EXCLUDED.text, "
                        "category = EXCLUDED.category, vector = EXCLUDED.vector, "
                        "encoder = EXCLUDED.encoder, deleted = EXCLUDED.deleted, "
                        "updated_us = EXCLUDED.updated_us", rows)

    def items(self, since_seq: int = 0) -> list[tuple[int, StoredItem]]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT seq, item_id, title, text, category, vector, encoder, deleted, "
                "updated_us FROM recsys_items WHERE seq > %s ORDER BY seq",
                (since_seq,)).fetchall()
        return [(seq, _stored_item(*rest)) for seq, *rest in rows]

    def item(self, item_id: str) -> StoredItem | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT item_id, title, text, category, vector, encoder, deleted, updated_us "
                "FROM recsys_items WHERE item_id = %s", (item_id,)).fetchone()
        return None if row is None else _stored_item(*row)

    def items_seq(self) -> int:
        with self._connection() as db:
            return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM recsys_items")
                       .fetchone()[0])

    def close(self) -> None:
        self._pool.close()


class _Guarded:
    """A pooled connection whose database errors become StoreUnavailable (nothing acknowledged)."""

    def __init__(self, store: PostgresEventStore) -> None:
        self.store = store
        self._context = None

    def __enter__(self):
        self._context = self.store._pool.connection()
        try:
            return self._context.__enter__()
        except Exception as exc:
            raise self.store._failed(exc, "connecting") from exc

    def __exit__(self, kind, exc, trace):
        try:
            self._context.__exit__(kind, exc, trace)
        except Exception as close_exc:  # noqa: BLE001 - the original error says more
            if exc is None:
                raise self.store._failed(close_exc, "a store operation") from close_exc
        if isinstance(exc, self.store._psycopg.DataError):  # e.g. a NUL byte in an id
            raise DataError(f"the store {self.store.name} refused a value: "
                            f"{_one_line(exc)}") from exc
        if exc is not None and isinstance(exc, self.store._psycopg.Error):
            raise self.store._failed(exc, "a store operation") from exc
        return False


def _stored_item(item_id, title, text, category, vector, encoder, deleted,
                 updated_us) -> StoredItem:
    array = None if vector is None else np.frombuffer(bytes(vector), dtype="<f4").copy()
    return StoredItem(item_id, title, text, category, array, encoder, bool(deleted),
                      updated_us / 1_000_000)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = ["PostgresEventStore", "redact"]
