"""The embedded live store: events and item changes in one SQLite file.

SQLite in WAL mode, synchronous=FULL: a committed write survives kill -9 and power loss. Every
row carries a CRC of its content, so bytes flipped on disk are found at start-up.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    type TEXT NOT NULL,
    request_id TEXT,
    value REAL,
    crc INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, ts_us);
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- a new seq on every change: what replicas follow
    item_id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    category TEXT,
    vector BLOB,
    encoder TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    updated_us INTEGER NOT NULL,
    crc INTEGER NOT NULL
);
"""


def _event_crc(event_id, user_id, item_id, ts_us, type_, request_id, value) -> int:
    payload = json.dumps([event_id, user_id, item_id, ts_us, type_, request_id, value])
    return zlib.crc32(payload.encode("utf-8"))


def _item_crc(item_id, title, text, category, vector: bytes | None, encoder, deleted,
              updated_us) -> int:
    payload = json.dumps([item_id, title, text, category, encoder, deleted, updated_us])
    return zlib.crc32(vector or b"", zlib.crc32(payload.encode("utf-8")))


class SqliteEventStore(RecentFromLatest):
    """SQLite file in WAL mode with synchronous=FULL; one writer at a time (a lock), any readers."""

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _create_with_umask(self.path)
        _warn_on_torn_wal(self.path)
        self._lock = threading.Lock()
        self._readers = threading.local()  # one read connection per thread (WAL: never blocks)
        self._all_readers: list[sqlite3.Connection] = []
        self._popular_cache: tuple[float, list[tuple[str, int]]] = (-math.inf, [])
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            if verify:
                self._verify()
        except sqlite3.DatabaseError as exc:
            raise EventStoreError(f"{self.path}: event store is corrupt or unreadable ({exc}); "
                                  "restore it from a backup or move it aside") from exc

    # -- integrity ------------------------------------------------------------------------------
    def _verify(self) -> None:
        self._check("quick_check")
        for seq, *fields, crc in self._db.execute(
                "SELECT seq, event_id, user_id, item_id, ts_us, type, request_id, value, crc "
                "FROM events ORDER BY seq"):
            if _event_crc(*fields) != crc:
                raise EventStoreError(f"{self.path}: event row seq {seq} (event_id "
                                      f"{fields[0]!r}) fails its checksum: the file is corrupt")
        for *fields, crc in self._db.execute(
                "SELECT item_id, title, text, category, vector, encoder, deleted, updated_us, crc "
                "FROM items"):
            if _item_crc(*fields) != crc:
                raise EventStoreError(f"{self.path}: item row {fields[0]!r} fails its checksum: "
                                      "the file is corrupt")
        # after the rows (whose own checks name the damaged event): only integrity_check
        # compares each index with its table, and a damaged UNIQUE event_id index lets a
        # retried event be stored twice (start-up cost on 100k events: docs/operations.md)
        self._check("integrity_check")

    def _check(self, pragma: str) -> None:
        check = self._db.execute(f"PRAGMA {pragma}").fetchall()
        if check != [("ok",)]:
            detail = "; ".join(str(row[0]) for row in check[:3])
            raise EventStoreError(f"{self.path}: event store is corrupt ({detail}); restore it "
                                  "from a backup or move it aside")

    # -- events ---------------------------------------------------------------------------------
    def append(self, events: Sequence[Event]) -> list[bool]:
        rows = []
        for e in events:
            ts_us = int(round(e.timestamp * 1_000_000))
            value = None if e.value is None else float(e.value)
            rows.append((e.event_id, e.user_id, e.item_id, ts_us, e.type, e.request_id, value,
                         _event_crc(e.event_id, e.user_id, e.item_id, ts_us, e.type,
                                    e.request_id, value)))
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    fresh = []
                    for row in rows:
                        cursor = self._db.execute(
                            "INSERT OR IGNORE INTO events (event_id, user_id, item_id, ts_us, "
                            "type, request_id, value, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                        fresh.append(cursor.rowcount == 1)
                    self._db.execute("COMMIT")  # synchronous=FULL: durable when this returns
                    if any(fresh):
                        self._popular_cache = (-math.inf, [])
                except BaseException:
                    self._rollback()
                    raise
            except (sqlite3.Error, OSError) as exc:
                log.error("event store write failed: %s", exc)
                raise StoreUnavailable(f"events could not be stored ({exc})") from exc
        return fresh

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def events(self, since_seq: int = 0) -> Iterator[tuple[int, Event]]:
        cursor = self._db.cursor()
        cursor.execute("SELECT seq, event_id, user_id, item_id, ts_us, type, request_id, value "
                       "FROM events WHERE seq > ? ORDER BY seq", (since_seq,))
        for seq, event_id, user, item, ts_us, type_, request_id, value in cursor:
            yield seq, Event(event_id, user, item, ts_us / 1_000_000, type_, request_id, value)

    def count(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def _reader(self) -> sqlite3.Connection:
        db = getattr(self._readers, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                 timeout=10.0)
            db.execute("PRAGMA query_only=1")
            self._readers.db = db
            with self._lock:
                self._all_readers.append(db)
        return db

    def _latest_rows(self, user_id: str, n: int) -> list[tuple[str, str, int]]:
        try:
            return self._reader().execute(
                "SELECT item_id, type, ts_us FROM events WHERE user_id = ? "
                "ORDER BY ts_us DESC, seq DESC LIMIT ?", (user_id, n)).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"event store read failed ({exc})") from exc

    def popular_items(self, k: int, exclude: set[str]) -> list[tuple[str, int]]:
        """Recounted at most every POPULAR_TTL_S: a scan of the store, used only without a model."""
        stamp, ranked = self._popular_cache
        if time.monotonic() - stamp > POPULAR_TTL_S:
            marks = ",".join("?" * len(POSITIVE_TYPES))
            ranked = [(item, int(n)) for item, n in self._reader().execute(
                f"SELECT item_id, COUNT(*) AS n FROM events WHERE type IN ({marks}) "
                "GROUP BY item_id ORDER BY n DESC, item_id LIMIT 1000",
                sorted(POSITIVE_TYPES)).fetchall()]
            self._popular_cache = (time.monotonic(), ranked)
        return [(item, n) for item, n in ranked if item not in exclude][:k]

    def items_seq(self) -> int:
        row = self._reader().execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        return int(row[0]) if row else 0

    # -- cold-start items -----------------------------------------------------------------------
    def put_items(self, items: Sequence[StoredItem]) -> None:
        rows = []
        for item in items:
            vector = None if item.vector is None else \
                np.ascontiguousarray(item.vector, dtype="<f4").tobytes()
            updated_us = int(round(item.updated * 1_000_000))
            rows.append((item.item_id, item.title, item.text, item.category, vector, item.encoder,
                         int(item.deleted), updated_us,
                         _item_crc(item.item_id, item.title, item.text, item.category, vector,
                                   item.encoder, int(item.deleted), updated_us)))
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO items (item_id, title, text, category, vector, "
                        "encoder, deleted, updated_us, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except (sqlite3.Error, OSError) as exc:
                log.error("event store write failed: %s", exc)
                raise StoreUnavailable(f"items could not be stored ({exc})") from exc

    def items(self, since_seq: int = 0) -> list[tuple[int, StoredItem]]:
        out = []
        for seq, item_id, title, text, category, vector, encoder, deleted, updated_us in \
                self._reader().execute(
                    "SELECT seq, item_id, title, text, category, vector, encoder, deleted, "
                    "updated_us FROM items WHERE seq > ? ORDER BY seq", (since_seq,)):
            array = None if vector is None else np.frombuffer(vector, dtype="<f4").copy()
            out.append((seq, StoredItem(item_id, title, text, category, array, encoder,
                                        bool(deleted), updated_us / 1_000_000)))
        return out

    def item(self, item_id: str) -> StoredItem | None:
        try:
            row = self._reader().execute(
                "SELECT item_id, title, text, category, vector, encoder, deleted, updated_us "
                "FROM items WHERE item_id = ?", (item_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"event store read failed ({exc})") from exc
        if row is None:
            return None
        item_id, title, text, category, vector, encoder, deleted, updated_us = row
        array = None if vector is None else np.frombuffer(vector, dtype="<f4").copy()
        return StoredItem(item_id, title, text, category, array, encoder, bool(deleted),
                          updated_us / 1_000_000)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            for reader in self._all_readers:
                reader.close()
            self._all_readers.clear()


def _create_with_umask(db_path: Path) -> None:
    """Create the (empty) database file as any program would, mode 0666 less the umask. SQLite
    creates it 0644 less the umask, so a group-writable umask (a server and an exporter running
    as two users of one group) was not honoured. Its -wal and -shm files copy this file's mode."""
    try:
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        pass
    except OSError:
        pass  # SQLite's own open then reports the problem in its words


def _warn_on_torn_wal(db_path: Path) -> None:
    """A WAL ending in half a frame is a write cut off by a crash: SQLite discards it on
    recovery (it was never committed, so never acknowledged); say so in the log."""
    wal = Path(f"{db_path}-wal")
    if not wal.exists() or wal.stat().st_size <= 32:
        return
    with open(wal, "rb") as handle:
        header = handle.read(32)
    page_size = struct.unpack(">I", header[8:12])[0]
    if page_size == 1:  # the format's way of writing 65536
        page_size = 65536
    frame = 24 + page_size
    torn = (wal.stat().st_size - 32) % frame if page_size >= 512 else 0
    if torn:
        log.warning("event store %s: the write-ahead log ends in a partial record (%d bytes), "
                    "cut off by a crash; it was never acknowledged and is discarded", db_path, torn)


__all__ = ["SqliteEventStore"]
