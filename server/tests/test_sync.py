"""History pages by seq in both directions; resync after reconnect returns exactly what was
missed, with no duplicates."""

import asyncio

from support import PASSWORD

from berrychat.client import login


async def test_history_pagination_both_directions(world):
    _, _, ca = await world.user("ann")
    await world.user("bob", connect=False)
    conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
    for i in range(25):
        await ca.send_text(conv, f"m{i}")
    last = 26
    # newest first page, then walk back
    seen = []
    before = None
    while True:
        kw = {"limit": 10}
        if before:
            kw["before"] = before
        page = await ca.history(conv, **kw)
        seqs = [m["seq"] for m in page["messages"]]
        assert seqs == sorted(seqs)
        seen = seqs + seen
        if not page["more"]:
            break
        before = seqs[0]
    assert seen == list(range(1, last + 1))
    # forward from 0
    fwd = []
    after = 0
    while True:
        page = await ca.history(conv, after=after, limit=7)
        fwd += [m["seq"] for m in page["messages"]]
        if not page["more"]:
            break
        after = fwd[-1]
    assert fwd == list(range(1, last + 1))
    assert (await ca.history(conv, after=last))["messages"] == []


async def test_resync_after_reconnect_is_exact(world):
    a, ta, ca = await world.user("cyd")
    b, tb, cb = await world.user("dia")
    _, _, ce = await world.user("edd")
    c1 = (await ca.request("conv.create", kind="direct", members=["dia"]))["conv"]
    g = (await ca.request("conv.create", kind="group", members=["dia", "edd"], title="g"))["conv"]
    for i in range(3):
        await ca.send_text(c1, f"before {i}")
    while cb.cursors.get(c1, 0) < 4 or cb.cursors.get(g, 0) < 1:
        await cb.next_event("msg")
    cursors = dict(cb.cursors)
    seen = {k: dict(v) for k, v in cb.seen.items()}
    cb.abort()
    await cb.wait_closed()
    # while bob is away: new messages, a new conversation, an edit
    m = await ca.send_text(c1, "while away 1")
    await ce.send_text(g, "while away 2")
    await ca.request("msg.edit", conv=c1, cid="e", seq=m["seq"], text="while away 1 (edited)")
    c2 = (await ce.request("conv.create", kind="direct", members=["dia"]))["conv"]
    await ce.send_text(c2, "new conversation")
    # reconnect with the old cursors
    nb = await world.connect(tb)
    nb.cursors = dict(cursors)
    nb.seen = {k: dict(v) for k, v in seen.items()}
    new = await nb.resync()
    got = [(e["conv"], e["seq"]) for e in new]
    assert len(got) == len(set(got))  # no duplicates
    # everything missed arrived exactly once: by resync, or live if fanned out after reconnect
    have = {(c, s) for c, evs in nb.seen.items() for s in evs}
    old_have = {(c, s) for c, evs in seen.items() for s in evs}
    assert have - old_have == {(c1, 5), (c1, 6), (g, 2), (c2, 1), (c2, 2)}
    assert set(got) <= have - old_have
    assert nb.cursors == {c1: 6, g: 2, c2: 2}
    # a second resync finds nothing
    assert await nb.resync() == []


async def test_sync_reports_read_cursor_changes_and_removals(world):
    a, _, ca = await world.user("fan")
    b, tb, cb = await world.user("gem")
    g = (await ca.request("conv.create", kind="group", members=["gem"], title="g"))["conv"]
    await ca.send_text(g, "hi")
    d = (await ca.request("conv.create", kind="direct", members=["gem"]))["conv"]
    # another device of bob reads everything
    other = await world.connect(
        (await login(world.host, world.port, "gem", PASSWORD, "d9"))["token"]
    )
    await other.request("receipt", conv=d, kind="read", seq=1)
    r = await cb.request(
        "sync", cursors={str(g): {"seq": 2, "read": 0}, str(d): {"seq": 1, "read": 0}}
    )
    changed = {c["conv"]: c for c in r["changed"]}
    assert d in changed and changed[d]["read_seq"] == 1 and g not in changed
    # removed from the group: the conversation is reported as removed, with no details
    await ca.request("conv.remove", conv=g, user=b["id"])
    r = await cb.request("sync", cursors={str(g): 3, "999999": 0})
    assert r["removed"] == [g, 999999] and all(c["conv"] != g for c in r["changed"])


async def test_live_and_resync_together_have_no_gaps(world):
    """Messages sent during a disconnect/reconnect cycle all end up exactly once."""
    _, _, ca = await world.user("hal")
    _, tb, cb = await world.user("ion")
    conv = (await ca.request("conv.create", kind="direct", members=["ion"]))["conv"]

    async def sender():
        for i in range(40):
            await ca.send_text(conv, f"s{i}")

    task = asyncio.create_task(sender())
    await asyncio.sleep(0.05)
    cb.abort()
    await asyncio.sleep(0.05)
    nb = await world.connect(tb)
    nb.cursors = dict(cb.cursors)
    nb.seen = {k: dict(v) for k, v in cb.seen.items()}
    await task
    await nb.resync()
    # give live pushes a moment, then everything 1..41 is there once
    for _ in range(50):
        if nb.cursors.get(conv) == 41:
            break
        await asyncio.sleep(0.02)
        nb.drain_events()
    assert nb.cursors[conv] == 41 and sorted(nb.seen[conv]) == list(range(1, 42))
