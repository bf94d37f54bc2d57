"""MariaDB read/write split. The "replica" is a second database on the private MariaDB that the
test feeds by copying the primary's tables when it wants (a replica that lags exactly as much as
the test decides); the heartbeat row is copied with them, so the server measures that lag the
same way it measures real replication lag."""

from __future__ import annotations

import asyncio
from typing import Any

from support import PASSWORD, World, make_settings

from berrychat.client import login
from berrychat.server import Server
from berrychat.store.mysql import MysqlStore

TABLES = ("users", "sessions", "conversations", "members", "messages", "reactions")


def _feed(port: int, primary: str, replica: str) -> None:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True)
    try:
        with conn.cursor() as cur:
            for t in (*TABLES, "berrychat_heartbeat"):
                cur.execute(f"DELETE FROM {replica}.{t}")
                cur.execute(f"INSERT INTO {replica}.{t} SELECT * FROM {primary}.{t}")
    finally:
        conn.close()


async def _until(pred, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


def _db(m: Any, name: str) -> dict[str, Any]:
    return {
        "type": "mysql",
        "host": "127.0.0.1",
        "port": m.port,
        "user": "root",
        "password": "",
        "database": name,
        "pool_size": 4,
        "read_your_writes_seconds": 0.2,
        "max_replica_lag_seconds": 60,
    }


async def test_reads_from_a_lagging_replica_with_read_your_writes(mariadb):
    primary, replica = mariadb.new_database(), mariadb.new_database()
    s = make_settings(
        _db(mariadb, primary),
        replicas=[{"host": "127.0.0.1", "port": mariadb.port, "database": replica}],
    )
    rs = MysqlStore(make_settings(_db(mariadb, replica)).database)
    await rs.connect()
    await rs.migrate()
    await rs.execute_script(
        [
            "CREATE TABLE IF NOT EXISTS berrychat_heartbeat (id VARCHAR(32) PRIMARY KEY, "
            "ts BIGINT NOT NULL) ENGINE=InnoDB"
        ]
    )
    await rs.close()
    srv = Server(s)
    await srv.start()
    w = World(srv)
    store = srv.store
    assert isinstance(store, MysqlStore) and len(store.replicas) == 1
    rep = store.replicas[0]
    feed = lambda: asyncio.to_thread(_feed, mariadb.port, primary, replica)  # noqa: E731
    try:
        _, _, ca = await w.user("ann")
        _, _, cb = await w.user("bob")
        conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
        await ca.send_text(conv, "one")
        await asyncio.sleep(2.0)  # let everyone's read-your-writes window pass
        await _until(lambda: store._heartbeat is not None)
        await asyncio.sleep(0.6)  # the heartbeat table exists on the primary now
        await feed()
        await _until(lambda: rep.healthy)
        # ann writes; the replica does not have it yet
        await ca.send_text(conv, "two")
        before = dict(store.reads)
        # the writer reads its own write (primary) ...
        mine = [m["text"] for m in (await ca.history(conv))["messages"] if m["kind"] == "text"]
        assert mine == ["one", "two"]
        # ... another user is served by the lagging replica (stale, but consistent)
        theirs = [m["text"] for m in (await cb.history(conv))["messages"] if m["kind"] == "text"]
        assert theirs == ["one"]
        assert store.reads["replica"] == before["replica"] + 1
        assert store.reads["primary"] == before["primary"] + 1
        listing = (await cb.request("conv.list"))["conversations"]
        assert listing[0]["last_seq"] == 2  # the replica's view
        # the replica falls further behind than allowed: everyone reads the primary
        store.max_lag = 0.5
        await _until(lambda: not rep.healthy)
        theirs = [m["text"] for m in (await cb.history(conv))["messages"] if m["kind"] == "text"]
        assert theirs == ["one", "two"]
        # it catches up: back in use
        store.max_lag = 60
        await feed()
        await _until(lambda: rep.healthy and rep.lag < 5)
        n = store.reads["replica"]
        theirs = [m["text"] for m in (await cb.history(conv))["messages"] if m["kind"] == "text"]
        assert theirs == ["one", "two"] and store.reads["replica"] == n + 1
    finally:
        await w.close()
        await srv.stop(drain_seconds=0.2)


async def test_unreachable_replica_is_skipped(mariadb):
    s = make_settings(
        _db(mariadb, mariadb.new_database()), replicas=[{"host": "127.0.0.1", "port": 1}]
    )
    srv = Server(s)
    await srv.start()
    w = World(srv)
    try:
        _, _, ca = await w.user("ann")
        await w.user("bob", connect=False)
        conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
        await ca.send_text(conv, "hi")
        c = await w.connect((await login(w.host, w.port, "bob", PASSWORD, "d9"))["token"])
        await asyncio.sleep(0.6)
        texts = [m["text"] for m in (await c.history(conv))["messages"] if m["kind"] == "text"]
        assert texts == ["hi"]
        assert not srv.store.replicas[0].healthy
    finally:
        await w.close()
        await srv.stop(drain_seconds=0.2)
