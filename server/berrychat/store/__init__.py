"""Storage: the `Store` interface, SQLite (WAL) and MariaDB/MySQL implementations, migrations."""

from __future__ import annotations

from ..config import DatabaseSettings
from .base import Conflict, Op, OpResult, Store, StoreError

__all__ = ["Conflict", "Op", "OpResult", "Store", "StoreError", "open_store"]


def open_store(db: DatabaseSettings) -> Store:
    """The store for a database config (not yet connected: call `await store.connect()`)."""
    if db.type == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(db, synchronous=db.sqlite_synchronous)
    from .mysql import MysqlStore

    return MysqlStore(db)
