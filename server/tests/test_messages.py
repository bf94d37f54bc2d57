"""Messages: seq, idempotent resend, durability, group commit, unicode, replies, mentions,
reactions, edit, recall window."""

import asyncio

import pytest
from support import PASSWORD, World, make_settings, start_world

from berrychat.client import ClientError, login
from berrychat.server import Server

ZWJ = "👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏽‍💻 é\u0301 中文 עברית \U0001fae0"


async def pair(world):
    a, _, ca = await world.user("ann")
    b, _, cb = await world.user("bob")
    conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
    return a, b, ca, cb, conv


async def test_seq_order_and_fan_out_to_every_device(world):
    a, b, ca, cb, conv = await pair(world)
    ca2 = await world.connect((await login(world.host, world.port, "ann", PASSWORD, "d2"))["token"])
    acks = [await ca.send_text(conv, f"n{i}") for i in range(5)]
    assert [x["seq"] for x in acks] == [2, 3, 4, 5, 6]
    assert all(x["cid"] and not x["dup"] for x in acks)
    for c in (cb, ca2, ca):  # recipient, sender's other device, and the sender itself
        got = [
            (await c.next_event("msg", pred=lambda e: e["kind"] == "text"))["seq"] for _ in range(5)
        ]
        assert got == [2, 3, 4, 5, 6]


async def test_unicode_survives_exactly(world):
    a, b, ca, cb, conv = await pair(world)
    ack = await ca.send_text(conv, ZWJ)
    ev = await cb.next_event("msg", pred=lambda e: e["kind"] == "text")
    assert ev["text"] == ZWJ
    h = await cb.history(conv)
    assert h["messages"][-1]["text"] == ZWJ and h["messages"][-1]["seq"] == ack["seq"]


async def test_resend_with_same_cid_is_stored_once(world):
    a, b, ca, cb, conv = await pair(world)
    first = await ca.send_text(conv, "once", cid="client-42")
    again = await ca.send_text(conv, "once", cid="client-42")
    assert again["seq"] == first["seq"] and again["dup"] and not first["dup"]
    # concurrent duplicates in one batch
    acks = await asyncio.gather(*[ca.send_text(conv, "x", cid="same-batch") for _ in range(5)])
    assert len({x["seq"] for x in acks}) == 1
    texts = [m for m in (await cb.history(conv))["messages"] if m["kind"] == "text"]
    assert [m["text"] for m in texts] == ["once", "x"]
    # another sender may use the same cid
    other = await cb.send_text(conv, "mine", cid="client-42")
    assert other["seq"] != first["seq"]


async def test_group_commit_batches_concurrent_sends(world):
    a, b, ca, cb, conv = await pair(world)
    committer = world.server.chat.committer
    before_batches, before_ops = committer.batches, committer.ops
    acks = await asyncio.gather(*[ca.send_text(conv, f"burst {i}") for i in range(60)])
    seqs = sorted(x["seq"] for x in acks)
    assert seqs == list(range(seqs[0], seqs[0] + 60))
    assert committer.ops - before_ops == 60
    assert committer.batches - before_batches < 60  # several sends per transaction


async def test_durable_before_ack_survives_restart(backend):
    s = make_settings(backend)
    w = await start_world(s)
    a, b, ca, cb, conv = await pair(w)
    acks = await asyncio.gather(*[ca.send_text(conv, f"keep {i}") for i in range(20)])
    await w.close()
    await w.server.stop(drain_seconds=0.2)
    server2 = Server(s)
    await server2.start()
    try:
        w2 = World(server2)
        tok = (await login(w2.host, w2.port, "bob", PASSWORD))["token"]
        c = await w2.connect(tok)
        h = await c.history(conv, limit=100)
        stored = {m["seq"] for m in h["messages"]}
        assert {x["seq"] for x in acks} <= stored
        await w2.close()
    finally:
        await server2.stop(drain_seconds=0.2)


async def test_reply_and_mentions(world):
    a, b, ca, cb, conv = await pair(world)
    first = await ca.send_text(conv, "question?")
    r = await cb.send_text(conv, "@ann answer", reply_to=first["seq"], mentions=[a["id"]])
    ev = await ca.next_event("msg", pred=lambda e: e["seq"] == r["seq"])
    assert ev["reply_to"] == first["seq"] and ev["mentions"] == [a["id"]]
    with pytest.raises(ClientError) as e:
        await cb.send_text(conv, "dangling", reply_to=999)
    assert e.value.code == "bad_field"


