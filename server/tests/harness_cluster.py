"""A real BerryChat cluster on loopback for fault tests: a private MariaDB, a private
redis-server, several `berrychat serve` processes sharing them, and a private nginx (Debian's
binary, generated config in a temporary directory) in front with `least_conn` and WebSocket
proxying. Every component is a real process that a test can kill, restart or reload.

Used by `test_faults.py` (short, in `make test`) and `bench/soak.py` (`make soak`, longer).
Everything listens on 127.0.0.1 only; every wait is bounded by a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from support import (
    INSTALL_DB,
    MARIADBD,
    REDIS_SERVER,
    TEST_AUTH,
    TEST_LIMITS,
    RedisServer,
    mariadbd_command,
    wait_mariadbd,
)

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port: int, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listening on 127.0.0.1:{port} in time")
        time.sleep(0.05)


def http_get(port: int, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (histogram buckets dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "_bucket{" in line:
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def _stop(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, wait: float = 20
) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class RestartableMariaDB:
    """A private mariadbd whose datadir survives restarts (support.MariaDB deletes its own)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "mariadb"
        self.dir.mkdir()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        assert INSTALL_DB
        r = subprocess.run(
            [
                INSTALL_DB,
                "--no-defaults",
                f"--datadir={self.dir / 'data'}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            capture_output=True,
            timeout=180,
        )
        if r.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {r.stderr.decode()[-500:]}")

    def start(self, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(
            # durable commits: an acknowledged message must survive the restart
            mariadbd_command(self.dir, self.port, durable=True),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_mariadbd(self.port, self.proc, self.dir / "error.log", timeout=timeout, interval=0.1)

    def create_database(self, name: str) -> None:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root")
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        finally:
            conn.close()

    def query(self, sql: str, db: str) -> list[tuple[Any, ...]]:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", database=db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM, 60)
        self.proc = None


class ServeProcess:
    """One `python -m berrychat serve --config FILE` with its own log file."""

    def __init__(self, root: Path, index: int, cfg: dict[str, Any]) -> None:
        self.index = index
        self.port = free_port()
        self.config = root / f"server{index}.json"
        self.log = root / f"server{index}.log"
        cfg = json.loads(json.dumps(cfg))
        cfg["server"] = {"host": "127.0.0.1", "port": self.port}
        self.config.write_text(json.dumps(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "berrychat", "serve", "--config", str(self.config)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("BERRYCHAT_")},
                cwd=self.config.parent,  # nothing lands in the caller's working directory
            )
        deadline = time.monotonic() + timeout
        wait_tcp(self.port, deadline, self.proc)
        while http_get(self.port, "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {self.index} not ready: {self.log_text()[-800:]}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM, 20)

    def metrics(self) -> dict[str, float]:
        if not self.alive():
            return {}
        try:
            st, body = http_get(self.port, "/metrics")
        except OSError:
            return {}
        return parse_metrics(body.decode()) if st == 200 else {}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Nginx:
    """Debian's nginx with a generated config: least_conn over the serve processes."""

    def __init__(self, root: Path, upstream_ports: list[int]) -> None:
        self.dir = root / "nginx"
        self.dir.mkdir()
        self.port = free_port()
        self.conf = self.dir / "nginx.conf"
        self.error_log = self.dir / "error.log"
        self.access_log = self.dir / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None
        servers = "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstream_ports
        )
        user = "user root;" if os.geteuid() == 0 else ""
        d = self.dir
        self.conf.write_text(f"""{user}
worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {self.error_log} notice;
worker_shutdown_timeout 2s;
events {{ worker_connections 1024; }}
http {{
    access_log {self.access_log};
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream berrychat {{
        least_conn;
{servers}
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location = /nginx_status {{ stub_status; }}
        location / {{
            proxy_pass http://berrychat;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_read_timeout 300s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
""")

    def start(self, timeout: float = 15) -> None:
        assert NGINX
        r = subprocess.run(
            [NGINX, "-t", "-c", str(self.conf), "-p", str(self.dir)],
            capture_output=True,
            timeout=30,
        )
        if r.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {r.stderr.decode()[-800:]}")
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(self.conf), "-p", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_tcp(self.port, time.monotonic() + timeout, self.proc)

    def reload(self) -> None:
        """SIGHUP: new workers take new connections; old ones finish (worker_shutdown_timeout
        2 s cuts the long-lived WebSockets they still hold)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM, 20)
        self.proc = None

    def status(self) -> dict[str, int]:
        st, body = http_get(self.port, "/nginx_status")
        nums = [int(x) for x in re.findall(rb"\d+", body)]
        # Active connections: N / accepts handled requests / Reading Writing Waiting
        return {"active": nums[0], "accepts": nums[1], "handled": nums[2], "requests": nums[3]}

    def error_text(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""


class Cluster:
    """MariaDB + Redis + `n` serve processes + nginx, all private, all on loopback."""

    def __init__(
        self, n_servers: int = 3, root: Path | None = None, uploads_limit_bytes: int = 0
    ) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="berrychat-cluster-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.n = n_servers
        self.mariadb = RestartableMariaDB(self.root)
        self.redis = RedisServer()
        self.dbname = "berrychat_faults"
        self.servers: list[ServeProcess] = []
        self.nginx: Nginx | None = None
        self.uploads_dir = self.root / "uploads"
        self.uploads_limit = uploads_limit_bytes
        self.uploads_mounted = False

    @staticmethod
    def available() -> str | None:
        """None when every binary is there, else what is missing."""
        missing = [
            name
            for name, path in (
                ("mariadbd", MARIADBD),
                ("mariadb-install-db", INSTALL_DB),
                ("redis-server", REDIS_SERVER),
                ("nginx", NGINX),
            )
            if not path
        ]
        return ", ".join(missing) or None

    def config(self) -> dict[str, Any]:
        return {
            "database": {
                "type": "mysql",
                "host": "127.0.0.1",
                "port": self.mariadb.port,
                "user": "root",
                "password": "",
                "database": self.dbname,
                "pool_size": 4,
                "connect_timeout": 2.0,
            },
            "redis": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": self.redis.port,
                "socket_timeout": 2.0,
            },
            "auth": {**TEST_AUTH, "session_audit_seconds": 5},
            "limits": dict(TEST_LIMITS),
            "presence": {"throttle_seconds": 1},
            "uploads": {"dir": str(self.uploads_dir)},
        }

    def _mount_uploads(self) -> None:
        """A size-limited tmpfs as the uploads directory, so that a test can fill it (needs
        root and mount permission; without them the uploads fault is skipped)."""
        self.uploads_dir.mkdir(exist_ok=True)
        if not self.uploads_limit or os.geteuid() != 0:
            return
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.uploads_limit},mode=0750", "tmpfs"]
            + [str(self.uploads_dir)],
            capture_output=True,
            timeout=30,
        )
        self.uploads_mounted = r.returncode == 0

    def start(self) -> None:
        self._mount_uploads()
        self.mariadb.install()
        self.mariadb.start()
        self.mariadb.create_database(self.dbname)
        self.redis.start()
        cfg = self.config()
        self.servers = [ServeProcess(self.root, i, cfg) for i in range(self.n)]
        for s in self.servers:  # one after the other: the first one migrates
            s.start()
        self.nginx = Nginx(self.root, [s.port for s in self.servers])
        self.nginx.start()

    @property
    def port(self) -> int:
        assert self.nginx is not None
        return self.nginx.port

    # ---- faults ----------------------------------------------------------------------------
    def kill9_server(self, i: int) -> None:
        self.servers[i].kill9()

    def restart_server(self, i: int) -> None:
        self.servers[i].start()

    def restart_redis(self, down_seconds: float = 1.0) -> None:
        _stop(self.redis.proc, signal.SIGTERM, 10)
        time.sleep(down_seconds)
        self.redis.start()

    def restart_mariadb(self, down_seconds: float = 1.0) -> None:
        self.mariadb.stop()
        time.sleep(down_seconds)
        self.mariadb.start()

    def reload_nginx(self) -> None:
        assert self.nginx is not None
        self.nginx.reload()

    def restart_nginx(self, down_seconds: float = 1.0) -> None:
        assert self.nginx is not None
        self.nginx.stop()
        time.sleep(down_seconds)
        self.nginx.start()

    # ---- observation -----------------------------------------------------------------------
    def metrics_sum(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for s in self.servers:
            for k, v in s.metrics().items():
                total[k] = total.get(k, 0) + v
        return total

    def log_lines(self) -> dict[str, int]:
        """Line counts of every log, to find what a fault added."""
        out = {f"server{s.index}": len(s.log_text().splitlines()) for s in self.servers}
        if self.nginx is not None:
            out["nginx"] = len(self.nginx.error_text().splitlines())
        redis_log = self.redis.dir / "redis.log"
        out["redis"] = (
            len(redis_log.read_text(errors="replace").splitlines()) if redis_log.exists() else 0
        )
        err = self.mariadb.dir / "error.log"
        out["mariadb"] = len(err.read_text(errors="replace").splitlines()) if err.exists() else 0
        return out

    def log_text(self, name: str) -> str:
        if name.startswith("server"):
            return self.servers[int(name[6:])].log_text()
        if name == "nginx":
            return self.nginx.error_text() if self.nginx else ""
        p = self.redis.dir / "redis.log" if name == "redis" else self.mariadb.dir / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stored_stream(self) -> list[tuple[int, int, int, str]]:
        """(conversation, seq, sender, cid) of every stored event, straight from MariaDB."""
        rows = self.mariadb.query(
            "SELECT conversation_id, seq, sender_id, cid FROM messages ORDER BY 1, 2", self.dbname
        )
        return [(int(a), int(b), int(c), str(d or "")) for a, b, c, d in rows]

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for s in self.servers:
            s.stop()
        self.redis.stop()
        self.mariadb.stop()
        if self.uploads_mounted:
            subprocess.run(["umount", str(self.uploads_dir)], capture_output=True, timeout=30)
            self.uploads_mounted = False

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
