"""Call signalling: every transition of the call state machine (docs/protocol.md, "Calls"),
against a real server over real WebSockets; the cross-process case on two servers sharing one
real redis-server. Call records land in the conversation's history."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import pytest
from support import PASSWORD, World, make_settings, start_world

from berrychat.client import Client, ClientError, login
from berrychat.server import Server


async def _device(w: World, name: str, device: str) -> Client:
    return await w.connect((await login(w.host, w.port, name, PASSWORD, device))["token"])


async def _pair(w: World, a: str = "ann", b: str = "bob") -> tuple[int, Any, Any, Client, Client]:
    ua, _, ca = await w.user(a)
    ub, _, cb = await w.user(b)
    assert ca is not None and cb is not None
    conv = (await ca.request("conv.create", kind="direct", members=[b]))["conv"]
    return conv, ua, ub, ca, cb


async def _call_records(c: Client, conv: int, n: int = 1) -> list[dict[str, Any]]:
    """The `call` messages of a conversation once `n` of them are stored (bounded wait)."""
    for _ in range(100):
        h = await c.request("history", conv=conv)
        calls = [m for m in h["messages"] if m["kind"] == "call"]
        if len(calls) >= n:
            return calls
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} call records in the history")


@pytest.fixture
async def calls_world(sqlite_db):
    w = await start_world(make_settings(sqlite_db, calls={"ring_timeout_seconds": 30}))
    yield w
    await w.close()
    await w.server.stop(drain_seconds=0.5)


async def test_accept_relay_and_hangup_records_duration(world):
    """invite -> incoming on every callee device -> ringing -> accept on one device (the other
    stops: answered_elsewhere) -> offer/answer/ICE relayed only between the two devices ->
    hang-up by the callee -> an `ended` record with its duration (SQLite and MariaDB)."""
    conv, ua, ub, ann, bob1 = await _pair(world)
    bob2 = await _device(world, "bob", "phone")
    r = await ann.request("call.invite", conv=conv, media="video")
    call = r["call"]
    assert r["state"] == "ringing" and isinstance(r["ice_servers"], list)
    for dev in (bob1, bob2):
        inc = await dev.next_event("call.incoming")
        assert inc["call"] == call and inc["from"] == ua["id"] and inc["media"] == "video"
        assert inc["conv"] == conv
    await bob2.request("call.ringing", call=call)
    await bob1.request("call.ringing", call=call)
    await ann.next_event("call.ringing", pred=lambda e: e["call"] == call)
    acc = await bob1.request("call.accept", call=call)
    assert acc["state"] == "active"
    ev = await ann.next_event("call.accepted")
    assert ev["call"] == call and ev["device"] == "d1"
    ev = await bob2.next_event("call.ended")
    assert ev["reason"] == "answered_elsewhere"
    # a second accept is refused
    with pytest.raises(ClientError) as e:
        await bob2.request("call.accept", call=call)
    assert e.value.code == "conflict"
    # SDP and ICE: only between ann's and bob1's devices
    await ann.request("call.sdp", call=call, sdp_type="offer", sdp="v=0 offer")
    ev = await bob1.next_event("call.sdp")
    assert ev["sdp"] == "v=0 offer" and ev["sdp_type"] == "offer"
    await bob1.request("call.sdp", call=call, sdp_type="answer", sdp="v=0 answer")
    assert (await ann.next_event("call.sdp"))["sdp"] == "v=0 answer"
    await bob1.request("call.ice", call=call, candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host")
    ev = await ann.next_event("call.ice")
    assert ev["candidate"].startswith("candidate:1")
    await ann.request("call.ice", call=call, candidate="", sdp_mid="0", sdp_mline_index=0)
    ev = await bob1.next_event("call.ice")
    assert ev["candidate"] == "" and ev["sdp_mid"] == "0" and ev["sdp_mline_index"] == 0
    with pytest.raises(ClientError) as e:
        await bob2.request("call.sdp", call=call, sdp_type="offer", sdp="x")
    assert e.value.code == "forbidden"
    assert not [x for x in bob2.drain_events() if x["type"] in ("call.sdp", "call.ice")]
    await asyncio.sleep(1.1)  # a measurable duration
    await bob1.request("call.hangup", call=call)
    ev = await ann.next_event("call.ended")
    assert ev["reason"] == "hangup" and ev["by"] == ub["id"] and ev["duration"] >= 1
    rec = (await _call_records(ann, conv))[0]
    assert rec["call"]["outcome"] == "ended" and rec["call"]["duration"] >= 1
    assert rec["from"] == ua["id"] and rec["call"]["media"] == "video"
    # the record is pushed like any message, and the call is gone
    with pytest.raises(ClientError) as e:
        await ann.request("call.hangup", call=call)
    assert e.value.code == "not_found"
    lst = await bob1.request("conv.list")
    last = next(c for c in lst["conversations"] if c["conv"] == conv)["last_message"]
    assert last["kind"] == "call"


async def test_reject_stops_every_device(calls_world):
    conv, _, ub, ann, bob1 = await _pair(calls_world)
    bob2 = await _device(calls_world, "bob", "phone")
    call = (await ann.request("call.invite", conv=conv))["call"]
    await bob1.next_event("call.incoming")
    await bob2.next_event("call.incoming")
    await bob2.request("call.reject", call=call)
    ev = await ann.next_event("call.ended")
    assert ev["reason"] == "rejected" and ev["by"] == ub["id"]
    assert (await bob1.next_event("call.ended"))["reason"] == "rejected"
    rec = (await _call_records(ann, conv))[0]
    assert rec["call"]["outcome"] == "rejected" and "duration" not in rec["call"]
    # both are free again
    call2 = (await ann.request("call.invite", conv=conv))["call"]
    assert call2 != call


async def test_busy_callee_and_busy_caller(calls_world):
    conv, _, _, ann, bob = await _pair(calls_world)
    _, _, cyd = await calls_world.user("cyd")
    assert cyd is not None
    conv2 = (await cyd.request("conv.create", kind="direct", members=["bob"]))["conv"]
    conv3 = (await cyd.request("conv.create", kind="direct", members=["ann"]))["conv"]
    call = (await ann.request("call.invite", conv=conv))["call"]
    await bob.next_event("call.incoming")
    await bob.request("call.accept", call=call)
    # cyd calls bob, who is in a call: busy at once, recorded, bob's devices do not ring
    r = await cyd.request("call.invite", conv=conv2)
    assert r["state"] == "ended" and r["reason"] == "busy"
    rec = (await _call_records(cyd, conv2))[0]
    assert rec["call"]["outcome"] == "busy"
    await asyncio.sleep(0.1)
    assert not [e for e in bob.drain_events() if e["type"] == "call.incoming"]
    # ann (in the call) cannot place another one
    with pytest.raises(ClientError) as e:
        await ann.request("call.invite", conv=conv3)
    assert e.value.code == "busy"
    await ann.request("call.hangup", call=call)
    assert (await bob.next_event("call.ended"))["reason"] == "hangup"


async def test_ring_timeout_is_a_missed_call(sqlite_db):
    w = await start_world(make_settings(sqlite_db, calls={"ring_timeout_seconds": 0.3}))
    try:
        conv, _, _, ann, bob = await _pair(w)
        t0 = time.monotonic()
        call = (await ann.request("call.invite", conv=conv))["call"]
        inc = await bob.next_event("call.incoming")
        assert inc["ring_timeout"] == 0.3
        ev = await ann.next_event("call.ended", timeout=5)
        assert ev["reason"] == "timeout" and ev["call"] == call
        assert 0.25 < time.monotonic() - t0 < 5
        assert (await bob.next_event("call.ended"))["reason"] == "timeout"
        rec = (await _call_records(bob, conv))[0]
        assert rec["call"]["outcome"] == "missed" and rec["call"]["reason"] == "timeout"
        m = w.server.metrics.render().decode()
        assert 'berrychat_calls_total{reason="timeout"} 1' in m
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.5)


async def test_caller_cancels_while_ringing(calls_world):
    conv, _, _, ann, bob = await _pair(calls_world)
    call = (await ann.request("call.invite", conv=conv))["call"]
    await bob.next_event("call.incoming")
    await ann.request("call.hangup", call=call)
    ev = await bob.next_event("call.ended")
    assert ev["reason"] == "cancelled"
    rec = (await _call_records(bob, conv))[0]
    assert rec["call"]["outcome"] == "missed" and rec["call"]["reason"] == "cancelled"


async def test_disconnects(calls_world):
    """A party's device disconnecting ends an active call ("disconnected", with duration);
    the caller's device disconnecting while it rings cancels it (a missed call)."""
    conv, _, _, ann, bob = await _pair(calls_world)
    call = (await ann.request("call.invite", conv=conv))["call"]
    await bob.next_event("call.incoming")
    await bob.request("call.accept", call=call)
    await ann.next_event("call.accepted")
    bob.abort()
    ev = await ann.next_event("call.ended", timeout=5)
    assert ev["reason"] == "disconnected"
    rec = (await _call_records(ann, conv))[0]
    assert rec["call"]["outcome"] == "ended" and rec["call"]["reason"] == "disconnected"
    bob2 = await _device(calls_world, "bob", "d2")
    call = (await ann.request("call.invite", conv=conv))["call"]
    await bob2.next_event("call.incoming")
    ann.abort()
    ev = await bob2.next_event("call.ended", timeout=5)
    assert ev["reason"] == "cancelled" and ev["call"] == call


