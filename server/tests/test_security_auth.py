"""Authentication across real processes: two `berrychat serve` processes (separate OS processes,
as on a Pi with two cores) share one SQLite file and one real redis-server.

- Login brute force: the per-user-name and per-IP limits count attempts on both processes
  together; while a name is limited even the right password is refused; other names and other
  addresses are not affected; the session already logged in keeps working.
- Token revocation and expiry: logout, password change and disabling on one process close the
  live connections on the other at once (4401 / 4403) and the token is refused everywhere;
  an expired session is closed by the session audit and refused by hello and HTTP; a Redis
  restart (which forgets the revocation list) does not bring a revoked token back.

test_ratelimit.py and test_redis.py check the same rules with several servers inside one test
process; this file runs them as real processes, through their real command line.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from harness_cluster import ServeProcess
from support import PASSWORD, REDIS_SERVER, RedisServer

from berrychat.client import Client, ClientError, ConnectionClosed, http_json, login, register


@pytest.fixture
def pair(tmp_path: Path):
    if not REDIS_SERVER:
        pytest.skip("redis-server not installed")
    redis = RedisServer()
    redis.start()
    cfg = {
        "database": {"type": "sqlite", "database": str(tmp_path / "chat.db")},
        "redis": redis.settings(),
        "auth": {
            "argon2_time_cost": 1,
            "argon2_memory_kib": 64,
            "session_audit_seconds": 0.5,
        },
        "limits": {
            "logins_per_user": 5,
            "logins_per_ip": 12,
            # fixed windows: a long one, so that the test never straddles a window boundary
            "login_window_seconds": 86400,
            "messages_per_user": 0,
            "messages_per_ip": 0,
            "registrations_per_ip": 0,
        },
        "uploads": {"dir": str(tmp_path / "uploads")},
    }
    procs = [ServeProcess(tmp_path, i, cfg) for i in range(2)]
    try:
        for p in procs:
            p.start()
        yield procs, redis, tmp_path / "chat.db"
    finally:
        for p in procs:
            p.stop()
        redis.stop()


async def _post(port: int, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", "Host: x", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status, _, payload = raw.partition(b"\r\n\r\n")
    return int(status.split(b" ")[1]), json.loads(payload)


async def _login(port: int, user: str, password: str, ip: str = "", device: str = "d") -> int:
    headers = {"X-Forwarded-For": ip} if ip else {}
    st, _ = await _post(
        port,
        "/api/v1/login",
        {"username": user, "password": password, "device_id": device},
        headers,
    )
    return st


def _metric(p: ServeProcess, key: str) -> float:
    return p.metrics().get(key, 0.0)


async def test_login_brute_force_is_limited_across_processes(pair) -> None:
    (a, b), _, _ = pair
    for name in ("ann", "bob", "cyd"):
        await register("127.0.0.1", a.port, name, PASSWORD)
    s = await login("127.0.0.1", a.port, "ann", PASSWORD, "laptop")  # attempt 1 for ann
    live = await Client.connect("127.0.0.1", b.port, s["token"])
    ip = "198.51.100.7"  # the attacker (through the trusted loopback proxy header)
    # 4 more guesses at ann, alternating processes: 5 attempts in all are allowed ...
    got = [await _login((a, b)[i % 2].port, "ann", f"guess{i}", ip) for i in range(4)]
    assert got == [401] * 4
    # ... then every attempt on either process is refused, even with the right password
    assert await _login(a.port, "ANN", "guess9", ip) == 429
    assert await _login(b.port, "ann", PASSWORD, ip) == 429
    assert await _login(a.port, "ann", PASSWORD, "203.0.113.9") == 429  # per name, any address
    # the attacker's address: 6 attempts so far; other names still work from it until 12
    got = [await _login((a, b)[i % 2].port, "bob", f"x{i}", ip) for i in range(4)]
    assert got == [401] * 4
    assert await _login(b.port, "cyd", PASSWORD, ip) == 200  # attempt 11 from this address
    assert await _login(a.port, "cyd", "nope", ip) == 401  # attempt 12
    assert await _login(b.port, "cyd", PASSWORD, ip) == 429  # the address is limited now
    assert await _login(a.port, "bob", PASSWORD, "203.0.113.10") == 200  # other addresses: fine
    # the session logged in before the attack keeps working
    assert (await live.request("ping"))["type"] == "ack"
    st, body = await http_json("127.0.0.1", a.port, "GET", "/api/v1/me", token=s["token"])
    assert st == 200 and body["user"]["username"] == "ann"
    # and the refusals are visible in the metrics of the processes that refused
    refused = sum(
        _metric(p, f'berrychat_rate_limited_total{{limit="{lim}"}}')
        for p in (a, b)
        for lim in ("logins_user", "logins_ip")
    )
    errors = sum(_metric(p, 'berrychat_errors_total{code="rate_limited"}') for p in (a, b))
    assert refused >= 4 and errors >= 4, (refused, errors)
    await live.close()


async def _closed_with(c: Client, timeout: float = 10) -> int | None:
    return (await c.wait_closed(timeout))[0]


async def _refused(port: int, token: str) -> None:
    st, _ = await http_json("127.0.0.1", port, "GET", "/api/v1/me", token=token)
    assert st == 401, st
    c = await Client.connect("127.0.0.1", port)
    with pytest.raises(ClientError) as e:
        await c.hello(token)
    assert e.value.code == "auth_failed"
    assert await _closed_with(c) == 4401


async def test_revocation_and_expiry_across_processes(pair) -> None:
    (a, b), redis, dbfile = pair
    h = "127.0.0.1"
    for name in ("dan", "eve"):
        await register(h, a.port, name, PASSWORD)
    # logout on A closes the same session's connection on B at once; refused on both
    s = await login(h, a.port, "dan", PASSWORD, "phone")
    on_b = await Client.connect(h, b.port, s["token"])
    st, _ = await http_json(h, a.port, "POST", "/api/v1/logout", {}, token=s["token"])
    assert st == 200
    assert await _closed_with(on_b) == 4401
    for p in (a, b):
        await _refused(p.port, s["token"])
    # a password change on B revokes dan's other sessions, connected on A
    s1 = await login(h, a.port, "dan", PASSWORD, "laptop")
    s2 = await login(h, b.port, "dan", PASSWORD, "tablet")
    on_a = await Client.connect(h, a.port, s1["token"])
    st, r = await http_json(
        h,
        b.port,
        "POST",
        "/api/v1/password",
        {"old_password": PASSWORD, "new_password": PASSWORD + "!"},
        token=s2["token"],
    )
    assert st == 200 and r["revoked_sessions"] >= 1
    assert await _closed_with(on_a) == 4401
    await _refused(a.port, s1["token"])
    assert (await http_json(h, a.port, "GET", "/api/v1/me", token=s2["token"]))[0] == 200
    # a Redis restart forgets the revocation list: the database still refuses the tokens
    assert redis.proc is not None
    redis.proc.terminate()  # (RedisServer.stop would also delete its directory)
    redis.proc.wait(timeout=10)
    redis.start()
    await asyncio.sleep(1.0)
    for p in (a, b):
        await _refused(p.port, s["token"])
        await _refused(p.port, s1["token"])
    # expiry: the session ends in the database; both processes' audits close its connections
    s3 = await login(h, b.port, "eve", PASSWORD, "phone")
    conns = [await Client.connect(h, p.port, s3["token"]) for p in (a, b)]
    import sqlite3

    from berrychat.chat.accounts import token_hash

    with sqlite3.connect(dbfile, timeout=10) as db:
        db.execute(
            "UPDATE sessions SET expires_at=? WHERE token_hash=?",
            (int(time.time() * 1000) - 1, token_hash(s3["token"])),
        )
    for c in conns:
        assert await _closed_with(c, timeout=15) == 4401  # audit every 0.5 s
    for p in (a, b):
        await _refused(p.port, s3["token"])
    # disabling (admin API on A) closes the user's connections on B with 4403, refuses login
    s4 = await login(h, a.port, "eve", PASSWORD, "laptop")
    on_b = await Client.connect(h, b.port, s4["token"])
    admin_tok = await _admin_token(a, dbfile)
    st, _ = await http_json(
        h, a.port, "POST", "/api/v1/admin/users/eve/disable", {}, token=admin_tok
    )
    assert st == 200
    assert await _closed_with(on_b) == 4403
    with pytest.raises(ClientError) as e:
        await login(h, b.port, "eve", PASSWORD, "again")
    assert e.value.code == "account_disabled"
    with pytest.raises((ClientError, ConnectionClosed)):
        await Client.connect(h, b.port, s4["token"])


async def _admin_token(p: ServeProcess, dbfile: Path) -> str:
    """An administrator made the operators' way: register, then the CLI-equivalent role change
    straight in the database (what `berrychat user add --admin` writes)."""
    import sqlite3

    await register("127.0.0.1", p.port, "root1", PASSWORD)
    with sqlite3.connect(dbfile, timeout=10) as db:
        db.execute("UPDATE users SET role='admin' WHERE username='root1'")
    return (await login("127.0.0.1", p.port, "root1", PASSWORD, "console"))["token"]
