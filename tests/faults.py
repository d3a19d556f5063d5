"""Fault injectors shared by the event-store and reliability tests."""

from __future__ import annotations

import sqlite3


class FullDisk:
    """Wraps a sqlite3 connection; every INSERT fails as it does when the disk is full (ENOSPC)."""

    def __init__(self, db):
        self.db = db

    def execute(self, sql, *args):
        if sql.startswith("INSERT"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)
