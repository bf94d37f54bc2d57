"""MariaDB/MySQL store over aiomysql (pure Python, installs anywhere).

Seq assignment is serialised per conversation by `SELECT ... FOR UPDATE` on the conversation
rows inside the append transaction, so several processes can write safely.

Read/write split: writes and most reads go to the primary; reads marked with a `reader` user
(history, conversation list, sync) go to a replica unless
- that user wrote within `read_your_writes_seconds` (or within the replica's measured lag plus
  0.5 s, if longer): read-your-writes for the writer;
- no replica is healthy: each process writes a heartbeat row (`berrychat_heartbeat`, its own
  row, every 0.5 s) on the primary and reads it back from every replica; a replica whose copy is
  older than `max_replica_lag_seconds` (or unreachable) is skipped until it catches up.
Membership, sessions and everything the message path depends on always read the primary.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import aiomysql
import pymysql
from pymysql.constants import CLIENT

from ..config import DatabaseSettings, ReplicaSettings
from .base import Conflict, Dialect, Q, Store, StoreError, Tx, now_ms

T = TypeVar("T")

log = logging.getLogger(__name__)

_DEADLOCK = (1213, 1205)  # deadlock, lock wait timeout
_PINNED: set[asyncio.Task] = set()  # tasks inside MysqlStore.run (see there)
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

    def __init__(self, db: DatabaseSettings, replicas: Sequence[ReplicaSettings] = ()) -> None:
        self.settings = db
        self.replica_settings = tuple(replicas)
        self._pool: aiomysql.Pool | None = None
        self.replicas: list[Replica] = []
        self._rr = 0
        self._last_write: dict[int, float] = {}
        self._beat: asyncio.Task | None = None
        self.process_key = os.urandom(6).hex()
        self.reads = {"primary": 0, "replica": 0}
        self.max_lag = db.max_replica_lag_seconds

    def _pool_kw(
        self, host: str, port: int, socket: str, user: str, password: str, name: str, size: int
    ) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            user=user,
            password=password,
            db=name,
            autocommit=False,
            charset="utf8mb4",
            minsize=1,
            maxsize=size,
            connect_timeout=self.settings.connect_timeout,
            pool_recycle=3600,
            # deferred writes go as one multi-statement query (see _run_once)
            client_flag=CLIENT.MULTI_STATEMENTS,
        )
        if socket:
            kw["unix_socket"] = socket
        else:
            kw["host"] = host
            kw["port"] = port
        return kw

    async def connect(self) -> None:
        db = self.settings
        kw = self._pool_kw(
            db.host, db.port, db.unix_socket, db.user, db.password, db.name, db.pool_size
        )
        try:
            self._pool = await aiomysql.create_pool(**kw)
        except (pymysql.err.MySQLError, OSError) as e:
            raise StoreError(f"cannot connect to MariaDB at {db.host}:{db.port}: {e}")
        for r in self.replica_settings:
            rkw = self._pool_kw(
                r.host,
                r.port,
                r.unix_socket,
                r.user or db.user,
                r.password or db.password,
                r.database or db.name,
                db.pool_size,
            )
            self.replicas.append(Replica(f"{r.host}:{r.port}/{r.database or db.name}", rkw))
        if self.replicas:
            self._beat = asyncio.get_running_loop().create_task(self._heartbeat())

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            try:
                await self._beat
            except (asyncio.CancelledError, Exception):
                pass
            self._beat = None
        for rep in self.replicas:
            await rep.close()
        self.replicas = []
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None

    # ---- read/write split ----------------------------------------------------------------
    def wrote(self, user: int) -> None:
        if self.replicas:
            self._last_write[user] = time.monotonic()
            if len(self._last_write) > 200_000:
                cut = time.monotonic() - self._ryw_window()
                self._last_write = {u: t for u, t in self._last_write.items() if t > cut}

    def _ryw_window(self) -> float:
        lag = max((r.lag for r in self.replicas if r.healthy), default=0.0)
        return max(self.settings.read_your_writes_seconds, lag + 0.5)

    def _pick(self, reader: int) -> Replica | None:
        t = self._last_write.get(reader)
        if t is not None and time.monotonic() - t < self._ryw_window():
            return None
        healthy = [r for r in self.replicas if r.healthy and r.pool is not None]
        if not healthy:
            return None
        self._rr += 1
        return healthy[self._rr % len(healthy)]

    async def _heartbeat(self) -> None:
        """Write this process's heartbeat on the primary; measure each replica's lag from it."""
        key = self.process_key
        created = False
        while True:
            try:
                if not created:
                    await self.execute_script(
                        [
                            "CREATE TABLE IF NOT EXISTS berrychat_heartbeat (id VARCHAR(32) "
                            "PRIMARY KEY, ts BIGINT NOT NULL) ENGINE=InnoDB"
                        ]
                    )
                    created = True

                def beat(d: Dialect, ts: int) -> Tx[None]:
                    yield Q("REPLACE INTO berrychat_heartbeat (id, ts) VALUES (?, ?)", (key, ts))

                await self.run(beat, now_ms())
            except Exception as e:
                log.warning("replica heartbeat write failed: %s", e)
            for rep in self.replicas:
                await rep.probe(key, self.max_lag)
            await asyncio.sleep(0.5)

    async def run(
        self, fn: Callable[..., Tx[T]], *args: Any, write: bool = True, reader: int | None = None
    ) -> T:
        if self._pool is None:
            raise StoreError("store is closed")
        # The event loop holds tasks only weakly. While the pool opens a new connection for
        # this task, that connection (and the stream reader whose future the task waits on)
        # is referenced from nowhere but the task itself, so a task nobody keeps (a WebSocket
        # `hello`) was garbage-collected mid-connect ("Task was destroyed but it is pending",
        # the hello never answered, the pool one connection short for good). Pin it meanwhile.
        task = asyncio.current_task()
        if task is None or task in _PINNED:
            return await self._run(fn, args, write, reader)
        _PINNED.add(task)
        try:
            return await self._run(fn, args, write, reader)
        finally:
            _PINNED.discard(task)

    async def _run(
        self, fn: Callable[..., Tx[T]], args: tuple, write: bool, reader: int | None
    ) -> T:
        if not write and reader is not None and self.replicas:
            rep = self._pick(reader)
            if rep is not None:
                try:
                    res = await self._run_on(rep.pool, fn, args)
                    self.reads["replica"] += 1
                    return res
                except (TimeoutError, pymysql.err.MySQLError, OSError) as e:
                    rep.fail(e)  # fall back to the primary
            self.reads["primary"] += 1
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

    async def _run_on(self, pool: Any, fn: Callable[..., Tx[T]], args: tuple) -> T:
        t0 = time.perf_counter()
        try:
            return await self._run_once(fn, args, pool)
        finally:
            if self.observe is not None:
                self.observe(time.perf_counter() - t0)

    async def _run_once(self, fn: Callable[..., Tx[T]], args: tuple, pool: Any = None) -> T:
        pool = pool or self._pool
        assert pool is not None
        async with pool.acquire() as conn:
            gen = fn(self.dialect, *args)
            try:
                async with conn.cursor() as cur:
                    # Statements whose result nobody reads (fetch "none", single row) are held
                    # back and sent together, one round trip, before the next statement that
                    # returns something and before COMMIT: the same statements in the same
                    # order in the same transaction. A group commit's per-conversation UPDATEs
                    # cost one round trip instead of one each.
                    deferred: list[str] = []
                    try:
                        q = next(gen)
                        while True:
                            if q.fetch == "none" and not q.many:
                                deferred.append(cur.mogrify(_convert(q.sql), tuple(q.params)))
                                q = gen.send(None)
                                continue
                            if deferred:
                                await _flush(cur, deferred)
                            q = gen.send(await self._exec(cur, q))
                    except StopIteration as stop:
                        if deferred:
                            await _flush(cur, deferred)
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


async def _flush(cur: aiomysql.Cursor, deferred: list[str], chunk: int = 200) -> None:
    """Send held-back statements as multi-statement queries and read every result."""
    for i in range(0, len(deferred), chunk):
        await cur.execute(";\n".join(deferred[i : i + chunk]))
        while await cur.nextset():
            pass
    deferred.clear()


class Replica:
    """One read replica: its pool (opened lazily, reopened after failures) and measured lag."""

    def __init__(self, name: str, kw: dict[str, Any]) -> None:
        self.name = name
        self.kw = kw
        self.pool: aiomysql.Pool | None = None
        self.lag = float("inf")
        self.healthy = False
        self._retry_at = 0.0

    async def probe(self, key: str, max_lag: float) -> None:
        now = time.monotonic()
        if self.pool is None:
            if now < self._retry_at:
                return
            try:
                self.pool = await aiomysql.create_pool(**self.kw)
            except (pymysql.err.MySQLError, OSError) as e:
                self.fail(e)
                return
        try:
            async with self.pool.acquire() as conn:
                async with conn.cursor() as cur:
                    await cur.execute("SELECT ts FROM berrychat_heartbeat WHERE id=%s", (key,))
                    row = await cur.fetchone()
                await conn.rollback()  # do not keep a snapshot open
        except (TimeoutError, pymysql.err.MySQLError, OSError) as e:
            self.fail(e)
            return
        self.lag = float("inf") if row is None else max(0.0, (now_ms() - row[0]) / 1000.0)
        was = self.healthy
        self.healthy = self.lag <= max_lag
        if was != self.healthy:
            log.warning(
                "replica %s %s (lag %.1fs)",
                self.name,
                "in use" if self.healthy else "skipped",
                self.lag,
            )

    def fail(self, e: Exception) -> None:
        if self.healthy:
            log.warning("replica %s failed, reads go to the primary: %s", self.name, e)
        self.healthy = False
        self._retry_at = time.monotonic() + 2.0
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            await self.pool.wait_closed()
            self.pool = None
