"""Accounts: register, login, logout, password change, one session per device, expiry,
revocation, disabled accounts, admin role, argon2id."""

import asyncio
import time

import pytest
from support import PASSWORD, make_settings, start_world

from berrychat.client import Client, ClientError, ConnectionClosed, http_json, login, register
from berrychat.protocol import codes


async def test_register_login_me(world):
    h, p = world.host, world.port
    u = await register(h, p, "Ann.Smith", PASSWORD, display_name="Ann 🌸")
    assert u["username"] == "ann.smith" and u["display_name"] == "Ann 🌸" and u["role"] == "user"
    s = await login(h, p, "ANN.SMITH", PASSWORD, "phone")
    assert s["user"]["id"] == u["id"] and s["device_id"] == "phone" and len(s["token"]) >= 40
    status, me = await http_json(h, p, "GET", "/api/v1/me", token=s["token"])
    assert status == 200 and me["user"]["username"] == "ann.smith"
    # password is stored as argon2id
    row = await world.server.store.get_user(u["id"])
    assert row["password_hash"].startswith("$argon2id$")


async def test_register_rejects(world):
    h, p = world.host, world.port
    await register(h, p, "bob", PASSWORD)
    for body, code in [
        ({"username": "bob", "password": PASSWORD}, "user_exists"),
        ({"username": "x", "password": PASSWORD}, "bad_field"),
        ({"username": "bad name", "password": PASSWORD}, "bad_field"),
        ({"username": "carol", "password": "short"}, "weak_password"),
        ({"username": "carol", "password": 12345678}, "weak_password"),
        ({"username": 5, "password": PASSWORD}, "bad_field"),
    ]:
        status, r = await http_json(h, p, "POST", "/api/v1/register", body)
        assert r["error"]["code"] == code, body
        assert status in (400, 409)
    status, r = await http_json(h, p, "POST", "/api/v1/register", raw_body=b"{not json")
    assert status == 400


async def test_login_failures_do_not_reveal_users(world):
    h, p = world.host, world.port
    await register(h, p, "dave", PASSWORD)
    s1, r1 = await http_json(
        h, p, "POST", "/api/v1/login", {"username": "dave", "password": "wrongwrong"}
    )
    s2, r2 = await http_json(
        h, p, "POST", "/api/v1/login", {"username": "nobody", "password": "wrongwrong"}
    )
    assert s1 == s2 == 401 and r1 == r2
    s3, r3 = await http_json(
        h,
        p,
        "POST",
        "/api/v1/login",
        {"username": "dave", "password": PASSWORD, "device_id": "bad id!"},
    )
    assert s3 == 400


async def test_bad_token_rejected_and_closed(world):
    c = await Client.connect(world.host, world.port)
    with pytest.raises(ClientError) as e:
        await c.hello("not-a-real-token-at-all")
    assert e.value.code == "auth_failed"
    code, _ = await c.wait_closed()
    assert code == codes.CLOSE_AUTH
    status, _ = await http_json(world.host, world.port, "GET", "/api/v1/me", token="nope-nope-nope")
    assert status == 401
    status, _ = await http_json(world.host, world.port, "GET", "/api/v1/me")
    assert status == 401


async def test_logout_revokes_and_closes(world):
    _, token, c = await world.user("erin")
    status, _ = await http_json(world.host, world.port, "POST", "/api/v1/logout", token=token)
    assert status == 200
    code, _ = await c.wait_closed()
    assert code == codes.CLOSE_AUTH
    status, _ = await http_json(world.host, world.port, "GET", "/api/v1/me", token=token)
    assert status == 401


async def test_one_session_per_device(world):
    _, t1, c1 = await world.user("fay", device="laptop")
    other = await login(world.host, world.port, "fay", PASSWORD, "phone")
    c_phone = await world.connect(other["token"])
    t2 = (await login(world.host, world.port, "fay", PASSWORD, "laptop"))["token"]
    code, _ = await c1.wait_closed()
    assert code == codes.CLOSE_REPLACED
    assert (await http_json(world.host, world.port, "GET", "/api/v1/me", token=t1))[0] == 401
    assert (await http_json(world.host, world.port, "GET", "/api/v1/me", token=t2))[0] == 200
    # the phone session is untouched
    assert (await c_phone.request("ping"))["type"] == "ack"


async def test_change_password_revokes_other_sessions(world):
    _, t1, c1 = await world.user("gus", device="a")
    t2 = (await login(world.host, world.port, "gus", PASSWORD, "b"))["token"]
    c2 = await world.connect(t2)
    st, r = await http_json(
        world.host,
        world.port,
        "POST",
        "/api/v1/password",
        {"old_password": "wrong-password", "new_password": "new password 1"},
        token=t1,
    )
    assert st == 401
    st, r = await http_json(
        world.host,
        world.port,
        "POST",
        "/api/v1/password",
        {"old_password": PASSWORD, "new_password": "new password 1"},
        token=t1,
    )
    assert st == 200 and r["revoked_sessions"] == 1
    code, _ = await c2.wait_closed()
    assert code == codes.CLOSE_AUTH
    assert (await c1.request("ping"))["type"] == "ack"
    with pytest.raises(ClientError):
        await login(world.host, world.port, "gus", PASSWORD)
    await login(world.host, world.port, "gus", "new password 1")


