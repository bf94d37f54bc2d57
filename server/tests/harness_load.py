"""Clients chatting continuously through a cluster while faults are injected, recording every
send, ack, push and reconnect; then a check that every acknowledged message reached every member
device exactly once, in per-conversation order (protocol.md §11-12).

Each device keeps its own connection alive like a real client: on a close it backs off as
protocol.md §8 says (1001: at once, spread over 0-2 s; anything else: 0.5-1.5 s, then doubling
with full jitter up to 30 s), says `hello` with its token and runs the resume algorithm (sync,
then history by seq). Sender devices send one message at a time and resend the *same* `cid`
after a timeout, a retryable error or a reconnect, as §11 says. Bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from berrychat.client import Client, ClientError, ConnectionClosed, login, register

PASSWORD = "correct horse battery"


def backoff(attempt: int, close_code: int | None, rng: random.Random) -> float:
    """protocol.md §8: 1001 reconnect at once spread over 0-2 s; else 0.5-1.5 s for the first
    attempt, then doubling up to 30 s with full jitter."""
    if attempt == 0:
        return rng.uniform(0, 2.0) if close_code == 1001 else rng.uniform(0.5, 1.5)
    return rng.uniform(0, min(30.0, 1.0 * 2**attempt))


@dataclass
class Sent:
    cid: str
    conv: int
    phase: str
    sender: int
    seq: int | None = None  # set when acknowledged
    attempts: int = 0


@dataclass
class Device:
    user: str
    user_id: int
    name: str
    token: str
    client: Client | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # state kept across connections (the resume algorithm's local store)
    cursors: dict[int, int] = field(default_factory=dict)
    seen: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    dup_pushes: int = 0
    pushed: set[tuple[int, int]] = field(default_factory=set)  # every (conv, seq) pushed
    reconnects: list[tuple[str, float]] = field(default_factory=list)
    close_codes: Counter = field(default_factory=Counter)
    hello_failures: int = 0
    sent_count: int = 0


class ChatLoad:
    def __init__(
        self,
        port: int,
        *,
        users: int = 6,
        devices_per_user: int = 2,
        send_interval: float = 0.1,
        seed: int = 1,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port
        self.n_users = users
        self.devices_per_user = devices_per_user
        self.send_interval = send_interval
        self.rng = random.Random(seed)
        self.devices: list[Device] = []
        self.members: dict[int, set[int]] = {}  # conv -> user ids
        self.user_convs: dict[int, list[int]] = {}
        self.sent: list[Sent] = []
        self.phase = "setup"
        self._sending = False
        self._stop = False
        self._tasks: list[asyncio.Task[None]] = []
        self._senders: list[asyncio.Task[None]] = []

    # ---- setup ---------------------------------------------------------------------------
    async def setup(self) -> None:
        ids: dict[str, int] = {}
        for u in range(self.n_users):
            name = f"load{u}"
            ids[name] = (await register(self.host, self.port, name, PASSWORD))["id"]
            for d in range(self.devices_per_user):
                s = await login(self.host, self.port, name, PASSWORD, f"dev{d}")
                self.devices.append(Device(name, ids[name], f"{name}/dev{d}", s["token"]))
        for dev in self.devices:
            self._tasks.append(asyncio.create_task(self._keep_connected(dev)))
        await self.wait_all_connected(30)
        first = self.devices[0]
        names = [f"load{u}" for u in range(self.n_users)]
        assert first.client is not None
        group = (
            await first.client.request("conv.create", kind="group", members=names[1:], title="all")
        )["conv"]
        self.members[group] = set(ids.values())
        for u in range(0, self.n_users - 1, 2):  # direct pairs: 0-1, 2-3, ...
            a, b = names[u], names[u + 1]
            dev = next(d for d in self.devices if d.user == a)
            assert dev.client is not None
            conv = (await dev.client.request("conv.create", kind="direct", members=[b]))["conv"]
            self.members[conv] = {ids[a], ids[b]}
        for conv, us in self.members.items():
            for uid in us:
                self.user_convs.setdefault(uid, []).append(conv)

    # ---- connection upkeep ---------------------------------------------------------------
    async def _connect(self, dev: Device) -> Client:
        c = await Client.connect(self.host, self.port, timeout=5)
        c.cursors = dev.cursors  # shared local store: the resume algorithm continues from it
        c.seen = dev.seen
        pushed: set[tuple[int, int]] = set()

        def on_event(e: dict[str, Any], pushed: set[tuple[int, int]] = pushed) -> None:
            if e.get("type") == "msg":
                key = (e["conv"], e["seq"])
                if key in pushed:
                    dev.dup_pushes += 1  # the same event pushed twice on one connection
                pushed.add(key)
                dev.pushed.add(key)

        c.on_event = on_event
        try:
            await c.hello(dev.token)
            await c.resync(page=500)
        except BaseException:
            c.abort()
            raise
        return c

    async def _keep_connected(self, dev: Device) -> None:
        attempt = 0
        lost_at: float | None = None
        code: int | None = None
        while not self._stop:
            try:
                c = await asyncio.wait_for(self._connect(dev), 15)
            except (ClientError, ConnectionClosed, TimeoutError, OSError) as e:
                dev.hello_failures += 1
                code = getattr(e, "code", None) if isinstance(e, ConnectionClosed) else None
                await asyncio.sleep(backoff(attempt, code, self.rng))
                attempt += 1
                continue
            if lost_at is not None:
                dev.reconnects.append((self.phase, time.monotonic() - lost_at))
            attempt = 0
            dev.client = c
            dev.ready.set()
            code, _ = await c.closed
            dev.ready.clear()
            dev.close_codes[code] += 1
            lost_at = time.monotonic()
            if self._stop:
                return
            if code in (4401, 4403, 4409, 4426):
                raise AssertionError(f"{dev.name}: terminal close {code} during a fault test")
            await asyncio.sleep(backoff(0, code, self.rng))
            attempt = 1

    async def wait_all_connected(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*(d.ready.wait() for d in self.devices)), timeout)

    # ---- sending -------------------------------------------------------------------------
    def start_sending(self) -> None:
        self._sending = True
        senders = [d for d in self.devices if d.name.endswith("/dev0")]
        self._senders = [asyncio.create_task(self._send_loop(d)) for d in senders]

    async def stop_sending(self, timeout: float = 30) -> None:
        """Stop starting new messages; each sender finishes (acks) the one it has in hand."""
        self._sending = False
        await asyncio.wait_for(asyncio.gather(*self._senders), timeout)
        self._senders = []

    async def _send_loop(self, dev: Device) -> None:
        convs = self.user_convs[dev.user_id]
        while self._sending:
            dev.sent_count += 1  # cids stay unique across phases (a reused cid is a resend)
            n = dev.sent_count
            s = Sent(f"{dev.name}#{n}", convs[n % len(convs)], self.phase, dev.user_id)
            self.sent.append(s)
            await self._send_one(dev, s)
            await asyncio.sleep(self.send_interval)

    async def _send_one(self, dev: Device, s: Sent) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(dev.ready.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                return
            c = dev.client
            assert c is not None
            s.attempts += 1
            try:
                ack = await c.send_text(s.conv, f"{s.cid} in {s.phase}", cid=s.cid, timeout=5)
            except ClientError as e:
                if not e.retryable:
                    raise AssertionError(f"{s.cid}: not retryable: {e.frame}")
                await asyncio.sleep(0.2)
                continue
            except (ConnectionClosed, TimeoutError, OSError):
                await asyncio.sleep(0.05)
                continue
            assert ack["cid"] == s.cid
            if s.seq is not None and s.seq != ack["seq"]:
                raise AssertionError(f"{s.cid}: acknowledged twice with seqs {s.seq}, {ack['seq']}")
            s.seq = ack["seq"]
            return

    # ---- checking ------------------------------------------------------------------------
    async def resync_all(self, timeout: float = 60) -> None:
        """Every device runs the resume algorithm once more (it may have missed the last push
        of a conversation, which it could not notice as a hole)."""
        await self.wait_all_connected(timeout)

        async def one(d: Device) -> None:
            for _ in range(5):
                c = d.client
                try:
                    assert c is not None
                    await c.resync(page=500)
                    return
                except (ClientError, ConnectionClosed, TimeoutError, OSError):
                    await asyncio.wait_for(d.ready.wait(), timeout)
            raise AssertionError(f"{d.name}: could not resync")

        await asyncio.wait_for(asyncio.gather(*(one(d) for d in self.devices)), timeout)

    def check(self, phase: str, stored: list[tuple[int, int, int, str]]) -> dict[str, Any]:
        """The figures of one phase: sent, acknowledged, delivered, lost, duplicated, order."""
        mine = [s for s in self.sent if s.phase == phase]
        acked = [s for s in mine if s.seq is not None]
        by_key = {(c, q): (snd, cid) for c, q, snd, cid in stored}
        stored_cids = Counter((c, snd, cid) for c, _, snd, cid in stored if cid)
        dup_stored = sum(1 for s in acked if stored_cids[(s.conv, s.sender, s.cid)] > 1)
        lost_store = sum(1 for s in acked if by_key.get((s.conv, s.seq)) != (s.sender, s.cid))
        expected = delivered = by_resync = 0
        problems: list[str] = []
        for d in self.devices:
            for s in acked:
                if d.user_id not in self.members[s.conv]:
                    continue
                expected += 1
                ev = d.seen.get(s.conv, {}).get(s.seq or 0)
                if ev is not None and ev.get("cid") == s.cid and ev.get("from") == s.sender:
                    delivered += 1
                    if (s.conv, s.seq) not in d.pushed:
                        by_resync += 1  # the push was lost; the resume algorithm filled it
                elif len(problems) < 5:
                    problems.append(f"{d.name} lacks {s.cid} (conv {s.conv} seq {s.seq})")
        order_errors = 0
        for d in self.devices:  # each device holds a gap-free stream 1..n per conversation
            for conv in self.members:
                if d.user_id not in self.members[conv]:
                    continue
                seqs = sorted(d.seen.get(conv, {}))
                if seqs != list(range(1, len(seqs) + 1)):
                    order_errors += 1
                    problems.append(f"{d.name}: conv {conv} has holes")
        by_sender: dict[tuple[int, int], list[int]] = {}
        for s in acked:  # one sender's messages are sequenced in the order it sent them
            by_sender.setdefault((s.sender, s.conv), []).append(s.seq or 0)
        order_errors += sum(1 for v in by_sender.values() if v != sorted(v))
        rec = [t for d in self.devices for p, t in d.reconnects if p == phase]
        return {
            "fault": phase,
            "sent": len(mine),
            "acknowledged": len(acked),
            "expected_deliveries": expected,
            "delivered": delivered,
            "filled_by_resync": by_resync,
            "lost": expected - delivered + lost_store,
            "duplicated": dup_stored + sum(d.dup_pushes for d in self.devices),
            "order_errors": order_errors,
            "reconnects": len(rec),
            "reconnect_p50": statistics.median(rec) if rec else 0.0,
            "reconnect_max": max(rec) if rec else 0.0,
            "problems": problems,
        }

    def reset_counters(self) -> None:
        for d in self.devices:
            d.dup_pushes = 0

    async def close(self) -> None:
        self._stop = True
        self._sending = False
        for d in self.devices:
            if d.client is not None:
                with contextlib.suppress(Exception):
                    d.client.abort()
        for t in self._tasks + self._senders:
            t.cancel()
        for t in self._tasks + self._senders:
            with contextlib.suppress(BaseException):
                await t


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| fault | sent | acknowledged | delivered (of expected) | of which by resync | lost "
        "| duplicated | order errors | reconnects | reconnect p50 / max |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['fault']} | {r['sent']} | {r['acknowledged']} | "
            f"{r['delivered']} / {r['expected_deliveries']} | {r['filled_by_resync']} | "
            f"{r['lost']} | {r['duplicated']} | "
            f"{r['order_errors']} | {r['reconnects']} | "
            f"{r['reconnect_p50']:.2f} s / {r['reconnect_max']:.2f} s |"
        )
    return "\n".join(lines)
