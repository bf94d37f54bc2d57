"""The generator's minimal WebSocket client: one `asyncio.Protocol` per connection, upgrade and
`hello` in one write, masked with the all-zero key, frames scanned by header only (only
connections that need them parse bodies)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
ZERO_MASK = b"\0\0\0\0"


def client_frame(obj: dict[str, Any]) -> bytes:
    """A masked text frame with the all-zero key (valid; saves XOR work in the generator)."""
    p = json.dumps(obj, separators=(",", ":")).encode()
    n = len(p)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + ZERO_MASK + p


class WS(asyncio.Protocol):
    """One connection. `parse`: decode every text frame (acks, sampled latency); otherwise only
    count `msg` pushes."""

    def __init__(self, gen: Gen, token: str, parse: bool, raw_msgs: bool = False) -> None:
        self.gen = gen
        self.token = token
        self.parse = parse
        # with `parse`: still count `msg` pushes by header only (the open-loop 1:1 senders)
        self.raw_msgs = raw_msgs
        self.t: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.msgs = 0
        # request id -> scheduled send time (open loop); answered through `on_ack`
        self.pending: dict[int, float] = {}
        self.on_ack: Callable[[bool, float], None] | None = None
        self.acks: dict[int, dict[str, Any]] = {}
        self.waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = 0
        self.on_msg: Any = None
        self.refusal: dict[str, Any] | None = None  # the error that answered `hello`

    def connection_made(self, t: asyncio.BaseTransport) -> None:
        self.t = t  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        t.write(  # type: ignore[attr-defined]
            (
                f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            + client_frame({"type": "hello", "id": 0, "v": 1, "token": self.token})
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.closed.done():
            self.closed.set_result(None)
        for f in self.waiters.values():
            if not f.done():
                f.set_exception(ConnectionError("closed"))

    def send(self, obj: dict[str, Any]) -> None:
        if self.t is not None and not self.t.is_closing():
            self.t.write(client_frame(obj))

    def request(self, obj: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        self.ids += 1
        obj["id"] = self.ids
        f: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[self.ids] = f
        self.send(obj)
        return f

    def send_paced(self, obj: dict[str, Any], due: float) -> None:
        """Send a request whose latency counts from `due` (its scheduled time), not from now."""
        self.ids += 1
        obj["id"] = self.ids
        self.pending[self.ids] = due
        self.send(obj)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            if b" 101 " not in bytes(buf[:20]):
                self.t.close()  # type: ignore[union-attr]
                return
            self.upgraded = True
            del buf[: i + 4]
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b1 = buf[pos + 1] & 0x7F
            if b1 == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                hl = 4
            elif b1 == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hl = 10
            else:
                ln = b1
                hl = 2
            if n - pos < hl + ln:
                break
            op = buf[pos] & 0x0F
            s = pos + hl
            if op == 1:
                if (
                    (self.raw_msgs or not self.parse)
                    and buf[s + 9 : s + 12] == b"msg"  # {"type":"msg",...
                    and self.ready.done()
                ):
                    self.msgs += 1
                elif self.parse or not self.ready.done():
                    self._text(json.loads(bytes(buf[s : s + ln])))
            elif op == 9:
                self.t.write(bytes((0x8A, 0x80)) + ZERO_MASK)  # type: ignore[union-attr]
            elif op == 8:
                self.t.close()  # type: ignore[union-attr]
            pos = s + ln
        if pos:
            del buf[:pos]

    def _text(self, f: dict[str, Any]) -> None:
        t = f.get("type")
        if t == "ack" or t == "error":
            fid = f.get("id")
            if fid == 0 and not self.ready.done():
                self.refusal = f if t != "ack" else None
                self.ready.set_result(t == "ack")
                return
            due = self.pending.pop(fid, None)
            if due is not None:
                self.on_ack(t == "ack", due)  # type: ignore[misc]
                return
            w = self.waiters.pop(fid, None)
            if w is not None and not w.done():
                w.set_result(f)
        elif t == "msg":
            self.msgs += 1
            if self.on_msg is not None:
                self.on_msg(f)


class Gen:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.hello_retries = 0  # connect_many(retries=True): hellos the server dropped

    async def connect(
        self, token: str, parse: bool = False, timeout: float = 30.0, raw_msgs: bool = False
    ) -> WS:
        loop = asyncio.get_running_loop()
        _, ws = await asyncio.wait_for(
            loop.create_connection(lambda: WS(self, token, parse, raw_msgs), self.host, self.port),
            timeout,
        )
        if not await asyncio.wait_for(ws.ready, timeout):
            raise ConnectionError(f"hello refused: {ws.refusal}")
        return ws

    async def connect_many(
        self,
        tokens: list[str],
        parse: Any = False,
        concurrency: int = 256,
        timeout: float = 120.0,
        raw_msgs: bool = False,
        retries: bool = False,
    ) -> tuple[list[WS], float]:
        sem = asyncio.Semaphore(concurrency)
        out: list[WS | None] = [None] * len(tokens)

        async def one(i: int) -> None:
            async with sem:
                p = parse(i) if callable(parse) else parse
                for attempt in range(3):  # a hello the server dropped is retried, and counted
                    try:
                        out[i] = await self.connect(tokens[i], p, raw_msgs=raw_msgs)
                        return
                    except ConnectionError:
                        if attempt == 2 or not retries:
                            raise
                        self.hello_retries += 1
                        await asyncio.sleep(0.2)

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(tokens)))), timeout)
        return [w for w in out if w is not None], time.perf_counter() - t0
