"""MariaDB/MySQL store over aiomysql (pure Python, installs anywhere).

Seq assignment is serialised per conversation by `SELECT ... FOR UPDATE` on the conversation
rows inside the append transaction, so several processes can write safely.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import aiomysql
import pymysql

from ..config import DatabaseSettings
from .base import Conflict, Dialect, Q, Store, StoreError, Tx

T = TypeVar("T")

_DEADLOCK = (1213, 1205)  # deadlock, lock wait timeout
_sql_cache: dict[str, str] = {}


def _convert(sql: str) -> str:
    s = _sql_cache.get(sql)
    if s is None:
        s = sql.replace("%", "%%").replace("?", "%s")
        if len(_sql_cache) < 4096:
            _sql_cache[sql] = s
    return s


class MysqlStore(Store):
    dialect = Dialect("mysql")

    def __init__(self, db: DatabaseSettings) -> None:
        self.settings = db
        self._pool: aiomysql.Pool | None = None

    async def connect(self) -> None:
        db = self.settings
        kw: dict[str, Any] = dict(
            user=db.user,
            password=db.password,
            db=db.name,
            autocommit=False,
            charset="utf8mb4",
            minsize=1,
            maxsize=db.pool_size,
            connect_timeout=db.connect_timeout,
            pool_recycle=3600,
        )
        if db.unix_socket:
            kw["unix_socket"] = db.unix_socket
        else:
            kw["host"] = db.host
            kw["port"] = db.port
        try:
            self._pool = await aiomysql.create_pool(**kw)
        except (pymysql.err.MySQLError, OSError) as e:
            raise StoreError(f"cannot connect to MariaDB at {db.host}:{db.port}: {e}")

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None

    async def run(self, fn: Callable[..., Tx[T]], *args: Any, write: bool = True) -> T:
        if self._pool is None:
            raise StoreError("store is closed")
        for attempt in range(5):
            t0 = time.perf_counter()
            try:
                return await self._run_once(fn, args)
            except pymysql.err.IntegrityError as e:
                raise Conflict(str(e))
            except pymysql.err.OperationalError as e:
                if e.args and e.args[0] in _DEADLOCK and attempt < 4:
                    await asyncio.sleep(0.005 * (attempt + 1))
                    continue
                raise StoreError(str(e))
            except (TimeoutError, pymysql.err.MySQLError, OSError) as e:
                raise StoreError(str(e) or type(e).__name__)
            finally:
                if self.observe is not None:
                    self.observe(time.perf_counter() - t0)
        raise StoreError("too many deadlocks")  # pragma: no cover

    async def _run_once(self, fn: Callable[..., Tx[T]], args: tuple) -> T:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            gen = fn(self.dialect, *args)
            try:
                async with conn.cursor() as cur:
                    try:
                        q = next(gen)
                        while True:
                            q = gen.send(await self._exec(cur, q))
                    except StopIteration as stop:
                        await conn.commit()
                        return stop.value
            except BaseException:
                try:
                    await conn.rollback()
                except Exception:
                    conn.close()
                raise

    @staticmethod
    async def _exec(cur: aiomysql.Cursor, q: Q) -> Any:
        sql = _convert(q.sql)
        if q.many:
            await cur.executemany(sql, q.params)
        else:
            await cur.execute(sql, tuple(q.params))
        f = q.fetch
        if f == "none":
            return None
        if f == "all":
            return list(await cur.fetchall())
        if f == "one":
            return await cur.fetchone()
        if f == "rowcount":
            return cur.rowcount
        if f == "lastid":
            return cur.lastrowid
        raise AssertionError(f)

    async def execute_script(self, statements: list[str]) -> None:
        for s in statements:

            def tx(d: Dialect, s: str = s) -> Tx[None]:
                yield Q(s)

            await self.run(tx)

    async def explain(self, sql: str, params: tuple = ()) -> list[tuple]:
        def tx(d: Dialect) -> Tx[list[tuple]]:
            return (yield Q("EXPLAIN " + sql, params, "all"))

        return await self.run(tx, write=False)
