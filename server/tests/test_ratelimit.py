"""Rate limits per user and per IP (messages, logins, registrations) and the per-user
connection cap; with Redis the counts are shared by every process."""

from __future__ import annotations

import asyncio

import pytest
from support import PASSWORD, World, make_settings, start_world

from berrychat.client import Client, ClientError, ConnectionClosed, http_json, login, register
from berrychat.server import Server


async def test_message_limit_per_user(sqlite_db):
    w = await start_world(
        make_settings(sqlite_db, limits={"messages_per_user": 5, "message_window_seconds": 60})
    )
    try:
        _, _, ca = await w.user("ann")
        await w.user("bob", connect=False)
        conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
        for i in range(5):
            await ca.send_text(conv, f"ok {i}")
        with pytest.raises(ClientError) as e:
            await ca.send_text(conv, "one too many")
        assert e.value.code == "rate_limited" and e.value.retryable
        assert (await ca.request("ping"))["type"] == "ack"  # the connection stays
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)


async def test_login_and_registration_limits_over_http(sqlite_db):
    w = await start_world(
        make_settings(
            sqlite_db,
            limits={"logins_per_user": 3, "logins_per_ip": 100, "registrations_per_ip": 2},
        )
    )
    try:
        await register(w.host, w.port, "ann", PASSWORD)
        await register(w.host, w.port, "bob", PASSWORD)
        st, body = await http_json(
            w.host, w.port, "POST", "/api/v1/register", {"username": "cyd", "password": PASSWORD}
        )
        assert st == 429 and body["error"]["code"] == "rate_limited"
        assert body["error"]["retryable"] is True
        for _ in range(3):
            await login(w.host, w.port, "ANN", PASSWORD)  # names count case-insensitively
        with pytest.raises(ClientError) as e:
            await login(w.host, w.port, "ann", PASSWORD)
        assert e.value.code == "rate_limited"
        await login(w.host, w.port, "bob", PASSWORD)  # another user is not affected
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)


def test_client_address_behind_a_trusted_proxy():
    from berrychat import config
    from berrychat.protocol.http11 import Request
    from berrychat.ratelimit import RateLimits
    from berrychat.shared import LocalState

    def req(h):
        return Request("POST", "/", "/", {}, "HTTP/1.1", h)

    s = config.from_dict({"limits": {"trusted_proxies": "10.0.0.5"}}, env={})
    r = RateLimits(s.limits, LocalState(), None)
    xff = {"x-forwarded-for": "6.6.6.6, 203.0.113.9"}
    assert r.client_ip(req(xff), "127.0.0.1") == "203.0.113.9"  # the hop Nginx added
    assert r.client_ip(req(xff), "10.0.0.5") == "203.0.113.9"
    assert r.client_ip(req(xff), "198.51.100.1") == "198.51.100.1"  # untrusted peer: ignored
    assert r.client_ip(req({"x-real-ip": "203.0.113.7"}), "::1") == "203.0.113.7"
    off = config.from_dict({"limits": {"trust_forwarded_for": False}}, env={})
    assert RateLimits(off.limits, LocalState(), None).client_ip(req(xff), "127.0.0.1") == (
        "127.0.0.1"
    )


async def test_limits_are_shared_through_redis(sqlite_db, redis_server):
    s = make_settings(
        sqlite_db,
        redis=redis_server.settings(),
        limits={
            "messages_per_user": 6,
            "message_window_seconds": 60,
            "max_connections_per_user": 2,
            "logins_per_user": 4,
        },
    )
    one, two = Server(s), Server(s)
    await one.start()
    await two.start()
    w1, w2 = World(one), World(two)
    try:
        _, tok, c1 = await w1.user("ann")  # register + login 1
        await w1.user("bob", connect=False)
        c2 = await w2.connect((await login(w2.host, w2.port, "ann", PASSWORD, "d2"))["token"])
        # the per-user connection cap counts both processes
        with pytest.raises((ClientError, ConnectionClosed)):
            await Client.connect(w2.host, w2.port, tok)
        # logins 3 and 4 on either process, the 5th is refused wherever it goes
        await login(w1.host, w1.port, "ann", PASSWORD, "d3")
        await login(w2.host, w2.port, "ann", PASSWORD, "d4")
        with pytest.raises(ClientError) as e:
            await login(w1.host, w1.port, "ann", PASSWORD, "d5")
        assert e.value.code == "rate_limited"
        conv = (await c1.request("conv.create", kind="direct", members=["bob"]))["conv"]
        ok = refused = 0
        for i in range(6):
            for c in (c1, c2):
                try:
                    await c.send_text(conv, f"m{i}")
                    ok += 1
                except ClientError as e:
                    assert e.code == "rate_limited"
                    refused += 1
            await asyncio.sleep(0.02)  # let the per-tick Redis sums land
        # 12 attempts against a shared limit of 6: unshared counting would accept all 12;
        # shared counting accepts 6 plus at most a little slack per process (per-tick sums)
        assert 6 <= ok <= 10 and refused == 12 - ok
    finally:
        await w1.close()
        await w2.close()
        await one.stop(drain_seconds=0.2)
        await two.stop(drain_seconds=0.2)
