"""Conversations: direct and group, rename, add/remove, leave, roles, member limit, the list."""

import pytest
from support import make_settings, start_world

from berrychat.client import ClientError


async def test_direct_conversation_is_unique(world):
    a, _, ca = await world.user("ann")
    b, _, cb = await world.user("bob")
    r1 = await ca.request("conv.create", kind="direct", members=["bob"])
    r2 = await cb.request("conv.create", kind="direct", members=[a["id"]])
    assert r1["conv"] == r2["conv"] and not r1["existed"] and r2["existed"]
    with pytest.raises(ClientError) as e:
        await ca.request("conv.create", kind="direct", members=["ann"])
    assert e.value.code == "bad_field"
    with pytest.raises(ClientError) as e:
        await ca.request("conv.create", kind="direct", members=["nobody-here"])
    assert e.value.code == "not_found"
    lst = (await cb.request("conv.list"))["conversations"]
    assert lst[0]["peer"]["username"] == "ann" and lst[0]["kind"] == "direct"


async def test_group_lifecycle(world):
    a, _, ca = await world.user("owner")
    b, _, cb = await world.user("bea")
    c, _, cc = await world.user("cal")
    d, _, cd = await world.user("dan")
    r = await ca.request("conv.create", kind="group", members=["BEA", "cal"], title="Pi club 🥧")
    conv = r["conv"]
    ev = await cb.next_event("msg", pred=lambda e: e["kind"] == "create")
    assert ev["title"] == "Pi club 🥧" and sorted(ev["members"]) == sorted(
        [a["id"], b["id"], c["id"]]
    )

    # members cannot rename or add; owner can
    with pytest.raises(ClientError) as e:
        await cb.request("conv.rename", conv=conv, title="mine")
    assert e.value.code == "forbidden"
    await ca.request("conv.rename", conv=conv, title="Pi club")
    ev = await cc.next_event("msg", pred=lambda e: e["kind"] == "rename")
    assert ev["title"] == "Pi club"

    # promote bea to admin; admin adds dan; dan sees the group and its history
    await ca.request("conv.role", conv=conv, user=b["id"], role="admin")
    with pytest.raises(ClientError) as e:
        await cb.request("conv.role", conv=conv, user=c["id"], role="admin")
    assert e.value.code == "forbidden"
    r = await cb.request("conv.add", conv=conv, users=["dan"])
    assert r["seq"] > 0
    ev = await cd.next_event("msg", pred=lambda e: e["kind"] == "add")
    assert ev["users"] == [d["id"]]
    with pytest.raises(ClientError) as e:
        await cb.request("conv.add", conv=conv, users=[d["id"]])
    assert e.value.code == "conflict"
    h = await cd.history(conv)
    assert [m["kind"] for m in h["messages"]][:2] == ["create", "rename"]

    # admin cannot remove the owner; admin removes cal, cal is told and loses access
    with pytest.raises(ClientError) as e:
        await cb.request("conv.remove", conv=conv, user=a["id"])
    assert e.value.code == "forbidden"
    await cb.request("conv.remove", conv=conv, user=c["id"])
    ev = await cc.next_event("msg", pred=lambda e: e["kind"] == "remove")
    assert ev["user"] == c["id"]
    with pytest.raises(ClientError) as e:
        await cc.history(conv)
    assert e.value.code == "not_found"
    assert all(x["conv"] != conv for x in (await cc.request("conv.list"))["conversations"])

    # the owner leaves: ownership passes to the admin
    await ca.request("conv.leave", conv=conv)
    detail = (await cb.request("conv.get", conv=conv))["conversation"]
    roles = {m["user"]: m["role"] for m in detail["members"]}
    assert roles == {b["id"]: "owner", d["id"]: "member"}
    assert detail["member_count"] == 2 and detail["title"] == "Pi club"


async def test_direct_conversations_cannot_be_changed(world):
    _, _, ca = await world.user("eve")
    await world.user("fin")
    conv = (await ca.request("conv.create", kind="direct", members=["fin"]))["conv"]
    for ftype, fields in [
        ("conv.rename", {"title": "x"}),
        ("conv.leave", {}),
        ("conv.add", {"users": ["eve"]}),
    ]:
        with pytest.raises(ClientError) as e:
            await ca.request(ftype, conv=conv, **fields)
        assert e.value.code in ("forbidden", "conflict")


async def test_member_limit(backend):
    w = await start_world(make_settings(backend, limits={"max_members": 3}))
    try:
        _, _, ca = await w.user("gil")
        for n in ("h1x", "h2x", "h3x"):
            await w.user(n, connect=False)
        with pytest.raises(ClientError) as e:
            await ca.request("conv.create", kind="group", members=["h1x", "h2x", "h3x"])
        assert e.value.code == "member_limit"
        conv = (await ca.request("conv.create", kind="group", members=["h1x", "h2x"]))["conv"]
        with pytest.raises(ClientError) as e:
            await ca.request("conv.add", conv=conv, users=["h3x"])
        assert e.value.code == "member_limit"
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.2)


async def test_list_has_unread_counts_and_last_message(world):
    a, _, ca = await world.user("ida")
    b, _, cb = await world.user("jon")
    conv = (await ca.request("conv.create", kind="direct", members=["jon"]))["conv"]
    g = (await ca.request("conv.create", kind="group", members=["jon"], title="g"))["conv"]
    for i in range(3):
        await ca.send_text(conv, f"m{i}")
    lst = {c["conv"]: c for c in (await cb.request("conv.list"))["conversations"]}
    assert lst[conv]["unread"] == 4  # the creation event and three messages
    assert lst[conv]["last_message"]["text"] == "m2"
    assert lst[g]["last_message"] is None
    # most recently active first
    order = [c["conv"] for c in (await cb.request("conv.list"))["conversations"]]
    assert order[0] == conv
    await cb.request("receipt", conv=conv, kind="read", seq=lst[conv]["last_seq"])
    lst = {c["conv"]: c for c in (await cb.request("conv.list"))["conversations"]}
    assert lst[conv]["unread"] == 0
    # the sender has read its own messages
    mine = {c["conv"]: c for c in (await ca.request("conv.list"))["conversations"]}
    assert mine[conv]["unread"] == 0
