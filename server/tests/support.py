"""Test support: a private MariaDB, settings for tests, a running server with helpers.

MariaDB: a private `mariadbd` (Debian's mariadb-server) is started once per test session in a
temporary datadir on a free loopback port and stopped at the end; each test gets its own
database. When `mariadbd` is not installed the MariaDB variants are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from berrychat import config
from berrychat.client import Client, login, register
from berrychat.server import Server

MARIADBD = shutil.which("mariadbd") or (
    "/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None
)
INSTALL_DB = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")

PASSWORD = "correct horse battery"
_db_counter = itertools.count(1)


# The design document's config.json example (mysql on localhost, port 8080): what the config
# tests accept exactly and the fuzzer mutates. Shared: do not modify it in a test.
DESIGN_EXAMPLE: dict[str, Any] = {
    "server": {"port": 8080, "host": "0.0.0.0"},
    "database": {
        "type": "mysql",
        "host": "localhost",
        "port": 3306,
        "user": "lanying",
        "password": "password",
        "database": "lanyingim",
    },
}


def write_config(path: Path, content: dict[str, Any] | str | bytes) -> Path:
    """Write a config file for `config.load` / `check-config` and return its path: a dict as
    JSON, a str as UTF-8 text, bytes as they are (broken files included)."""
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_mariadbd(
    port: int, proc: subprocess.Popen[bytes], error_log: Path, timeout: float, interval: float
) -> None:
    """Return once a private mariadbd on 127.0.0.1:port accepts root; raise with the tail of
    its error log if it exits or does not answer within timeout seconds."""
    import pymysql

    deadline = time.monotonic() + timeout
    while True:
        try:
            pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=1).close()
            return
        except pymysql.err.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = error_log.read_text(errors="replace")[-1000:]
                raise RuntimeError(f"mariadbd did not start: {log}")
            time.sleep(interval)


def mariadbd_command(rundir: Path, port: int, *, durable: bool) -> list[str]:
    """The command line of a private mariadbd on 127.0.0.1:port whose datadir, socket, pid file
    and error log are rundir/data, rundir/mysqld.sock, rundir/mysqld.pid and rundir/error.log.

    durable=True writes and flushes the redo log at every commit (innodb-flush-log-at-trx-commit
    =1: an acknowledged write is on disk, what the fault tests' restarts rely on); durable=False
    writes it at commit but flushes it about once a second (=2: it survives a mariadbd crash, not
    an OS crash or power cut; faster, enough for a throw-away database).
    """
    assert MARIADBD
    return [
        MARIADBD,
        "--no-defaults",
        f"--datadir={rundir / 'data'}",
        f"--socket={rundir / 'mysqld.sock'}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        "--user=root",
        "--skip-grant-tables",
        "--skip-name-resolve",
        "--innodb-buffer-pool-size=64M",
        "--innodb-log-file-size=16M",
        f"--innodb-flush-log-at-trx-commit={1 if durable else 2}",
        f"--pid-file={rundir / 'mysqld.pid'}",
        f"--log-error={rundir / 'error.log'}",
    ]


class MariaDB:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="berrychat-mariadb-"))
        self.port = _free_port()
        self.socket = str(self.dir / "mysqld.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        datadir = self.dir / "data"
        r = subprocess.run(
            [
                INSTALL_DB,
                f"--datadir={datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
                "--no-defaults",
            ]
            if INSTALL_DB
            else [],
            capture_output=True,
            timeout=120,
        )
        if r.returncode != 0:
            # older option sets: retry without --no-defaults placement issues
            r = subprocess.run(
                [
                    INSTALL_DB,
                    "--no-defaults",
                    f"--datadir={datadir}",
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                ],
                capture_output=True,
                timeout=120,
            )
            if r.returncode != 0:
                raise RuntimeError(f"mariadb-install-db failed: {r.stderr.decode()[-500:]}")
        self.proc = subprocess.Popen(
            mariadbd_command(self.dir, self.port, durable=False),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_mariadbd(self.port, self.proc, self.dir / "error.log", timeout=60, interval=0.2)

    def new_database(self) -> str:
        import pymysql

        name = f"bc_test_{os.getpid()}_{next(_db_counter)}"
        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root")
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        finally:
            conn.close()
        return name

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)
_redis_prefix = itertools.count(1)


class RedisServer:
    """A private redis-server (Debian's) on a free loopback port, no persistence."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="berrychat-redis-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")[-1000:]
                raise RuntimeError(f"redis-server did not start: {log}")
            time.sleep(0.1)

    def settings(self, **over: Any) -> dict[str, Any]:
        """A `redis` config section with a fresh key prefix (tests share one server)."""
        return {
            "enabled": True,
            "host": "127.0.0.1",
            "port": self.port,
            "prefix": f"t{os.getpid()}_{next(_redis_prefix)}:",
            **over,
        }

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


# Cheap password hashing and rate limits off unless a test turns one on (tests log in and
# flood from loopback): the config sections every test server starts with.
TEST_AUTH: dict[str, Any] = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 64,
    "argon2_parallelism": 1,
}
TEST_LIMITS: dict[str, Any] = {
    "group_commit_ms": 1,
    "messages_per_user": 0,
    "messages_per_ip": 0,
    "logins_per_user": 0,
    "logins_per_ip": 0,
    "registrations_per_ip": 0,
}


def make_settings(db: dict[str, Any], **over: Any) -> config.Settings:
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "database": db,
        "auth": dict(TEST_AUTH),
        "limits": dict(TEST_LIMITS),
        "presence": {"throttle_seconds": 0},
    }
    return config.from_dict(deep_merge(base, over), env={})


class World:
    """A running server plus helpers to make users and connected clients."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.host = "127.0.0.1"
        self.port = server.port
        self.clients: list[Client] = []
        self._n = itertools.count(1)
        self.updir: Path | None = None  # uploads.dir, set by start_upload_world()

    async def user(
        self, name: str | None = None, *, device: str = "d1", connect: bool = True
    ) -> tuple[dict[str, Any], str, Client | None]:
        name = name or f"user{next(self._n)}"
        try:
            u = await register(self.host, self.port, name, PASSWORD)
        except Exception:
            u = None
        s = await login(self.host, self.port, name, PASSWORD, device)
        u = s["user"] if u is None else u
        c = await self.connect(s["token"]) if connect else None
        return u, s["token"], c

    async def connect(self, token: str) -> Client:
        c = await Client.connect(self.host, self.port, token)
        self.clients.append(c)
        return c

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                c.abort()

    async def stop(self) -> None:
        """Drop the clients and stop the server (half a second to drain)."""
        await self.close()
        await self.server.stop(drain_seconds=0.5)


async def start_world(settings: config.Settings) -> World:
    server = Server(settings)
    await server.start()
    return World(server)


async def start_upload_world(db: dict[str, Any], updir: Path, **uploads: Any) -> World:
    """A running server that keeps attachments in `updir` (also `World.updir`), with more
    `uploads` settings, e.g. max_image_bytes=300_000."""
    w = await start_world(make_settings(db, uploads={"dir": str(updir), **uploads}))
    w.updir = updir
    return w


async def pair(w: World) -> tuple[str, str, Client, Client, int]:
    """Users ann and bob, each connected, and their direct conversation:
    (ann's token, bob's token, ann's client, bob's client, conversation id)."""
    _, ta, ca = await w.user("ann")
    _, tb, cb = await w.user("bob")
    assert ca is not None and cb is not None
    conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
    return ta, tb, ca, cb, conv
