"""A small asyncio client for BerryChat (tests, benchmarks, bots).

    status, body = await http_json(host, port, "POST", "/api/v1/login",
                                   {"username": "ann", "password": "...", "device_id": "laptop"})
    c = await Client.connect(host, port, token=body["token"])
    conv = (await c.request("conv.create", kind="direct", members=["bob"]))["conv"]
    ack = await c.send_text(conv, "hello 👋")          # -> {"seq": 2, "cid": ..., ...}
    ev = await c.next_event("msg")                    # pushes: msg, receipt, typing, presence
    new = await c.resync()                            # after a reconnect: fill every gap by seq
    await c.close()

The client keeps per-conversation cursors (`c.cursors`: highest seq seen with no gap below it)
from pushes and pages, so `resync()` implements the documented resume algorithm.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .protocol.websocket import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    WebSocketError,
    accept_key,
    encode_close,
    encode_frame,
    new_client_key,
)


class ClientError(Exception):
    """The server answered a request with an error frame."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame
        self.code = frame.get("code")
        self.retryable = bool(frame.get("retryable"))


class ConnectionClosed(Exception):
    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}")
        self.code = code
        self.reason = reason


async def http_json(
    host: str,
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    timeout: float = 10.0,
    raw_body: bytes | None = None,
) -> tuple[int, Any]:
    """One HTTP/1.1 request (Connection: close); returns (status, parsed JSON or None)."""
    data = (
        raw_body
        if raw_body is not None
        else (b"" if body is None else json.dumps(body).encode("utf-8"))
    )
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Connection: close",
        f"Content-Length: {len(data)}",
    ]
    if body is not None or raw_body is not None:
        head.append("Content-Type: application/json")
    if token:
        head.append(f"Authorization: Bearer {token}")

    async def go() -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        header, _, payload = raw.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload

    return await asyncio.wait_for(go(), timeout)


async def register(host: str, port: int, username: str, password: str, **kw: Any) -> dict:
    status, body = await http_json(
        host, port, "POST", "/api/v1/register", {"username": username, "password": password, **kw}
    )
    if status != 201:
        raise ClientError(body.get("error", {}) if isinstance(body, dict) else {"code": status})
    return body["user"]


async def login(
    host: str, port: int, username: str, password: str, device_id: str = "default"
) -> dict:
    status, body = await http_json(
        host,
        port,
        "POST",
        "/api/v1/login",
        {"username": username, "password": password, "device_id": device_id},
    )
    if status != 200:
        raise ClientError(body.get("error", {}) if isinstance(body, dict) else {"code": status})
    return body