async def test_caller_hangs_up_and_shutdown_ends_calls(sqlite_db):
    w = await start_world(make_settings(sqlite_db, calls={"ring_timeout_seconds": 30}))
    stopped = False
    try:
        conv, ua, _, ann, bob = await _pair(w)
        call = (await ann.request("call.invite", conv=conv, media="audio"))["call"]
        await bob.next_event("call.incoming")
        await bob.request("call.accept", call=call)
        await ann.next_event("call.accepted")
        await ann.request("call.hangup", call=call)
        ev = await bob.next_event("call.ended")
        assert ev["reason"] == "hangup" and ev["by"] == ua["id"] and ev["duration"] >= 0
        # a ringing call owned by a server that shuts down ends for everyone
        call = (await ann.request("call.invite", conv=conv))["call"]
        await bob.next_event("call.incoming")
        await w.server.stop(drain_seconds=0.5)
        stopped = True
        for c in (ann, bob):
            ev = await c.next_event("call.ended")
            assert ev["reason"] == "server_shutdown" and ev["call"] == call
    finally:
        await w.close()
        if not stopped:
            await w.server.stop(drain_seconds=0.5)


async def test_refusals(calls_world):
    conv, _, _, ann, bob = await _pair(calls_world)
    _, _, cyd = await calls_world.user("cyd")
    assert cyd is not None
    group = (await ann.request("conv.create", kind="group", members=["bob"], title="g"))["conv"]
    with pytest.raises(ClientError) as e:
        await ann.request("call.invite", conv=group)
    assert e.value.code == "forbidden"
    with pytest.raises(ClientError) as e:
        await cyd.request("call.invite", conv=conv)
    assert e.value.code == "not_found"
    with pytest.raises(ClientError) as e:
        await ann.request("call.invite", conv=conv, media="hologram")
    assert e.value.code == "bad_field"
    await calls_world.server.store.create_user("robot", "!bot", "Robot", "bot")
    to_bot = (await ann.request("conv.create", kind="direct", members=["robot"]))["conv"]
    with pytest.raises(ClientError) as e:
        await ann.request("call.invite", conv=to_bot)
    assert e.value.code == "forbidden"
    call = (await ann.request("call.invite", conv=conv))["call"]
    with pytest.raises(ClientError) as e:  # no media before the answer
        await ann.request("call.sdp", call=call, sdp_type="offer", sdp="v=0")
    assert e.value.code == "conflict"
    with pytest.raises(ClientError) as e:  # a stranger learns nothing about the call
        await cyd.request("call.accept", call=call)
    assert e.value.code == "not_found"
    with pytest.raises(ClientError) as e:  # the caller cannot accept its own call
        await ann.request("call.accept", call=call)
    assert e.value.code == "forbidden"
    with pytest.raises(ClientError) as e:
        await ann.request("call.accept", call="nope.nope")
    assert e.value.code == "not_found"
    await ann.request("call.hangup", call=call)


