"""A call's owning process dies without stopping (SIGKILL): the other processes notice it from
the owner's expired liveness key and end its calls for their devices (`call.ended` with reason
"server_lost"), release the busy claims and record the call once (docs/protocol.md §18,
"Across processes and Pis"). A Redis outage or a liveness key lost for less than a heartbeat
does not end a live call.

Real components: one `berrychat serve` OS process (the owner, killed with SIGKILL), two servers
in this test process, one SQLite file and a real redis-server shared by all three. The liveness
timings are shortened for the test (every process: key TTL 4 s, heartbeat 1 s; owner checks
every 0.5 s), so the detection bound here is 4 + 1 + 2 * 1 + 2 * 0.5 = 8 s instead of the
production 15 + 5 + 2 * 5 + 2 * 2.5 = 35 s.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness_cluster import ServeProcess, http_get, wait_tcp
from support import (
    PASSWORD,
    REDIS_SERVER,
    TEST_AUTH,
    TEST_LIMITS,
    RedisServer,
    World,
    make_settings,
)

from berrychat import shared
from berrychat.calls import manager
from berrychat.client import Client, ClientError, login
from berrychat.server import Server

TTL, REFRESH, CHECK = 4, 1.0, 0.5
BOUND = TTL + REFRESH + 2 * REFRESH + 2 * CHECK  # seconds from the kill to `call.ended`
SLACK = 10.0  # a busy machine (the loop of this process runs two servers and the clients)

# `berrychat serve` with the test's liveness timings (the same as this process's, below)
_SERVE = (
    "import sys; from berrychat import shared; "
    f"shared.PROC_TTL = {TTL}; shared.PROC_REFRESH = {REFRESH}; "
    "from berrychat.cli import main; sys.exit(main(sys.argv[1:]))"
)


class FastServe(ServeProcess):
    """A real `berrychat serve` process whose liveness key lives TTL seconds."""

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _SERVE, "serve", "--config", str(self.config)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("BERRYCHAT_")},
                cwd=self.config.parent,
            )
        deadline = time.monotonic() + timeout
        wait_tcp(self.port, deadline, self.proc)
        while http_get(self.port, "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready: {self.log_text()[-800:]}")
            time.sleep(0.1)


@pytest.fixture
def fast_liveness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "PROC_TTL", TTL)
    monkeypatch.setattr(shared, "PROC_REFRESH", REFRESH)
    monkeypatch.setattr(manager, "LOST_CHECK", CHECK)


def _settings(db: dict[str, Any], redis: dict[str, Any]) -> Any:
    return make_settings(db, redis=redis, calls={"ring_timeout_seconds": 120})


async def _connect(port: int, name: str, device: str) -> tuple[str, Client]:
    token = (await login("127.0.0.1", port, name, PASSWORD, device))["token"]
    return token, await Client.connect("127.0.0.1", port, token)


async def _records(c: Client, conv: int, call: str) -> list[dict[str, Any]]:
    h = await c.request("history", conv=conv)
    return [m for m in h["messages"] if m["kind"] == "call" and m["call"]["id"] == call]


async def _until(pred: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time: {what}")
        await asyncio.sleep(0.05)


async def test_killed_owner_ends_its_calls_on_the_other_processes(
    tmp_path: Path, redis_server: RedisServer, fast_liveness: None
) -> None:
    """Process V owns two calls: ann (V) -> bob, answered on bob's phone (S1), with a second
    tab of ann's device on S2 and bob's tablet (S2) told `answered_elsewhere`; and cyd (V) ->
    dan (S1), still ringing. V is killed with SIGKILL. Within the bound, S1 and S2 send
    `call.ended {reason:"server_lost"}` to the devices of those calls connected to them (not to
    bob's tablet, which is out of the call), both record each call and the history holds one
    record per call; the claims are released, so the same users can call each other at once
    (with no release they would stay busy for up to 60 s)."""
    db = {"type": "sqlite", "database": str(tmp_path / "chat.db")}
    redis = redis_server.settings()
    s1, s2 = Server(_settings(db, redis)), Server(_settings(db, redis))
    await s1.start()
    await s2.start()
    w1, w2 = World(s1), World(s2)
    cfg = {
        "database": db,
        "redis": redis,
        "auth": dict(TEST_AUTH),
        "limits": dict(TEST_LIMITS),
        "calls": {"ring_timeout_seconds": 120},
        "uploads": {"dir": str(tmp_path / "uploads")},
    }
    victim = FastServe(tmp_path, 0, cfg)
    clients: list[Client] = []
    try:
        await asyncio.to_thread(victim.start)
        _, _, bob_phone = await w1.user("bob", device="phone")
        _, _, dan = await w1.user("dan")
        ua, _, _ = await w1.user("ann", connect=False)
        await w1.user("cyd", connect=False)
        assert bob_phone is not None and dan is not None
        ann_token, ann_v = await _connect(victim.port, "ann", "laptop")
        ann_s2 = await Client.connect("127.0.0.1", s2.port, ann_token)  # same device, 2nd tab
        _, cyd_v = await _connect(victim.port, "cyd", "d1")
        _, bob_tablet = await _connect(s2.port, "bob", "tablet")
        clients += [ann_v, ann_s2, cyd_v, bob_tablet]
        conv = (await ann_v.request("conv.create", kind="direct", members=["bob"]))["conv"]
        conv2 = (await cyd_v.request("conv.create", kind="direct", members=["dan"]))["conv"]
        await asyncio.sleep(0.3)  # shard subscriptions

        call1 = (await ann_v.request("call.invite", conv=conv))["call"]
        vpid = call1.partition(".")[0]
        assert vpid not in (s1.calls.pid, s2.calls.pid)
        await bob_phone.next_event("call.incoming", pred=lambda e: e["call"] == call1)
        await bob_tablet.next_event("call.incoming", pred=lambda e: e["call"] == call1)
        await bob_phone.request("call.accept", call=call1)
        assert (await ann_v.next_event("call.accepted"))["device"] == "phone"
        assert (await ann_s2.next_event("call.accepted"))["device"] == "phone"
        ev = await bob_tablet.next_event("call.ended")
        assert ev["reason"] == "answered_elsewhere"
        call2 = (await cyd_v.request("call.invite", conv=conv2))["call"]
        await dan.next_event("call.incoming", pred=lambda e: e["call"] == call2)
        for srv in (s1, s2):  # both survivors heard the owner announce the calls
            await _until(
                lambda srv=srv: (
                    call2 in srv.calls.remote
                    and getattr(srv.calls.remote.get(call1), "state", "") == "active"
                ),
                "call.seen on every process",
            )

        t0 = time.monotonic()
        victim.kill9()
        got = {}
        for name, c, call in (
            ("bob_phone", bob_phone, call1),
            ("ann_s2", ann_s2, call1),
            ("dan", dan, call2),
        ):
            got[name] = await c.next_event(
                "call.ended", pred=lambda e, call=call: e["call"] == call, timeout=BOUND + SLACK
            )
        elapsed = time.monotonic() - t0
        assert 2 * REFRESH <= elapsed <= BOUND + SLACK, elapsed
        for name, ev in got.items():
            assert ev["reason"] == "server_lost", (name, ev)
        assert got["bob_phone"]["duration"] >= 0 and "by" not in got["bob_phone"]
        assert "duration" not in got["dan"]
        await asyncio.sleep(0.3)
        assert not [e for e in bob_tablet.drain_events() if e["type"] == "call.ended"]
        for srv in (s1, s2):
            assert not srv.calls.remote and not srv.calls.local_parties

        # one record per call, though both survivors stored it
        await _until(lambda: not s1.calls._tasks and not s2.calls._tasks, "records stored")
        rec1 = await _records(bob_phone, conv, call1)
        rec2 = await _records(dan, conv2, call2)
        assert len(rec1) == 1 and len(rec2) == 1, (rec1, rec2)
        assert rec1[0]["call"]["outcome"] == "ended" and rec1[0]["call"]["reason"] == "server_lost"
        assert rec1[0]["from"] == ua["id"] and "duration" in rec1[0]["call"]
        assert rec2[0]["call"]["outcome"] == "missed" and rec2[0]["call"]["reason"] == "server_lost"

        # the claims are gone: bob calls ann back at once, dan calls cyd (reconnected on S2)
        r = await bob_phone.request("call.invite", conv=conv)
        assert r["state"] == "ringing", r
        await ann_s2.next_event("call.incoming", pred=lambda e: e["call"] == r["call"])
        await ann_s2.request("call.accept", call=r["call"])
        await bob_phone.next_event("call.accepted")
        await ann_s2.request("call.hangup", call=r["call"])
        assert (await bob_phone.next_event("call.ended"))["reason"] == "hangup"
        _, cyd2 = await _connect(s2.port, "cyd", "d1")
        clients.append(cyd2)
        await asyncio.sleep(0.3)
        r = await dan.request("call.invite", conv=conv2)
        assert r["state"] == "ringing", r
        await cyd2.next_event("call.incoming", pred=lambda e: e["call"] == r["call"])
        await dan.request("call.hangup", call=r["call"])
        # a request about a lost call: at once not_found
        with pytest.raises(ClientError) as e:
            await bob_phone.request("call.hangup", call=call1)
        assert e.value.code == "not_found"
    finally:
        for c in clients:
            c.abort()
        for w in (w1, w2):
            await w.close()
        victim.stop()
        for srv in (s1, s2):
            await srv.stop(drain_seconds=0.2)


async def test_redis_trouble_does_not_end_a_live_call(tmp_path: Path, fast_liveness: None) -> None:
    """A live call, owned by process A (ann), callee on B (bob): Redis down for longer than
    the detection bound, then restarted (every liveness key lost), then the owner's key deleted
    once more and B checking at once (it sees the owner missing: a single check would end the
    call). The call is never ended and still relays SDP afterwards."""
    if not REDIS_SERVER:
        pytest.skip("redis-server not installed (Debian package redis-server)")
    r = RedisServer()
    r.start()
    db = {"type": "sqlite", "database": str(tmp_path / "chat.db")}
    redis = r.settings()
    a, b = Server(_settings(db, redis)), Server(_settings(db, redis))
    await a.start()
    await b.start()
    wa, wb = World(a), World(b)
    try:
        _, _, ann = await wa.user("ann")
        _, _, bob = await wb.user("bob")
        assert ann is not None and bob is not None
        conv = (await ann.request("conv.create", kind="direct", members=["bob"]))["conv"]
        await asyncio.sleep(0.3)
        call = (await ann.request("call.invite", conv=conv))["call"]
        await bob.next_event("call.incoming")
        await bob.request("call.accept", call=call)
        await ann.next_event("call.accepted")
        await _until(lambda: call in b.calls.remote, "call.seen on B")

        # Redis unreachable for longer than the bound: liveness unknown, not dead
        assert r.proc is not None
        r.proc.terminate()
        r.proc.wait(timeout=10)
        await asyncio.sleep(BOUND + 1)
        assert not [e for e in bob.drain_events() if e["type"] == "call.ended"]
        assert not [e for e in ann.drain_events() if e["type"] == "call.ended"]
        await asyncio.to_thread(r.start)  # empty: every process's liveness key is gone
        await asyncio.sleep(BOUND + 1)
        assert not [e for e in bob.drain_events() if e["type"] == "call.ended"]
        assert call in b.calls.remote

        # the owner's key lost again (as in a restart), B's check right away sees it missing
        rc = b.chat.state.r
        key = f"{redis['prefix']}proc:{a.calls.pid}"
        for _ in range(5):
            b.chat.state._alive.pop(a.calls.pid, None)  # B's cached "alive" answer
            await rc.delete(key)
            await b.calls._check_owners()
            if a.calls.pid in b.calls._gone:
                break
        seen_missing = a.calls.pid in b.calls._gone
        assert call in b.calls.remote
        await asyncio.sleep(BOUND + 1)
        assert a.calls.pid not in b.calls._gone  # seen alive again: the suspicion is dropped

        assert not [e for e in bob.drain_events() if e["type"] == "call.ended"]
        assert not [e for e in ann.drain_events() if e["type"] == "call.ended"]
        assert call in a.calls.calls and call in b.calls.remote
        assert seen_missing  # the check did see the owner's key missing
        # the call still works end to end (the broker is back on the new redis-server)
        deadline = time.monotonic() + 20
        while True:
            await ann.request("call.sdp", call=call, sdp_type="offer", sdp="after-redis")
            try:
                ev = await bob.next_event("call.sdp", timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
        assert ev["sdp"] == "after-redis"
        await bob.request("call.hangup", call=call)
        assert (await ann.next_event("call.ended"))["reason"] == "hangup"
    finally:
        for w in (wa, wb):
            await w.close()
        for srv in (a, b):
            await srv.stop(drain_seconds=0.2)
        r.stop()
