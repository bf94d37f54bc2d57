"""Randomised operations on a group from several users and devices: afterwards every device
of every member holds exactly the stored stream (after at most one resync), seqs are gap-free,
and the conversation list agrees with the cursors."""

import asyncio
import random

from support import PASSWORD

from berrychat.client import ClientError, login


async def test_random_operations_converge(world):
    rnd = random.Random(20261128)
    names = ["ada", "ben", "cyd", "dee"]
    users = {}
    clients = {}
    for n in names:
        u, _, c = await world.user(n)
        c2 = await world.connect((await login(world.host, world.port, n, PASSWORD, "d2"))["token"])
        users[n] = u
        clients[n] = [c, c2]
    conv = (
        await clients["ada"][0].request(
            "conv.create", kind="group", members=names[1:], title="chaos"
        )
    )["conv"]
    members = set(names)
    texts: list[int] = []
    for step in range(120):
        actor = rnd.choice(sorted(members))
        c = rnd.choice(clients[actor])
        op = rnd.random()
        try:
            if op < 0.55 or not texts:
                r = await c.send_text(conv, f"{actor} says {step} {'🎉' * rnd.randint(0, 3)}")
                texts.append(r["seq"])
            elif op < 0.7:
                await c.request(
                    "msg.react",
                    conv=conv,
                    cid=f"r{step}",
                    seq=rnd.choice(texts),
                    emoji=rnd.choice(["👍", "😂", "👨‍👩‍👧"]),
                    remove=rnd.random() < 0.3,
                )
            elif op < 0.8:
                await c.request(
                    "msg.edit",
                    conv=conv,
                    cid=f"e{step}",
                    seq=rnd.choice(texts),
                    text=f"edit {step}",
                )
            elif op < 0.85:
                await c.request("msg.recall", conv=conv, cid=f"x{step}", seq=rnd.choice(texts))
            elif op < 0.92:
                await c.request("receipt", conv=conv, kind="read", seq=rnd.randint(1, 10**6))
            else:
                await c.request("typing", conv=conv)
        except ClientError as e:
            assert e.code in ("forbidden", "conflict", "not_found"), e.frame
    await asyncio.sleep(0.1)
    ref = clients["ada"][0]
    stored = []
    after = 0
    while True:
        page = await ref.history(conv, after=after, limit=100)
        stored += page["messages"]
        if not page["more"]:
            break
        after = page["messages"][-1]["seq"]
    seqs = [m["seq"] for m in stored]
    assert seqs == list(range(1, len(seqs) + 1))
    listing = {c["conv"]: c for c in (await ref.request("conv.list"))["conversations"]}
    assert listing[conv]["last_seq"] == seqs[-1]
    for n in names:
        for c in clients[n]:
            c.drain_events()
            await c.resync()
            assert sorted(c.seen[conv]) == seqs, n
            assert c.cursors[conv] == seqs[-1]
    detail = (await ref.request("conv.get", conv=conv))["conversation"]
    for m in detail["members"]:
        assert 0 <= m["read_seq"] <= m["delivered_seq"] <= seqs[-1]
