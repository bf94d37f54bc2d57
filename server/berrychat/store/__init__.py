"""Storage: the `Store` interface, SQLite (WAL) and MariaDB/MySQL implementations, migrations."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import DatabaseSettings, ReplicaSettings
from .base import Conflict, Op, OpResult, Store, StoreError

__all__ = ["Conflict", "Op", "OpResult", "Store", "StoreError", "open_store"]


def open_store(db: DatabaseSettings, replicas: Sequence[ReplicaSettings] = ()) -> Store:
    """The store for a database config (not yet connected: call `await store.connect()`).
    `replicas`: MariaDB read replicas (ignored for SQLite)."""
    if db.type == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(db, synchronous=db.sqlite_synchronous)
    from .mysql import MysqlStore

    return MysqlStore(db, replicas)