async def test_token_expiry(sqlite_db):
    w = await start_world(make_settings(sqlite_db, auth={"token_ttl_seconds": 60}))
    try:
        await register(w.host, w.port, "hal", PASSWORD)
        s = await login(w.host, w.port, "hal", PASSWORD)
        # expire it in the database (no sleeping for a minute)
        from berrychat.chat.accounts import token_hash

        async def expire(store):
            def tx(d):
                from berrychat.store.base import Q

                yield Q(
                    "UPDATE sessions SET expires_at=? WHERE token_hash=?",
                    (int(time.time() * 1000) - 1, token_hash(s["token"])),
                )

            await store.run(tx)

        await expire(w.server.store)
        c = await Client.connect(w.host, w.port)
        with pytest.raises(ClientError):
            await c.hello(s["token"])
        assert (await c.wait_closed())[0] == codes.CLOSE_AUTH
    finally:
        await w.server.stop(drain_seconds=0.2)


async def test_disabled_account_and_admin_api(world):
    h, p = world.host, world.port
    admin, admin_token, _ = await world.user("root1", connect=False)
    await world.server.store.set_role(admin["id"], "admin")
    admin_token = (await login(h, p, "root1", PASSWORD))["token"]
    _, user_token, c = await world.user("ivy")
    st, r = await http_json(h, p, "POST", "/api/v1/admin/users/root1/disable", token=user_token)
    assert st == 403 and r["error"]["code"] == "forbidden"
    st, r = await http_json(h, p, "POST", "/api/v1/admin/users/ivy/disable", token=admin_token)
    assert st == 200 and r["disabled"]
    code, _ = await c.wait_closed()
    assert code == codes.CLOSE_DISABLED
    st, r = await http_json(
        h, p, "POST", "/api/v1/login", {"username": "ivy", "password": PASSWORD}
    )
    assert st == 403 and r["error"]["code"] == "account_disabled"
    st, r = await http_json(h, p, "POST", "/api/v1/admin/users/ivy/enable", token=admin_token)
    assert st == 200
    await login(h, p, "ivy", PASSWORD)


async def test_registration_can_be_closed(sqlite_db):
    w = await start_world(make_settings(sqlite_db, auth={"open_registration": False}))
    try:
        st, r = await http_json(
            w.host, w.port, "POST", "/api/v1/register", {"username": "jo", "password": PASSWORD}
        )
        assert st == 403 and r["error"]["code"] == "registration_closed"
        # an administrator (made with the CLI) creates accounts instead
        from berrychat.chat.accounts import Accounts

        await Accounts(w.server.settings.auth, w.server.store).register(
            "boss", PASSWORD, role="admin"
        )
        admin = (await login(w.host, w.port, "boss", PASSWORD))["token"]
        body = {"username": "joe", "password": PASSWORD, "role": "user"}
        st, r = await http_json(w.host, w.port, "POST", "/api/v1/admin/users", body, token=admin)
        assert st == 201 and r["user"]["username"] == "joe"
        joe = (await login(w.host, w.port, "joe", PASSWORD))["token"]
        st, r = await http_json(
            w.host,
            w.port,
            "POST",
            "/api/v1/admin/users",
            {"username": "sly", "password": PASSWORD},
            token=joe,
        )
        assert st == 403
    finally:
        await w.server.stop(drain_seconds=0.2)


async def test_hello_version_mismatch(world):
    _, token, _ = await world.user("kim", connect=False)
    c = await Client.connect(world.host, world.port)
    with pytest.raises(ClientError):
        await c.hello(token, v=99)
    assert (await c.wait_closed())[0] == codes.CLOSE_UNSUPPORTED_VERSION


async def test_token_in_url(world):
    _, token, _ = await world.user("lea", connect=False)
    c = await Client.connect_url_token(world.host, world.port, token)
    # the welcome arrives as an ack without an id
    ev = await c.next_event("ack")
    assert ev["re"] == "hello" and ev["user"]["username"] == "lea"
    assert (await c.request("ping"))["type"] == "ack"
    c.abort()


async def test_connection_cap_per_user(sqlite_db):
    w = await start_world(make_settings(sqlite_db, limits={"max_connections_per_user": 2}))
    try:
        _, token, c1 = await w.user("max")
        await w.connect(token)
        c3 = await Client.connect(w.host, w.port)
        with pytest.raises((ClientError, ConnectionClosed)):
            await c3.hello(token)
        assert (await c3.wait_closed())[0] == codes.CLOSE_TOO_MANY
        assert (await c1.request("ping"))["type"] == "ack"
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)


async def test_hashing_runs_off_the_loop(sqlite_db):
    """argon2 runs in a thread: the loop keeps answering pings during logins."""
    w = await start_world(
        make_settings(sqlite_db, auth={"argon2_time_cost": 2, "argon2_memory_kib": 8192})
    )
    try:
        _, _, c = await w.user("ned")
        logins = [login(w.host, w.port, "ned", PASSWORD, f"d{i}") for i in range(4)]
        t0 = time.monotonic()
        pings = [c.request("ping") for _ in range(5)]
        await asyncio.gather(*logins, *pings)
        assert time.monotonic() - t0 < 10
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)


async def test_revocation_by_cli_reaches_live_connections(sqlite_db, monkeypatch):
    """The CLI changes the database only; the running server's session audit closes the
    affected connections (disabled: 4403, password reset: 4401)."""
    w = await start_world(make_settings(sqlite_db, auth={"session_audit_seconds": 0.1}))
    try:
        _, _, c1 = await w.user("oscar")
        _, _, c2 = await w.user("petra")
        from berrychat.chat.accounts import Accounts

        acc = Accounts(w.server.settings.auth, w.server.store)  # like the CLI: no sink
        await acc.set_disabled("oscar", True)
        await acc.reset_password("petra", "brand new password")
        assert (await c1.wait_closed())[0] == codes.CLOSE_DISABLED
        assert (await c2.wait_closed())[0] == codes.CLOSE_AUTH
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)