class Client:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_message: int = 1 << 24,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = FrameParser(server=False, max_message=max_message)
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.cids = itertools.count(1)
        self.closed: asyncio.Future[tuple[int | None, str]] = (
            asyncio.get_running_loop().create_future()
        )
        self.welcome: dict[str, Any] = {}
        self.cursors: dict[int, int] = {}
        self.seen: dict[int, dict[int, dict[str, Any]]] = {}
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.auto_pong = True
        self._close_sent = False
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    # ---- connecting ----------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        token: str | None = None,
        *,
        path: str = "/ws",
        timeout: float = 10.0,
        hello: bool = True,
    ) -> Client:
        async def go() -> Client:
            reader, writer = await asyncio.open_connection(host, port)
            key = new_client_key()
            writer.write(
                (
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode("latin-1")
            )
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            if " 101 " not in lines[0] + " ":
                writer.close()
                raise ConnectionClosed(None, f"handshake refused: {lines[0]}")
            hdrs = {
                k.strip().lower(): v.strip()
                for k, _, v in (ln.partition(":") for ln in lines[1:])
                if k
            }
            if hdrs.get("sec-websocket-accept") != accept_key(key):
                writer.close()
                raise ConnectionClosed(None, "bad Sec-WebSocket-Accept")
            c = cls(reader, writer)
            if hello and token:
                await c.hello(token)
            return c

        return await asyncio.wait_for(go(), timeout)

    @classmethod
    async def connect_url_token(cls, host: str, port: int, token: str) -> Client:
        """Authenticate with `?token=` on the upgrade URL instead of a hello frame."""
        return await cls.connect(host, port, path=f"/ws?token={quote(token)}", hello=False)

    async def hello(self, token: str, v: int = 1) -> dict[str, Any]:
        self.welcome = await self.request("hello", v=v, token=token)
        return self.welcome

    # ---- frames --------------------------------------------------------------------------
    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        self.writer.write(encode_frame(opcode, payload, mask=True, fin=fin))

    def send_json(self, obj: Any) -> None:
        self.send_frame(OP_TEXT, json.dumps(obj, ensure_ascii=False).encode("utf-8"))

    async def request(self, ftype: str, *, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send a frame with a fresh id; return its ack, or raise ClientError."""
        fid = f"r{next(self.ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[fid] = fut
        self.send_json({"type": ftype, "id": fid, **fields})
        try:
            done, _ = await asyncio.wait(
                {fut, self.closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if fut in done:
                r = fut.result()
                if r.get("type") == "error":
                    raise ClientError(r)
                return r
            if self.closed in done:
                code, reason = self.closed.result()
                raise ConnectionClosed(code, reason)
            raise TimeoutError(f"no answer to {ftype} within {timeout}s")
        finally:
            self.pending.pop(fid, None)

    async def next_event(
        self,
        ftype: str | None = None,
        *,
        timeout: float = 5.0,
        pred: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The next push (skipping ones that do not match)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no {ftype or 'event'} within {timeout}s")
            try:
                ev = await asyncio.wait_for(self.events.get(), left)
            except TimeoutError:
                raise TimeoutError(f"no {ftype or 'event'} within {timeout}s") from None
            if (ftype is None or ev.get("type") == ftype) and (pred is None or pred(ev)):
                return ev

    def drain_events(self) -> list[dict[str, Any]]:
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out

    async def _read_loop(self) -> None:
        code: int | None = 1006
        reason = "connection lost"
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for m in self.parser.feed(data):
                    if m.opcode == OP_TEXT:
                        assert isinstance(m.data, str)
                        self._on_frame(json.loads(m.data))
                    elif m.opcode == OP_PING and self.auto_pong:
                        self.send_frame(OP_PONG, m.data if isinstance(m.data, bytes) else b"")
                    elif m.opcode == OP_CLOSE:
                        code, reason = m.close_code, str(m.data)
                        if not self._close_sent:
                            self._close_sent = True
                            with contextlib.suppress(Exception):
                                self.writer.write(encode_close(code or 1000, mask=True))
                        return
        except WebSocketError as e:
            code, reason = e.code, f"client-side protocol error: {e.reason}"
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except Exception as e:  # a malformed server frame: report it as a closure
            code, reason = None, f"client error: {e!r}"
        finally:
            if not self.closed.done():
                self.closed.set_result((code, reason))
            with contextlib.suppress(Exception):
                self.writer.close()

    def _on_frame(self, f: dict[str, Any]) -> None:
        t = f.get("type")
        if t in ("ack", "error") and f.get("id") in self.pending:
            fut = self.pending[f["id"]]
            if not fut.done():
                fut.set_result(f)
            return
        if t == "msg" and isinstance(f.get("conv"), int) and isinstance(f.get("seq"), int):
            self._track(f)
        if self.on_event is not None:
            self.on_event(f)
        self.events.put_nowait(f)

    def _track(self, ev: dict[str, Any]) -> None:
        conv, seq = ev["conv"], ev["seq"]
        store = self.seen.setdefault(conv, {})
        store[seq] = ev
        cur = self.cursors.get(conv, 0)
        while cur + 1 in store:
            cur += 1
        self.cursors[conv] = cur

    # ---- closing -------------------------------------------------------------------------
    async def close(self, code: int = 1000, reason: str = "", timeout: float = 3.0) -> tuple:
        if not self._close_sent and not self.closed.done():
            self._close_sent = True
            with contextlib.suppress(Exception):
                self.writer.write(encode_close(code, reason, mask=True))
        try:
            return await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            self.abort()
            return await self.closed

    def abort(self) -> None:
        self.writer.transport.abort()

    async def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        return await asyncio.wait_for(asyncio.shield(self.closed), timeout)

    # ---- conveniences --------------------------------------------------------------------
    def new_cid(self) -> str:
        return f"c{id(self):x}-{next(self.cids)}"

    async def send_text(
        self, conv: int, text: str, *, cid: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        return await self.request(
            "msg.send", conv=conv, cid=cid or self.new_cid(), text=text, **extra
        )

    async def history(self, conv: int, **kw: Any) -> dict[str, Any]:
        r = await self.request("history", conv=conv, **kw)
        for m in r["messages"]:
            self._track(m)
        return r

    async def resync(self, *, page: int = 200) -> list[dict[str, Any]]:
        """The resume algorithm: send cursors, then pull every changed conversation by seq.
        Returns the events that were new to this client, in seq order per conversation."""
        cursors = {str(k): v for k, v in self.cursors.items()}
        r = await self.request("sync", cursors=cursors)
        new: list[dict[str, Any]] = []
        for conv in r["removed"]:
            self.cursors.pop(conv, None)
            self.seen.pop(conv, None)
        for c in r["changed"]:
            conv = c["conv"]
            after = self.cursors.get(conv, 0)
            while after < c["last_seq"]:
                known = set(self.seen.get(conv, {}))
                h = await self.history(conv, after=after, limit=page)
                new.extend(m for m in h["messages"] if m["seq"] not in known)
                if not h["messages"]:
                    break
                after = h["messages"][-1]["seq"]
                if not h["more"]:
                    break
            self.cursors.setdefault(conv, 0)
        return new
