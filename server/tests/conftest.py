"""Shared fixtures: a real server on an ephemeral loopback port, on SQLite and on MariaDB.

MariaDB: a private `mariadbd` (Debian's mariadb-server) is started once per test session in a
temporary datadir on a free loopback port and stopped at the end; each test gets its own
database. When `mariadbd` is not installed the MariaDB variants are skipped with the reason.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support import (
    INSTALL_DB,
    MARIADBD,
    REDIS_SERVER,
    MariaDB,
    RedisServer,
    World,
    make_settings,
    start_world,
)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    if os.environ.get("BERRYCHAT_SKIP_MARIADB"):
        pytest.skip("MariaDB tests disabled by BERRYCHAT_SKIP_MARIADB")
    if not MARIADBD or not INSTALL_DB:
        pytest.skip("mariadbd / mariadb-install-db not installed (Debian package mariadb-server)")
    m = MariaDB()
    try:
        m.start()
    except Exception as e:
        m.stop()
        pytest.skip(f"could not start a private MariaDB: {e}")
    yield m
    m.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if not REDIS_SERVER:
        pytest.skip("redis-server not installed (Debian package redis-server)")
    r = RedisServer()
    try:
        r.start()
    except Exception as e:
        r.stop()
        pytest.skip(f"could not start a private redis-server: {e}")
    yield r
    r.stop()


@pytest.fixture(params=["sqlite", "mariadb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"type": "sqlite", "database": str(tmp_path / "chat.db")}
    m: MariaDB = request.getfixturevalue("mariadb")
    return {
        "type": "mysql",
        "host": "127.0.0.1",
        "port": m.port,
        "user": "root",
        "password": "",
        "database": m.new_database(),
        "pool_size": 4,
    }


@pytest.fixture
def sqlite_db(tmp_path: Path) -> dict[str, Any]:
    return {"type": "sqlite", "database": str(tmp_path / "chat.db")}


@pytest_asyncio.fixture
async def world(backend: dict[str, Any]) -> AsyncIterator[World]:
    w = await start_world(make_settings(backend))
    yield w
    await w.close()
    await w.server.stop(drain_seconds=0.5)


@pytest_asyncio.fixture
async def sworld(sqlite_db: dict[str, Any]) -> AsyncIterator[World]:
    """SQLite only: for transport-level tests where the database does not matter."""
    w = await start_world(make_settings(sqlite_db))
    yield w
    await w.close()
    await w.server.stop(drain_seconds=0.5)