async def test_reactions(world):
    a, b, ca, cb, conv = await pair(world)
    m = await ca.send_text(conv, "react to me")
    await cb.request("msg.react", conv=conv, cid="r1", seq=m["seq"], emoji="👍🏽")
    await ca.request("msg.react", conv=conv, cid="r2", seq=m["seq"], emoji="👍🏽")
    ev = await ca.next_event("msg", pred=lambda e: e["kind"] == "react")
    assert ev["target"] == m["seq"] and ev["emoji"] == "👍🏽" and ev["remove"] is False
    h = await cb.history(conv)
    msg = next(x for x in h["messages"] if x["seq"] == m["seq"])
    assert sorted(msg["reactions"]["👍🏽"]) == sorted([a["id"], b["id"]])
    await cb.request("msg.react", conv=conv, cid="r3", seq=m["seq"], emoji="👍🏽", remove=True)
    h = await cb.history(conv)
    msg = next(x for x in h["messages"] if x["seq"] == m["seq"])
    assert msg["reactions"]["👍🏽"] == [a["id"]]
    with pytest.raises(ClientError) as e:
        await cb.request("msg.react", conv=conv, cid="r4", seq=9999, emoji="x")
    assert e.value.code == "not_found"


async def test_edit(world):
    a, b, ca, cb, conv = await pair(world)
    m = await ca.send_text(conv, "tpyo")
    with pytest.raises(ClientError) as e:
        await cb.request("msg.edit", conv=conv, cid="e0", seq=m["seq"], text="hijack")
    assert e.value.code == "forbidden"
    await ca.request("msg.edit", conv=conv, cid="e1", seq=m["seq"], text="typo ✅")
    ev = await cb.next_event("msg", pred=lambda e: e["kind"] == "edit")
    assert ev["target"] == m["seq"] and ev["text"] == "typo ✅"
    msg = next(x for x in (await cb.history(conv))["messages"] if x["seq"] == m["seq"])
    assert msg["text"] == "typo ✅" and msg["edited_at"] >= msg["ts"]


async def test_recall_and_window(backend):
    w = await start_world(
        make_settings(backend, limits={"recall_window_seconds": 0, "edit_window_seconds": 0})
    )
    try:
        a, b, ca, cb, conv = await pair(w)
        m = await ca.send_text(conv, "too late")
        await asyncio.sleep(0.01)
        with pytest.raises(ClientError) as e:
            await ca.request("msg.recall", conv=conv, cid="rc1", seq=m["seq"])
        assert e.value.code == "recall_window"
        with pytest.raises(ClientError) as e:
            await ca.request("msg.edit", conv=conv, cid="ed1", seq=m["seq"], text="x")
        assert e.value.code == "recall_window"
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)


async def test_recall_within_window(world):
    a, b, ca, cb, conv = await pair(world)
    m = await ca.send_text(conv, "oops secret")
    with pytest.raises(ClientError) as e:
        await cb.request("msg.recall", conv=conv, cid="rb", seq=m["seq"])
    assert e.value.code == "forbidden"
    await ca.request("msg.recall", conv=conv, cid="ra", seq=m["seq"])
    ev = await cb.next_event("msg", pred=lambda e: e["kind"] == "recall")
    assert ev["target"] == m["seq"]
    msg = next(x for x in (await cb.history(conv))["messages"] if x["seq"] == m["seq"])
    assert msg["recalled"] and msg["text"] == ""
    with pytest.raises(ClientError) as e:
        await ca.request("msg.edit", conv=conv, cid="after", seq=m["seq"], text="x")
    assert e.value.code == "conflict"


async def test_group_admin_can_recall_any_message(world):
    a, _, ca = await world.user("own")
    b, _, cb = await world.user("mem")
    conv = (await ca.request("conv.create", kind="group", members=["mem"], title="t"))["conv"]
    m = await cb.send_text(conv, "spam")
    await ca.request("msg.recall", conv=conv, cid="mod", seq=m["seq"])


async def test_text_limits(world):
    a, b, ca, cb, conv = await pair(world)
    limit = world.server.settings.limits.max_text_chars
    await ca.send_text(conv, "x" * limit)
    with pytest.raises(ClientError) as e:
        await ca.send_text(conv, "x" * (limit + 1))
    assert e.value.code == "too_large"
    with pytest.raises(ClientError) as e:
        await ca.send_text(conv, "   ")
    assert e.value.code == "bad_field"


async def test_pipelined_flood_is_backpressured_not_dropped(sworld):
    a, b, ca, cb, conv = await pair(sworld)
    acks = await asyncio.gather(*[ca.send_text(conv, f"flood {i}", timeout=60) for i in range(700)])
    seqs = sorted(x["seq"] for x in acks)
    assert seqs == list(range(2, 702))
    assert (await ca.request("ping"))["type"] == "ack"