async def test_ice_servers_with_turn_rest_credentials(sqlite_db):
    secret = "s3cret-shared-with-coturn"
    s = make_settings(
        sqlite_db,
        calls={
            "stun_urls": "stun:turn.example.org:3478",
            "turn_urls": "turn:turn.example.org:3478?transport=udp, turns:turn.example.org:5349",
            "turn_secret": secret,
            "turn_ttl_seconds": 3600,
        },
    )
    w = await start_world(s)
    try:
        u, _, c = await w.user("ann")
        assert c is not None
        r = await c.request("call.ice_servers")
        stun, turn = r["ice_servers"]
        assert stun == {"urls": ["stun:turn.example.org:3478"]}
        assert turn["urls"] == [
            "turn:turn.example.org:3478?transport=udp",
            "turns:turn.example.org:5349",
        ]
        expiry, _, who = turn["username"].partition(":")
        assert who == str(u["id"]) and 3500 < int(expiry) - time.time() <= 3600
        mac = hmac.new(secret.encode(), turn["username"].encode(), hashlib.sha1).digest()
        assert turn["credential"] == base64.b64encode(mac).decode()
        assert r["ttl"] == 3600
        from berrychat.config import redacted

        assert redacted(s)["calls"]["turn_secret"] == "***"
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.5)


