"""site.yml end to end: two users reach BerryChat through the edge over TLS, land on
instances on different Pis, exchange messages, and the replica holds them."""

from __future__ import annotations

import asyncio
import ssl
import time

from fleet import (
    DOMAIN,
    connections_per_instance,
    instance_get,
    instances,
    names,
    sql,
)


def test_every_instance_of_every_pi_is_ready() -> None:
    found = instances()
    assert len(found) == 6, found
    assert len({h for h, _ in found}) == 3
    for h, p in found:
        assert b'"ready"' in instance_get(h, p, "/readyz"), (h, p)


def test_two_users_on_different_pis_exchange_messages(world) -> None:
    edge = world.edge

    async def where(before: dict[tuple[str, int], int]) -> tuple[str, int]:
        # The instance whose authenticated connections went up by one (bounded wait: the
        # gauge is read when /metrics is scraped, right after hello was acknowledged).
        for _ in range(20):
            now = connections_per_instance()
            up = [k for k in now if now[k] > before.get(k, 0)]
            if len(up) == 1:
                return up[0]
            await asyncio.sleep(0.5)
        raise AssertionError(f"cannot tell which instance took the connection: {now}")

    async def scenario() -> None:
        base = connections_per_instance()
        ann = await edge.ws(world.tokens["ann"])
        ssl_obj = ann.writer.get_extra_info("ssl_object")
        assert isinstance(ssl_obj, ssl.SSLObject)
        assert ssl_obj.version() in ("TLSv1.2", "TLSv1.3")
        assert ssl_obj.server_hostname == DOMAIN
        ann_at = await where(base)
        # Nginx balances by least connections; a connection that lands on Ann's Pi stays
        # open while Bob connects again, so the next one goes to another Pi (bounded).
        extra = []
        for _ in range(4):
            before = connections_per_instance()
            bob = await edge.ws(world.tokens["bob"])
            bob_at = await where(before)
            if bob_at[0] != ann_at[0]:
                break
            extra.append(bob)
        else:
            raise AssertionError(f"Bob never landed on a Pi other than Ann's ({ann_at})")
        for c in extra:
            await c.close()
        print(f"Ann on {ann_at[0]}:{ann_at[1]}, Bob on {bob_at[0]}:{bob_at[1]}")

        conv = (
            await ann.request("conv.create", kind="direct", members=[bob.welcome["user"]["id"]])
        )["conv"]
        world.conv = conv["id"] if isinstance(conv, dict) else conv
        a1 = await ann.send_text(world.conv, "hello Bob, over TLS", cid="site-ann-1")
        ev = await bob.next_event("msg", timeout=10, pred=lambda e: e.get("cid") == "site-ann-1")
        assert ev["text"] == "hello Bob, over TLS" and ev["seq"] == a1["seq"]
        b1 = await bob.send_text(world.conv, "hi Ann, from another Pi", cid="site-bob-1")
        ev = await ann.next_event("msg", timeout=10, pred=lambda e: e.get("cid") == "site-bob-1")
        assert ev["text"] == "hi Ann, from another Pi" and ev["seq"] == b1["seq"] > a1["seq"]
        world.acked.update({"site-ann-1": a1["seq"], "site-bob-1": b1["seq"]})
        await ann.close()
        await bob.close()

    asyncio.run(scenario())


def test_the_replica_holds_the_messages(world) -> None:
    assert world.conv, "the exchange test did not run"
    replica = names("db_replicas")[0]
    want = {("site-ann-1", "hello Bob, over TLS"), ("site-bob-1", "hi Ann, from another Pi")}
    rows: set[tuple[str, ...]] = set()
    for _ in range(30):  # replication is asynchronous: bounded wait
        rows = {
            (r[0], r[1])
            for r in sql(
                replica,
                f"SELECT cid, body FROM messages WHERE conversation_id = {int(world.conv)}",
            )
        }
        if want <= rows:
            break
        time.sleep(1)
    assert want <= rows, rows
    assert sql(replica, "SELECT @@global.read_only") == [["1"]]
