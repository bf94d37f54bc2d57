"""A user can never read, write or learn of a conversation they are not a member of.

Every frame type and endpoint that names a conversation is tried by an outsider against a real
conversation and against one that does not exist: the answers are identical (`not_found`),
nothing is stored, and the outsider receives no push about it."""

import asyncio

import pytest

from berrychat.client import ClientError, http_json

NOPE = 987654


def frames(conv, target_seq, member_id):
    return [
        ("conv.get", {"conv": conv}),
        ("conv.rename", {"conv": conv, "title": "pwned"}),
        ("conv.add", {"conv": conv, "users": ["mallory"]}),
        ("conv.remove", {"conv": conv, "user": member_id}),
        ("conv.leave", {"conv": conv}),
        ("conv.role", {"conv": conv, "user": member_id, "role": "admin"}),
        ("msg.send", {"conv": conv, "cid": "m1", "text": "let me in"}),
        ("msg.edit", {"conv": conv, "cid": "m2", "seq": target_seq, "text": "edited"}),
        ("msg.recall", {"conv": conv, "cid": "m3", "seq": target_seq}),
        ("msg.react", {"conv": conv, "cid": "m4", "seq": target_seq, "emoji": "😈"}),
        ("history", {"conv": conv}),
        ("history", {"conv": conv, "after": 0}),
        ("receipt", {"conv": conv, "kind": "read", "seq": 1}),
        ("receipt", {"conv": conv, "kind": "delivered", "seq": 1}),
        ("typing", {"conv": conv}),
    ]


async def test_every_frame_type(world):
    a, _, ca = await world.user("alice")
    b, _, cb = await world.user("bobby")
    m, _, cm = await world.user("mallory")
    conv = (await ca.request("conv.create", kind="group", members=["bobby"], title="secret"))[
        "conv"
    ]
    sent = await ca.send_text(conv, "the secret")
    seq = sent["seq"]
    for (ftype, fields), (_, fields_nope) in zip(
        frames(conv, seq, b["id"]), frames(NOPE, seq, b["id"]), strict=True
    ):
        with pytest.raises(ClientError) as real:
            await cm.request(ftype, **fields)
        with pytest.raises(ClientError) as fake:
            await cm.request(ftype, **fields_nope)
        r, f = dict(real.value.frame), dict(fake.value.frame)
        r.pop("id"), f.pop("id")
        assert r == f, ftype
        assert r["code"] == "not_found", ftype
    # nothing changed
    h = await cb.history(conv)
    assert [x["seq"] for x in h["messages"]] == [1, seq]
    assert h["messages"][-1]["text"] == "the secret" and "reactions" not in h["messages"][-1]
    detail = (await cb.request("conv.get", conv=conv))["conversation"]
    assert detail["title"] == "secret" and {x["user"] for x in detail["members"]} == {
        a["id"],
        b["id"],
    }
    # not in the list; sync treats it like a conversation that does not exist
    assert (await cm.request("conv.list"))["conversations"] == []
    r = await cm.request("sync", cursors={str(conv): 0, str(NOPE): 0})
    assert r["changed"] == [] and r["removed"] == sorted([conv, NOPE])
    # presence of members is not revealed
    r = await cm.request("presence.get", users=[a["id"], b["id"]])
    assert r["users"] == {}
    # and no push about the conversation ever reached the outsider
    await ca.send_text(conv, "more secrets")
    await ca.request("typing", conv=conv)
    await cb.request("receipt", conv=conv, kind="read", seq=seq)
    await asyncio.sleep(0.2)
    leaked = [
        e for e in cm.drain_events() if e.get("conv") == conv or e.get("user") in (a["id"], b["id"])
    ]
    assert leaked == []


async def test_every_endpoint(world):
    h, p = world.host, world.port
    _, ta, ca = await world.user("carol")
    await world.user("dave", connect=False)
    _, tm, _ = await world.user("mallory", connect=False)
    conv = (await ca.request("conv.create", kind="group", members=["dave"], title="private"))[
        "conv"
    ]
    await ca.send_text(conv, "hidden")
    for method, path, body in [
        ("GET", "/api/v1/conversations/{}", None),
        ("GET", "/api/v1/conversations/{}/messages", None),
        ("GET", "/api/v1/conversations/{}/messages?after=0&limit=5", None),
        ("POST", "/api/v1/conversations/{}/messages", {"cid": "x", "text": "intrude"}),
    ]:
        st_r, real = await http_json(h, p, method, path.format(conv), body, token=tm)
        st_f, fake = await http_json(h, p, method, path.format(NOPE), body, token=tm)
        assert st_r == st_f == 404 and real == fake, path
        # without a token: 401 for both
        st_n, _ = await http_json(h, p, method, path.format(conv), body)
        assert st_n == 401
    st, r = await http_json(h, p, "GET", "/api/v1/conversations", token=tm)
    assert st == 200 and r["conversations"] == []
    st, r = await http_json(h, p, "GET", f"/api/v1/conversations/{conv}/messages", token=ta)
    assert st == 200 and [m["text"] for m in r["messages"] if m["kind"] == "text"] == ["hidden"]
    st, r = await http_json(h, p, "POST", "/api/v1/admin/users/carol/disable", token=tm)
    assert st == 403


async def test_removed_member_loses_access_and_pushes(world):
    a, _, ca = await world.user("erin")
    b, _, cb = await world.user("frank")
    conv = (await ca.request("conv.create", kind="group", members=["frank"], title="t"))["conv"]
    await ca.request("conv.remove", conv=conv, user=b["id"])
    await cb.next_event("msg", pred=lambda e: e["kind"] == "remove")
    await ca.send_text(conv, "after removal")
    await ca.request("typing", conv=conv)
    await asyncio.sleep(0.2)
    assert [e for e in cb.drain_events() if e.get("conv") == conv] == []
    with pytest.raises(ClientError):
        await cb.send_text(conv, "still here?")
