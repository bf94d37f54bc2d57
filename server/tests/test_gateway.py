"""Transport behaviour: heartbeats, slow consumers, encode-once fan-out, write coalescing,
drain, health and readiness."""

import asyncio

import pytest
from support import make_settings, start_world

from berrychat.client import Client, http_json
from berrychat.gateway.connection import Connection
from berrychat.protocol import codes
from berrychat.protocol.frames import encode


async def test_heartbeat_keeps_live_clients_and_drops_dead_ones(sqlite_db):
    w = await start_world(
        make_settings(sqlite_db, heartbeat={"interval_seconds": 0.3, "timeout_seconds": 1.0})
    )
    try:
        _, token, live = await w.user("ann")
        dead = await w.connect(token)
        dead.auto_pong = False
        await asyncio.sleep(2.0)
        assert not live.closed.done()
        code, reason = await dead.wait_closed(timeout=3)
        assert code == codes.CLOSE_HEARTBEAT_TIMEOUT
        assert (await live.request("ping"))["type"] == "ack"
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)


async def test_slow_consumer_is_closed_with_resync_code(sqlite_db):
    w = await start_world(make_settings(sqlite_db, limits={"out_queue_bytes": 262144}))
    try:
        u, _, slow = await w.user("slowpoke")
        _, _, other = await w.user("quick")
        slow.writer.transport.pause_reading()
        conn = w.server.hub.connections(u["id"])[0]
        frame = encode({"type": "test", "pad": "x" * 60000})
        for _ in range(2000):
            if conn.closing:
                break
            conn.send_bytes(frame)
            await asyncio.sleep(0)
        assert conn.closing and w.server.gateway.slow_consumers == 1
        assert u["id"] not in w.server.hub.by_user  # detached at once: no more deliveries
        slow.writer.transport.resume_reading()
        code, _ = await slow.wait_closed(timeout=10)
        assert code == codes.CLOSE_SLOW_CONSUMER
        assert (await other.request("ping"))["type"] == "ack"
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)


async def test_burst_over_queue_limit_in_one_tick(sqlite_db):
    w = await start_world(make_settings(sqlite_db, limits={"out_queue_bytes": 65536}))
    try:
        u, _, c = await w.user("bursty")
        conn = w.server.hub.connections(u["id"])[0]
        frame = encode({"type": "test", "pad": "y" * 10000})
        for _ in range(10):
            conn.send_bytes(frame)
        code, _ = await c.wait_closed()
        assert code == codes.CLOSE_SLOW_CONSUMER
    finally:
        await w.server.stop(drain_seconds=0.2)


async def test_broadcast_is_encoded_once(sworld, monkeypatch):
    owner, _, co = await sworld.user("owner")
    others = [await sworld.user(f"member{i}") for i in range(5)]
    conv = (
        await co.request(
            "conv.create", kind="group", members=[f"member{i}" for i in range(5)], title="g"
        )
    )["conv"]
    await asyncio.sleep(0.1)
    seen: list[tuple[int, bytes]] = []
    orig = Connection.send_bytes

    def spy(self, data, answer=False):
        seen.append((self.user_id, data))
        return orig(self, data, answer)

    monkeypatch.setattr(Connection, "send_bytes", spy)
    await co.send_text(conv, "to everyone")
    for _, _, c in others:
        await c.next_event("msg", pred=lambda e: e.get("text") == "to everyone")
    pushes = [d for _, d in seen if b"to everyone" in d]
    assert len(pushes) == 6  # five members and the sender
    assert all(p is pushes[0] for p in pushes)  # the very same bytes object


async def test_frames_to_one_connection_are_coalesced_into_one_write(sworld):
    u, _, c = await sworld.user("coal")
    conn = sworld.server.hub.connections(u["id"])[0]
    gw = sworld.server.gateway
    await asyncio.sleep(0.05)
    before = gw.writes
    for i in range(50):
        conn.send_bytes(encode({"type": "test", "n": i}))
    await asyncio.sleep(0.1)
    assert gw.writes - before == 1
    got = [await c.next_event("test") for _ in range(50)]
    assert [g["n"] for g in got] == list(range(50))


async def test_drain_tells_clients_to_reconnect_elsewhere(sqlite_db):
    w = await start_world(make_settings(sqlite_db))
    _, _, c1 = await w.user("dr1")
    _, _, c2 = await w.user("dr2")
    await w.server.stop(drain_seconds=1)
    for c in (c1, c2):
        code, _ = await c.wait_closed()
        assert code == codes.CLOSE_GOING_AWAY


