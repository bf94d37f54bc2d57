"""Delivery/read receipts as cursors, typing, presence, multi-device convergence."""

import asyncio

import pytest
from support import PASSWORD, make_settings, start_world

from berrychat.client import ClientError, login


async def test_receipts_are_monotonic_cursors_seen_by_all_devices(world):
    a, _, ca = await world.user("ann")
    b, _, cb = await world.user("bob")
    cb2 = await world.connect(
        (await login(world.host, world.port, "bob", PASSWORD, "tablet"))["token"]
    )
    conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
    m = [await ca.send_text(conv, f"m{i}") for i in range(3)]
    r = await cb.request("receipt", conv=conv, kind="delivered", seq=m[2]["seq"])
    assert r["delivered_seq"] == m[2]["seq"] and r["read_seq"] == 0
    r = await cb.request("receipt", conv=conv, kind="read", seq=m[1]["seq"])
    assert r["read_seq"] == m[1]["seq"] and r["delivered_seq"] == m[2]["seq"]
    # going backwards and past the end are clamped
    r = await cb.request("receipt", conv=conv, kind="read", seq=1)
    assert r["read_seq"] == m[1]["seq"]
    r = await cb.request("receipt", conv=conv, kind="read", seq=10**6)
    assert r["read_seq"] == m[2]["seq"]
    # the sender and bob's other device see the cursors move
    for c in (ca, cb2):
        ev = await c.next_event("receipt", pred=lambda e: e["read_seq"] == m[2]["seq"])
        assert ev["user"] == b["id"] and ev["conv"] == conv
    detail = (await ca.request("conv.get", conv=conv))["conversation"]
    bob = next(x for x in detail["members"] if x["user"] == b["id"])
    assert bob["read_seq"] == bob["delivered_seq"] == m[2]["seq"]


async def test_typing(world):
    a, _, ca = await world.user("cat")
    b, _, cb = await world.user("dog")
    conv = (await ca.request("conv.create", kind="direct", members=["dog"]))["conv"]
    await ca.request("typing", conv=conv)
    ev = await cb.next_event("typing")
    assert ev == {"type": "typing", "conv": conv, "user": a["id"], "on": True}
    await ca.request("typing", conv=conv, on=False)
    ev = await cb.next_event("typing")
    assert ev["on"] is False
    with pytest.raises(asyncio.TimeoutError):
        await ca.next_event("typing", timeout=0.2)  # never echoed to the typist


async def test_presence_online_away_offline(world):
    a, ta, ca = await world.user("eli")
    b, _, cb = await world.user("flo")
    await ca.request("conv.create", kind="direct", members=["flo"])
    r = await cb.request("presence.get", users=[a["id"]])
    assert r["users"] == {str(a["id"]): "online"}
    await ca.request("presence", status="away")
    ev = await cb.next_event("presence", pred=lambda e: e["user"] == a["id"])
    assert ev["status"] == "away"
    await ca.close()
    ev = await cb.next_event(
        "presence", pred=lambda e: e["user"] == a["id"] and e["status"] == "offline"
    )
    ca2 = await world.connect(ta)
    ev = await cb.next_event("presence", pred=lambda e: e["user"] == a["id"])
    assert ev["status"] == "online"
    assert ca2


async def test_presence_not_leaked_to_strangers(world):
    a, _, ca = await world.user("gia")
    b, _, cb = await world.user("hue")
    r = await cb.request("presence.get", users=[a["id"]])
    assert r["users"] == {}
    await ca.request("presence", status="away")
    with pytest.raises(asyncio.TimeoutError):
        await cb.next_event("presence", timeout=0.3)


async def test_presence_throttled(sqlite_db):
    w = await start_world(make_settings(sqlite_db, presence={"throttle_seconds": 0.5}))
    try:
        a, _, ca = await w.user("ian")
        b, _, cb = await w.user("joy")
        await ca.request("conv.create", kind="direct", members=["joy"])
        await asyncio.sleep(0.6)
        for s in ("away", "online", "away", "online", "away"):
            await ca.request("presence", status=s)
        first = await cb.next_event("presence", pred=lambda e: e["user"] == a["id"])
        assert first["status"] == "away"
        # the burst is coalesced: after the window only the latest state arrives
        second = await cb.next_event("presence", pred=lambda e: e["user"] == a["id"], timeout=3)
        assert second["status"] == "away"
        with pytest.raises(asyncio.TimeoutError):
            await cb.next_event("presence", pred=lambda e: e["user"] == a["id"], timeout=0.8)
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)


async def test_presence_and_typing_can_be_switched_off(sqlite_db):
    w = await start_world(
        make_settings(sqlite_db, presence={"enabled": False, "typing_enabled": False})
    )
    try:
        a, _, ca = await w.user("kai")
        b, _, cb = await w.user("lou")
        conv = (await ca.request("conv.create", kind="direct", members=["lou"]))["conv"]
        await ca.request("presence", status="away")
        await ca.request("typing", conv=conv)
        assert (await cb.request("presence.get", users=[a["id"]]))["enabled"] is False
        with pytest.raises(asyncio.TimeoutError):
            await cb.next_event(pred=lambda e: e["type"] in ("presence", "typing"), timeout=0.3)
        assert cb.welcome["presence"] is False
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)


async def test_multi_device_convergence(world):
    """Every device of a user ends with the same stream and cursors."""
    a, _, a1 = await world.user("mia", device="phone")
    a2 = await world.connect(
        (await login(world.host, world.port, "mia", PASSWORD, "laptop"))["token"]
    )
    b, _, b1 = await world.user("ned")
    conv = (await a1.request("conv.create", kind="group", members=["ned"], title="t"))["conv"]
    sends = [a1.send_text(conv, f"p{i}") for i in range(5)]
    sends += [a2.send_text(conv, f"l{i}") for i in range(5)]
    sends += [b1.send_text(conv, f"n{i}") for i in range(5)]
    await asyncio.gather(*sends)
    await a2.request("receipt", conv=conv, kind="read", seq=16)
    for c in (a1, a2, b1):
        while c.cursors.get(conv, 0) < 16:
            await c.next_event("msg")
    streams = [
        [(s, c.seen[conv][s].get("text", "")) for s in sorted(c.seen[conv])] for c in (a1, a2, b1)
    ]
    assert streams[0] == streams[1] == streams[2] and len(streams[0]) == 16
    ev = await a1.next_event("receipt", pred=lambda e: e["user"] == a["id"])
    assert ev["read_seq"] == 16


async def test_receipt_for_foreign_conversation(world):
    _, _, ca = await world.user("oli")
    await world.user("pam", connect=False)
    _, _, cc = await world.user("quo")
    conv = (await ca.request("conv.create", kind="direct", members=["pam"]))["conv"]
    with pytest.raises(ClientError) as e:
        await cc.request("receipt", conv=conv, kind="read", seq=1)
    assert e.value.code == "not_found"
