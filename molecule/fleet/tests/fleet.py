"""Helpers of the fleet verifier: the virtual Pis' addresses, TLS connections through the
edge's Nginx, per-instance metrics, and a client that reconnects and resends the way the
protocol asks (docs/protocol.md: close 1001 -> reconnect at once, resync; resend with the
same cid until acknowledged)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from berrychat.client import Client, ClientError, ConnectionClosed
from berrychat.protocol.websocket import accept_key, new_client_key
from molecule_podman_hosts import hosts_in, hostvars

REPO = Path(__file__).resolve().parents[3]
DOMAIN = "berrychat.localhost"
NETWORK = os.environ.get("MOLECULE_NETWORK") or "berrychat-test"
PORT_BASE = 8100
# Failures a resilient client tolerates while it reconnects: anything the network, Nginx or a
# draining/restarting server can produce.
TRANSIENT = (OSError, ConnectionClosed, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError)


def workdir(name: str) -> Path:
    """A fresh directory in the scenario's ephemeral directory (pytest's shared temporary
    directories may be pruned by other pytest sessions on the same machine)."""
    base = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY") or tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))


def names(group: str) -> list[str]:
    return [h.removeprefix("podman://") for h in hosts_in(group)]


def podman(*args: str, timeout: float = 120) -> str:
    return subprocess.run(
        ["podman", *args], check=True, capture_output=True, text=True, timeout=timeout
    ).stdout


@cache
def ip_of(name: str) -> str:
    info = json.loads(podman("inspect", name))[0]
    return info["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]


def sql(host: str, query: str) -> list[list[str]]:
    """Run a query as root (unix socket) in the berrychat database of a container."""
    out = podman("exec", host, "mariadb", "-N", "-B", "-e", query, "berrychat")
    return [line.split("\t") for line in out.splitlines()]


def instances() -> list[tuple[str, int]]:
    out = []
    for h in names("chat_servers"):
        n = int(hostvars(h).get("berrychat_processes", 2))
        out += [(h, PORT_BASE + i) for i in range(n)]
    return out


def instance_get(host: str, port: int, path: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(f"http://{ip_of(host)}:{port}{path}", timeout=timeout) as r:
        return r.read()


def connections_per_instance() -> dict[tuple[str, int], int]:
    """`berrychat_connections` (authenticated WebSockets) of every instance, from its /metrics."""
    out = {}
    for h, p in instances():
        text = instance_get(h, p, "/metrics").decode()
        m = re.search(r"^berrychat_connections (\d+)", text, re.M)
        assert m, f"{h}:{p} /metrics has no berrychat_connections"
        out[(h, p)] = int(m.group(1))
    return out


@dataclass
class Edge:
    ip: str
    ctx: ssl.SSLContext

    @classmethod
    def discover(cls) -> Edge:
        edge = names("edge")[0]
        # Trust exactly the certificate the edge serves (self-signed in this fleet) and check
        # the host name against it: a real TLS verification, not "insecure".
        pem = podman("exec", edge, "cat", f"/etc/letsencrypt/live/{DOMAIN}/fullchain.pem")
        ctx = ssl.create_default_context(cadata=pem)
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return cls(ip_of(edge), ctx)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(self.ip, 443, ssl=self.ctx, server_hostname=DOMAIN), 10
        )

    async def http(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {DOMAIN}", "Connection: close"]
        head.append(f"Content-Length: {len(data)}")
        if body is not None:
            head.append("Content-Type: application/json")
        if token:
            head.append(f"Authorization: Bearer {token}")
        reader, writer = await self.open()
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
            raw = b""
            with contextlib.suppress(ssl.SSLError, ConnectionResetError):
                while chunk := await asyncio.wait_for(reader.read(65536), 15):
                    raw += chunk
        finally:
            writer.close()
        header, _, payload = raw.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload

    async def ws(self, token: str) -> Client:
        """A WebSocket to /ws through Nginx over TLS, authenticated with a hello frame."""
        reader, writer = await self.open()
        try:
            key = new_client_key()
            writer.write(
                (
                    f"GET /ws HTTP/1.1\r\nHost: {DOMAIN}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
            lines = head.split("\r\n")
            if " 101 " not in lines[0] + " ":
                raise ConnectionClosed(None, f"handshake refused: {lines[0]}")
            hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
            if hdrs.get("sec-websocket-accept") != accept_key(key):
                raise ConnectionClosed(None, "bad Sec-WebSocket-Accept")
        except BaseException:
            writer.close()
            raise
        c = Client(reader, writer)
        try:
            await c.hello(token)
        except BaseException:
            c.abort()
            raise
        return c

    async def register_and_login(self, username: str, password: str) -> dict[str, Any]:
        # Nginx limits registrations and logins per address (burst, then 429): wait and retry.
        for path, body, ok in (
            ("/api/v1/register", {"username": username, "password": password}, 201),
            ("/api/v1/login", {"username": username, "password": password, "device_id": "t"}, 200),
        ):
            for attempt in range(6):
                status, resp = await self.http("POST", path, body)
                if status != 429:
                    break
                await asyncio.sleep(10 + attempt * 5)
            assert status == ok, f"{path} {username}: {status} {resp}"
        return resp


@dataclass
class Resilient:
    """One user's device: reconnects through the edge after any close, resyncs, and resends
    an unacknowledged message with the same cid until the server acknowledges it."""

    edge: Edge
    token: str
    name: str
    client: Client | None = None
    cursors: dict[int, int] = field(default_factory=dict)
    seen: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    connects: int = 0
    close_codes: list[int | None] = field(default_factory=list)
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    pushes: Counter[tuple[int, int, int]] = field(
        default_factory=Counter
    )  # (connection, conv, seq)

    async def ensure(self, deadline: float) -> Client:
        c = self.client
        if c is not None and not c.closed.done():
            return c
        if c is not None:
            self.close_codes.append(c.closed.result()[0])
            self.client = None
        attempt = 0
        while True:
            try:
                c = await self.edge.ws(self.token)
            except (*TRANSIENT, ClientError) as e:
                self.errors[type(e).__name__] += 1
                attempt += 1
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: no connection within the deadline") from e
                # The protocol's advice: at once, then back off (with jitter), capped.
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))
                continue
            self.connects += 1
            conn = self.connects
            c.cursors, c.seen = self.cursors, self.seen

            def count(ev: dict[str, Any], conn: int = conn) -> None:
                if ev.get("type") == "msg":
                    self.pushes[(conn, ev["conv"], ev["seq"])] += 1

            c.on_event = count
            self.client = c
            try:
                await c.resync()
            except (*TRANSIENT, ClientError) as e:
                self.errors[f"resync {type(e).__name__}"] += 1
                c.abort()
                continue
            return c

    async def send(self, conv: int, text: str, cid: str, *, within: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            c = await self.ensure(deadline)
            try:
                return await c.send_text(conv, text, cid=cid, timeout=10)
            except ClientError as e:
                if not e.retryable or time.monotonic() > deadline:
                    raise
                self.errors[f"error {e.code}"] += 1
                await asyncio.sleep(0.5)
            except TRANSIENT as e:
                if time.monotonic() > deadline:
                    raise
                self.errors[type(e).__name__] += 1
                if not c.closed.done():
                    c.abort()
            self.retries += 1

    async def settle(self, *, within: float = 60) -> None:
        """A fresh connection and a full resync: what the user sees after everything."""
        if self.client is not None:
            self.client.abort()
            await self.client.wait_closed()
        await self.ensure(time.monotonic() + within)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    def stored(self, conv: int) -> dict[int, dict[str, Any]]:
        return self.seen.get(conv, {})


def check_delivery(conv: int, acked: dict[str, int], devices: list[Resilient]) -> dict[str, int]:
    """Every acknowledged message (cid -> seq) is seen exactly once by every device after its
    resync: under its seq, with its cid, and no cid under two seqs. Returns counts."""
    dup_pushes = 0
    for d in devices:
        view = d.stored(conv)
        by_cid: dict[str, list[int]] = {}
        for seq, ev in view.items():
            if ev.get("cid"):
                by_cid.setdefault(ev["cid"], []).append(seq)
        missing = [cid for cid, seq in acked.items() if view.get(seq, {}).get("cid") != cid]
        assert not missing, f"{d.name} lacks {len(missing)} acknowledged messages: {missing[:5]}"
        twice = {cid: s for cid, s in by_cid.items() if len(s) > 1}
        assert not twice, f"{d.name} sees messages stored twice: {list(twice.items())[:5]}"
        if view:
            gaps = [s for s in range(min(view), max(view) + 1) if s not in view]
            assert not gaps, f"{d.name} has gaps in conversation {conv}: {gaps[:10]}"
        dup_pushes += sum(1 for (_, cv, _), n in d.pushes.items() if cv == conv and n > 1)
    assert dup_pushes == 0, f"{dup_pushes} messages were pushed twice on one connection"
    return {"acked": len(acked), "devices": len(devices)}