async def test_healthz_and_readyz(world):
    st, r = await http_json(world.host, world.port, "GET", "/healthz")
    assert st == 200 and r["status"] == "ok"
    st, r = await http_json(world.host, world.port, "GET", "/readyz")
    assert st == 200 and r["status"] == "ready" and r["schema"]["current"] == r["schema"]["latest"]


async def test_readyz_not_ready_before_migrations_and_when_db_is_gone(sqlite_db):
    s = make_settings(sqlite_db)
    from berrychat.server import Server

    srv = Server(s, migrate=False)
    await srv.start()
    try:
        st, r = await http_json("127.0.0.1", srv.port, "GET", "/readyz")
        assert st == 503 and r["schema"]["current"] == 0 and "migrate" in r["detail"]
        st, _ = await http_json("127.0.0.1", srv.port, "GET", "/healthz")
        assert st == 200
        await srv.store.migrate()
        st, _ = await http_json("127.0.0.1", srv.port, "GET", "/readyz")
        assert st == 200
        await srv.store.close()
        st, r = await http_json("127.0.0.1", srv.port, "GET", "/readyz")
        assert st == 503 and r["database"] == "unreachable"
        await srv.store.connect()
    finally:
        await srv.stop(drain_seconds=0.2)


async def test_keep_alive_http(sworld):
    reader, writer = await asyncio.open_connection(sworld.host, sworld.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while data.count(b"HTTP/1.1 200") < 2:
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk
        data += chunk
    writer.close()


async def test_many_connections_share_one_process(sworld):
    _, token, _ = await sworld.user("crowd", connect=False)
    clients = await asyncio.gather(
        *[Client.connect(sworld.host, sworld.port, token) for _ in range(12)]
    )
    assert sworld.server.hub.total == 12
    for c in clients:
        c.abort()
    for _ in range(100):
        if sworld.server.hub.total == 0:
            break
        await asyncio.sleep(0.02)
    assert sworld.server.hub.total == 0


@pytest.mark.parametrize("path", ["/ws", "/v1/ws"])
async def test_ws_paths(sworld, path):
    _, token, _ = await sworld.user(None, connect=False)
    c = await Client.connect(sworld.host, sworld.port, token, path=path)
    assert c.welcome["v"] == 1
    c.abort()


async def test_broker_sees_local_users_come_and_go(sworld):
    events = []
    b = sworld.server.broker
    b.local_user_added = lambda u: events.append(("+", u))
    b.local_user_removed = lambda u: events.append(("-", u))
    u, token, c1 = await sworld.user("routed")
    c2 = await sworld.connect(token)
    c1.abort()
    c2.abort()
    for _ in range(100):
        if len(events) == 2:
            break
        await asyncio.sleep(0.02)
    assert events == [("+", u["id"]), ("-", u["id"])]


async def test_idle_connections_cost_no_task_and_no_timer(sworld):
    """Only the client side (in this test process) has a task per connection; the server adds
    none for idle connections, and no per-connection timer handles."""
    loop = asyncio.get_running_loop()

    def server_tasks():
        return [
            t for t in asyncio.all_tasks() if not t.get_coro().__qualname__.startswith("Client.")
        ]

    _, token, _ = await sworld.user("idler", connect=False)
    await asyncio.sleep(0.1)
    tasks_before = len(server_tasks())

    def live_timers():
        return [h for h in loop._scheduled if not h.cancelled()]  # noqa: SLF001 - test only

    timers_before = len(live_timers())
    clients = [await Client.connect(sworld.host, sworld.port, token) for _ in range(15)]
    await asyncio.sleep(0.3)
    assert len(server_tasks()) <= tasks_before
    assert len(live_timers()) <= timers_before
    for c in clients:
        c.abort()


async def test_large_answers_are_not_slow_consumers(sqlite_db):
    """A history page larger than the push budget is still delivered."""
    w = await start_world(make_settings(sqlite_db, limits={"out_queue_bytes": 4096}))
    try:
        _, _, ca = await w.user("big1")
        await w.user("big2", connect=False)
        conv = (await ca.request("conv.create", kind="direct", members=["big2"]))["conv"]
        for i in range(8):
            await ca.send_text(conv, f"{i} " + "ü" * 1500)
        page = await ca.history(conv, limit=50)
        assert len(page["messages"]) == 9
        assert not ca.closed.done()
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)
