"""Failure paths: database outages give retryable errors and no duplicates; two server
processes sharing one MariaDB assign gap-free, unique seqs."""

import asyncio

import pytest
from support import PASSWORD, World, make_settings

from berrychat.client import ClientError, login
from berrychat.server import Server


async def test_database_outage_is_retryable_and_resend_is_idempotent(world):
    _, _, ca = await world.user("ann")
    _, _, cb = await world.user("bob")
    conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
    store = world.server.store
    await store.close()
    with pytest.raises(ClientError) as e:
        await ca.send_text(conv, "during outage", cid="retry-me")
    assert e.value.code == "unavailable" and e.value.retryable
    with pytest.raises(ClientError) as e:
        await ca.history(conv)
    assert e.value.code == "unavailable" and e.value.retryable
    assert (await ca.request("ping"))["type"] == "ack"  # the connection survives
    await store.connect()
    first = await ca.send_text(conv, "during outage", cid="retry-me")
    again = await ca.send_text(conv, "during outage", cid="retry-me")
    assert first["seq"] == again["seq"] == 2 and again["dup"]
    texts = [m for m in (await cb.history(conv))["messages"] if m["kind"] == "text"]
    assert len(texts) == 1


async def test_two_processes_share_one_mariadb(mariadb):
    db = {
        "type": "mysql",
        "host": "127.0.0.1",
        "port": mariadb.port,
        "user": "root",
        "password": "",
        "database": mariadb.new_database(),
        "pool_size": 4,
    }
    s = make_settings(db)
    one, two = Server(s), Server(s)
    await one.start()
    await two.start()
    w1, w2 = World(one), World(two)
    try:
        _, _, c1 = await w1.user("ann")
        await w1.user("bob", connect=False)
        tok = (await login(w2.host, w2.port, "ann", PASSWORD, "second"))["token"]
        c2 = await w2.connect(tok)
        conv = (await c1.request("conv.create", kind="direct", members=["bob"]))["conv"]
        sends = [c1.send_text(conv, f"one {i}") for i in range(40)]
        sends += [c2.send_text(conv, f"two {i}") for i in range(40)]
        # the same cid sent to both processes concurrently is stored once
        sends += [c1.send_text(conv, "dup", cid="shared"), c2.send_text(conv, "dup", cid="shared")]
        acks = await asyncio.gather(*sends, return_exceptions=True)
        # a lost race on the unique key is reported as retryable; the resend then dedupes
        for i, a in enumerate(acks):
            if isinstance(a, ClientError):
                assert a.retryable
                acks[i] = await (c1 if i % 2 == 0 else c2).send_text(conv, "dup", cid="shared")
        seqs = sorted({a["seq"] for a in acks})
        assert seqs == list(range(2, 2 + 81))
        h = await c1.history(conv, limit=500)
        assert [m["seq"] for m in h["messages"]] == list(range(1, 83))
    finally:
        await w1.close()
        await w2.close()
        await one.stop(drain_seconds=0.2)
        await two.stop(drain_seconds=0.2)


async def test_drain_loses_no_acknowledged_message(backend):
    s = make_settings(backend, limits={"group_commit_ms": 5})
    server = Server(s)
    await server.start()
    w = World(server)
    _, _, ca = await w.user("ann")
    await w.user("bob", connect=False)
    conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
    acked = []

    async def send(i):
        try:
            acked.append((await ca.send_text(conv, f"m{i}", timeout=5))["seq"])
        except Exception:
            pass  # not acknowledged: the client would resend after reconnecting

    tasks = [asyncio.create_task(send(i)) for i in range(300)]
    await asyncio.sleep(0.02)
    await server.stop(drain_seconds=2)
    await asyncio.gather(*tasks)
    code, _ = await ca.wait_closed()
    assert code == 1001
    again = Server(s)
    await again.start()
    try:
        w2 = World(again)
        tok = (await login(w2.host, w2.port, "bob", PASSWORD))["token"]
        c = await w2.connect(tok)
        stored = set()
        after = 0
        while True:
            page = await c.history(conv, after=after, limit=500)
            stored |= {m["seq"] for m in page["messages"]}
            if not page["more"]:
                break
            after = page["messages"][-1]["seq"]
        assert len(acked) > 0
        assert set(acked) <= stored
        await w2.close()
    finally:
        await again.stop(drain_seconds=0.2)
