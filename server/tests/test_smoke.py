async def test_send_and_receive(world):
    a, _, ca = await world.user("ann")
    b, _, cb = await world.user("bob")
    r = await ca.request("conv.create", kind="direct", members=["bob"])
    conv = r["conv"]
    ack = await ca.send_text(conv, "hi 👩‍👩‍👧‍👦")
    assert ack["seq"] == 2
    ev = await cb.next_event("msg", pred=lambda e: e["kind"] == "text")
    assert ev["text"] == "hi 👩‍👩‍👧‍👦" and ev["seq"] == 2 and ev["from"] == a["id"]