async def test_calls_across_processes_through_redis(sqlite_db, redis_server):
    """Caller on one process, the callee's two devices on two processes: ringing, accept,
    answered elsewhere, SDP/ICE and hang-up cross Redis; busy is seen cluster-wide; a device
    disconnecting on a non-owning process ends the call."""
    s = make_settings(sqlite_db, redis=redis_server.settings(), calls={"ring_timeout_seconds": 30})
    servers = [Server(s), Server(s)]
    for srv in servers:
        await srv.start()
    w1, w2 = World(servers[0]), World(servers[1])
    try:
        conv, ua, _, ann, bob1 = await _pair(w1)
        bob2 = await _device(w2, "bob", "phone")
        _, _, cyd = await w2.user("cyd")
        assert cyd is not None
        conv2 = (await cyd.request("conv.create", kind="direct", members=["bob"]))["conv"]
        await asyncio.sleep(0.2)  # bob2's shard subscription
        call = (await ann.request("call.invite", conv=conv))["call"]
        assert call.startswith(servers[0].calls.pid)
        await bob1.next_event("call.incoming")
        await bob2.next_event("call.incoming")
        await bob2.request("call.ringing", call=call)
        await ann.next_event("call.ringing")
        await bob2.request("call.accept", call=call)  # forwarded to the owner (process 1)
        assert (await ann.next_event("call.accepted"))["device"] == "phone"
        assert (await bob1.next_event("call.ended"))["reason"] == "answered_elsewhere"
        await ann.request("call.sdp", call=call, sdp_type="offer", sdp="offer-sdp")
        assert (await bob2.next_event("call.sdp"))["sdp"] == "offer-sdp"
        await bob2.request("call.ice", call=call, candidate="candidate:x")
        assert (await ann.next_event("call.ice"))["candidate"] == "candidate:x"
        # busy cluster-wide: cyd (process 2) calls bob, whose call is owned by process 1
        r = await cyd.request("call.invite", conv=conv2)
        assert r["reason"] == "busy"
        # bob's device on process 2 drops: the owner on process 1 ends the call
        bob2.abort()
        ev = await ann.next_event("call.ended", timeout=10)
        assert ev["reason"] == "disconnected"
        rec = await _call_records(ann, conv)
        assert rec[0]["call"]["outcome"] == "ended"
        # hang-up forwarded from the non-owning process
        bob3 = await _device(w2, "bob", "tablet")
        await asyncio.sleep(0.2)
        call = (await ann.request("call.invite", conv=conv))["call"]
        await bob3.next_event("call.incoming")
        await bob3.request("call.accept", call=call)
        await ann.next_event("call.accepted")
        await bob3.request("call.hangup", call=call)
        ev = await ann.next_event("call.ended", timeout=10)
        assert ev["reason"] == "hangup" and ev["by"] != ua["id"]
        # a call id of a process that is not running: refused at once, not after a timeout
        t0 = time.monotonic()
        with pytest.raises(ClientError) as e:
            await bob3.request("call.hangup", call="0123456789abcdef.0123")
        assert e.value.code == "not_found" and time.monotonic() - t0 < 2
    finally:
        for w in (w1, w2):
            await w.close()
        for srv in servers:
            await srv.stop(drain_seconds=0.2)


async def test_signalling_is_rate_limited(sqlite_db):
    w = await start_world(make_settings(sqlite_db, limits={"messages_per_user": 3}))
    try:
        _, _, c = await w.user("ann")
        assert c is not None
        for _ in range(3):
            await c.request("call.ice_servers")
        with pytest.raises(ClientError) as e:
            await c.request("call.ice_servers")
        assert e.value.code == "rate_limited"
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.5)
