"""SQLite (WAL) store. Each connection lives in its own thread: one writer, one reader.

Writes are serialised by the single writer thread (and `BEGIN IMMEDIATE`), which is also what
makes per-conversation seq assignment safe in the embedded default.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..config import DatabaseSettings
from .base import Conflict, Dialect, Q, Store, StoreError, Tx

T = TypeVar("T")


def _drive(conn: sqlite3.Connection, gen: Tx[T], begin: str) -> T:
    conn.execute(begin)
    try:
        try:
            q = next(gen)
            while True:
                q = gen.send(_exec(conn, q))
        except StopIteration as stop:
            conn.execute("COMMIT")
            return stop.value
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _exec(conn: sqlite3.Connection, q: Q) -> Any:
    if q.many:
        cur = conn.executemany(q.sql, q.params)
    else:
        cur = conn.execute(q.sql, q.params)
    f = q.fetch
    if f == "none":
        return None
    if f == "all":
        return cur.fetchall()
    if f == "one":
        return cur.fetchone()
    if f == "rowcount":
        return cur.rowcount
    if f == "lastid":
        return cur.lastrowid
    raise AssertionError(f)


class SqliteStore(Store):
    dialect = Dialect("sqlite")

    def __init__(self, db: DatabaseSettings, *, synchronous: str = "FULL") -> None:
        self.path = db.name
        self.synchronous = synchronous
        self._w: ThreadPoolExecutor | None = None
        self._r: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # The group commit builds IN (...) lists of every batch size: keep their plans cached.
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=512
        )
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA cache_size=-16000")
        return conn

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._w = ThreadPoolExecutor(1, thread_name_prefix="sqlite-w")
        self._r = ThreadPoolExecutor(1, thread_name_prefix="sqlite-r")
        try:
            self._wconn = await loop.run_in_executor(self._w, self._open)
            self._rconn = await loop.run_in_executor(self._r, self._open)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite database {self.path}: {e}")

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for ex, conn in ((self._w, self._wconn), (self._r, self._rconn)):
            if ex is not None and conn is not None:
                await loop.run_in_executor(ex, conn.close)
            if ex is not None:
                ex.shutdown(wait=True)
        self._w = self._r = None
        self._wconn = self._rconn = None

    async def run(
        self, fn: Callable[..., Tx[T]], *args: Any, write: bool = True, reader: int | None = None
    ) -> T:
        if self._w is None or self._r is None:
            raise StoreError("store is closed")
        ex, conn = (self._w, self._wconn) if write else (self._r, self._rconn)
        gen = fn(self.dialect, *args)
        begin = "BEGIN IMMEDIATE" if write else "BEGIN"
        t0 = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(ex, _drive, conn, gen, begin)
        except sqlite3.IntegrityError as e:
            raise Conflict(str(e))
        except sqlite3.Error as e:
            raise StoreError(str(e))
        finally:
            if self.observe is not None:
                self.observe(time.perf_counter() - t0)

    async def execute_script(self, statements: list[str]) -> None:
        def tx(d: Dialect) -> Tx[None]:
            for s in statements:
                yield Q(s)

        await self.run(tx)

    async def explain(self, sql: str, params: tuple = ()) -> list[str]:
        """EXPLAIN QUERY PLAN lines for a query (for docs and tests)."""

        def tx(d: Dialect) -> Tx[list[str]]:
            rows = yield Q("EXPLAIN QUERY PLAN " + sql, params, "all")
            return [r[-1] for r in rows]

        return await self.run(tx, write=False)
