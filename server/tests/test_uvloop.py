"""The production loop: the same end-to-end path under uvloop (its transports differ from
asyncio's: no asyncio.Transport subclass, its own write buffer accounting)."""

import asyncio

import pytest
from support import make_settings, start_world

from berrychat.protocol import codes
from berrychat.protocol.frames import encode

uvloop = pytest.importorskip("uvloop", reason="uvloop (extra 'fast') not installed")


def test_end_to_end_under_uvloop(tmp_path):
    async def scenario():
        w = await start_world(
            make_settings(
                {"type": "sqlite", "database": str(tmp_path / "uv.db")},
                limits={"out_queue_bytes": 65536},
            )
        )
        try:
            a, _, ca = await w.user("ann")
            b, _, cb = await w.user("bob")
            conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
            acks = await asyncio.gather(*[ca.send_text(conv, f"uv {i} 🦄") for i in range(50)])
            assert sorted(x["seq"] for x in acks) == list(range(2, 52))
            while cb.cursors.get(conv, 0) < 51:
                await cb.next_event("msg")
            # slow-consumer accounting with uvloop's transport
            conn = w.server.hub.connections(b["id"])[0]
            for _ in range(20):
                conn.send_bytes(encode({"type": "test", "pad": "z" * 8000}))
            assert (await cb.wait_closed())[0] == codes.CLOSE_SLOW_CONSUMER
            assert (await ca.request("ping"))["type"] == "ack"
        finally:
            await w.close()
            await w.server.stop(drain_seconds=0.2)

    uvloop.run(scenario())
