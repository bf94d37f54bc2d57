"""The gateway: all WebSocket connections of this process, write coalescing, the heartbeat
sweeper, and dispatch of client frames to the chat service."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..background import spawn
from ..chat.service import ChatService, op_ack
from ..config import Settings
from ..hub import Hub
from ..metrics import Metrics
from ..protocol import codes
from ..protocol.codes import ChatError
from ..protocol.frames import ack
from ..protocol.http11 import Request
from ..store import Op, OpResult
from .connection import PING_FRAME, WS, Connection

log = logging.getLogger(__name__)

CLOSING_GRACE = 5.0  # seconds to wait for the peer's close frame before aborting


class Gateway:
    def __init__(
        self,
        settings: Settings,
        chat: ChatService,
        hub: Hub,
        http_handler: Callable[[Request], Awaitable[bytes]],
    ) -> None:
        self.settings = settings
        self.chat = chat
        self.hub = hub
        self.http_handler = http_handler
        self.out_limit = settings.limits.out_queue_bytes
        self.ws_paths = ("/ws", "/v1/ws")
        self.conns: set[Connection] = set()
        self._dirty: list[Connection] = []
        self._flush_handle: asyncio.Handle | None = None
        self.draining = False
        self._sweeper: asyncio.Task | None = None
        # counters (exported by /metrics in a later issue)
        self.frames_in = 0
        self.bad_frames = 0
        self.protocol_errors = 0
        self.slow_consumers = 0
        self.writes = 0
        self.frames_out = 0
        self.metrics: Metrics | None = None
        # request head -> size cap when its body is to be streamed (uploads), else None
        self.stream_body: Callable[[Request], int | None] | None = None
        self.calls: Any = None  # the CallManager (calls/manager.py), set by the server

    def conn_closed(self, conn: Connection) -> None:
        """An authenticated connection detached (any reason)."""
        if self.calls is not None:
            self.calls.conn_closed(conn)

    def protocol_factory(self) -> Connection:
        return Connection(self)

    # ---- write coalescing ----------------------------------------------------------------
    def mark_dirty(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty = self._dirty
        self._dirty = []
        for c in dirty:
            self._write(c)

    def flush_now(self, c: Connection) -> None:
        if c.dirty:
            self._write(c)

    def _write(self, c: Connection) -> None:
        c.dirty = False
        out = c.out
        t = c.transport
        if not out or t is None or t.is_closing():
            c.out = []
            c.out_bytes = 0
            return
        c.out = []
        c.out_bytes = 0
        t.write(out[0] if len(out) == 1 else b"".join(out))
        self.writes += 1
        if c.closing and c.hard_close:
            t.close()

    def queued_bytes(self) -> int:
        n = 0
        for c in self.conns:
            t = c.transport
            n += c.out_bytes + (t.get_write_buffer_size() if t is not None else 0)
        return n

    def max_queued_bytes(self) -> int:
        m = 0
        for c in self.conns:
            t = c.transport
            m = max(m, c.out_bytes + (t.get_write_buffer_size() if t is not None else 0))
        return m

    def uncount(self, user_id: int) -> None:
        """A connection counted in the shared per-user connection count closed."""

        async def go() -> None:
            try:
                await self.chat.state.conn_add(user_id, -1)
            except Exception as e:
                log.warning("connection count not shared: %s", e)

        spawn(go())

    # ---- presence hooks ------------------------------------------------------------------
    def user_gone(self, user_id: int) -> None:
        """Last connection of a user on this process closed."""
        if self.chat.presence.enabled:
            spawn(self.chat.presence.set(user_id, "offline"))

    # ---- heartbeats and timeouts: one sweeper for every connection -----------------------
    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        hb = self.settings.heartbeat
        period = max(0.02, min(1.0, hb.interval_seconds / 4))
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep()
                await self.chat.presence.flush()
            except Exception:
                log.exception("sweeper failed")

    def sweep(self) -> None:
        now = time.monotonic()
        hb = self.settings.heartbeat
        hello_timeout = self.settings.limits.hello_timeout_seconds
        http_idle = max(hello_timeout, 30.0)
        for c in list(self.conns):
            t = c.transport
            if t is None:
                continue
            if c.closing:
                if now - c.closing_since > CLOSING_GRACE:
                    t.abort()
            elif c.state == WS:
                idle = now - c.last_rx
                if not c.authed and not c.hello_pending and now - c.opened > hello_timeout:
                    c.close_ws(codes.CLOSE_AUTH, "no hello received in time", True)
                elif idle > hb.timeout_seconds:
                    c.close_ws(codes.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout", True)
                elif idle >= hb.interval_seconds and now - c.last_ping >= hb.interval_seconds:
                    c.last_ping = now
                    c.send_bytes(PING_FRAME)
            elif not c.http_busy and now - c.last_rx > http_idle:
                t.close()

    def quiesce(self) -> None:
        """First drain step: refuse new WebSockets and stop reading frames from existing ones,
        so that the work already accepted can finish (and be acknowledged)."""
        self.draining = True
        for c in list(self.conns):
            t = c.transport
            if t is None:
                continue
            if c.state == WS:
                if not c.paused:
                    c.paused = True
                    t.pause_reading()
            elif not c.http_busy:
                t.close()

    async def drain(self, code: int = codes.CLOSE_GOING_AWAY) -> None:
        """Last drain step: tell every client to reconnect elsewhere."""
        self.quiesce()
        self._flush()
        for c in list(self.conns):
            if c.state == WS:
                c.close_ws(code, "server going away: reconnect elsewhere")
                if c.paused and c.transport is not None and not c.transport.is_closing():
                    # read again: only the peer's close frame (or EOF) is awaited now
                    c.paused = False
                    c.transport.resume_reading()
            elif c.transport is not None and not c.http_busy:
                c.transport.close()
        self._flush()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()

    # ---- frame dispatch ------------------------------------------------------------------
    def dispatch(self, conn: Connection, ftype: str, fid: Any, f: dict[str, Any]) -> None:
        uid = conn.user_id
        if ftype.startswith("msg.") or ftype in _STREAM_OPS:
            err = self.chat.rates.message(uid, conn.peer)
            if err is not None:
                conn.send_error(fid, ftype, err.code, err.message)
                return
            op = _to_op(ftype, uid, f)
            op.t0 = conn.rx_t0
            conn.begin_request()
            self.chat.submit(op, _acker(conn, fid, ftype))
            return
        if ftype == "hello":
            conn.send_error(fid, ftype, "conflict", "already authenticated")
            return
        if ftype == "ping":
            conn.send_obj(ack(fid, "ping", server_time=int(time.time() * 1000)))
            return
        handler = _HANDLERS.get(ftype)
        if handler is None and ftype.startswith("call.") and self.calls is not None:
            calls = self.calls

            async def handler(chat: ChatService, c: Connection, fields: dict[str, Any]) -> Any:
                return await calls.handle(c, ftype, fields)

        if handler is None:  # pragma: no cover - SCHEMAS and _HANDLERS are kept in step
            conn.send_error(fid, ftype, "bad_frame", f"unknown frame type {ftype!r}")
            return
        conn.begin_request()
        spawn(self._run(conn, ftype, fid, f, handler))

    async def _run(
        self,
        conn: Connection,
        ftype: str,
        fid: Any,
        f: dict[str, Any],
        handler: Callable[..., Awaitable[dict[str, Any] | None]],
    ) -> None:
        try:
            payload = await handler(self.chat, conn, f)
        except ChatError as e:
            conn.send_error(fid, ftype, e.code, e.message)
            return
        except Exception:
            log.exception("handler %s failed", ftype)
            conn.send_error(fid, ftype, "internal", "internal error")
            return
        finally:
            conn.end_request()
        conn.send_obj(ack(fid, ftype, **(payload or {})))


_STREAM_OPS = {"conv.rename", "conv.remove", "conv.leave", "conv.role"}


def _to_op(ftype: str, uid: int, f: dict[str, Any]) -> Op:
    conv = f["conv"]
    if ftype == "msg.send":
        return Op(
            "text",
            conv,
            uid,
            f["cid"],
            text=f.get("text", ""),
            target=f.get("reply_to"),
            mentions=f.get("mentions"),
            attachment=f.get("attachment"),
        )
    if ftype == "msg.edit":
        return Op("edit", conv, uid, f["cid"], text=f["text"], target=f["seq"])
    if ftype == "msg.recall":
        return Op("recall", conv, uid, f["cid"], target=f["seq"])
    if ftype == "msg.react":
        return Op(
            "react",
            conv,
            uid,
            f["cid"],
            target=f["seq"],
            emoji=f["emoji"],
            remove=bool(f.get("remove", False)),
        )
    if ftype == "conv.rename":
        return Op("rename", conv, uid, text=f["title"])
    if ftype == "conv.remove":
        return Op("remove", conv, uid, user=f["user"])
    if ftype == "conv.leave":
        return Op("leave", conv, uid)
    if ftype == "conv.role":
        return Op("role", conv, uid, user=f["user"], role=f["role"])
    raise AssertionError(ftype)  # pragma: no cover


def _acker(conn: Connection, fid: Any, ftype: str) -> Callable[[OpResult | None], None]:
    def cb(res: OpResult | None) -> None:
        conn.end_request()
        try:
            payload = op_ack(res)
        except ChatError as e:
            conn.send_error(fid, ftype, e.code, e.message)
            return
        if ftype == "msg.send" or ftype.startswith("msg."):
            payload["cid"] = res.event.get("cid") if res and res.event else None
        conn.send_obj(ack(fid, ftype, **payload))

    return cb


# ---- request/response handlers: (chat, conn, fields) -> ack payload --------------------------
async def _conv_create(chat: ChatService, conn: Connection, f: dict[str, Any]) -> dict[str, Any]:
    return await chat.create_conversation(
        conn.user_id, f["kind"], f.get("members") or [], f.get("title", "")
    )


async def _conv_add(chat: ChatService, conn: Connection, f: dict[str, Any]) -> dict[str, Any]:
    return await chat.add_members(conn.user_id, f["conv"], f["users"])


async def _conv_list(chat: ChatService, conn: Connection, f: dict[str, Any]) -> dict[str, Any]:
    return {"conversations": await chat.list_conversations(conn.user_id)}


async def _conv_get(chat: ChatService, conn: Connection, f: dict[str, Any]) -> dict[str, Any]:
    return {"conversation": await chat.get_conversation(conn.user_id, f["conv"])}


async def _history(chat: ChatService, conn: Connection, f: dict[str, Any]) -> dict[str, Any]:
    return await chat.history(
        conn.user_id, f["conv"], f.get("before"), f.get("after"), f.get("limit")
    )


async def _sync(chat: ChatService, conn: Connection, f: dict[str, Any]) -> dict[str, Any]:
    return await chat.sync(conn.user_id, f["cursors"])


async def _receipt(chat: ChatService, conn: Connection, f: dict[str, Any]) -> dict[str, Any]:
    return await chat.receipt(conn.user_id, f["conv"], f["kind"], f["seq"])


async def _typing(chat: ChatService, conn: Connection, f: dict[str, Any]) -> dict[str, Any]:
    await chat.typing(conn.user_id, f["conv"], f.get("on", True))
    return {}


async def _presence(chat: ChatService, conn: Connection, f: dict[str, Any]) -> dict[str, Any]:
    await chat.presence.set(conn.user_id, f["status"])
    return {"status": f["status"] if chat.presence.enabled else "unknown"}


async def _presence_get(chat: ChatService, conn: Connection, f: dict[str, Any]) -> dict[str, Any]:
    return await chat.presence_get(conn.user_id, f["users"])


async def _media_played(chat: ChatService, conn: Connection, f: dict[str, Any]) -> dict[str, Any]:
    return await chat.media.played(conn.user_id, f["conv"], f["seq"])  # type: ignore[attr-defined]


_HANDLERS: dict[str, Callable[..., Awaitable[dict[str, Any] | None]]] = {
    "conv.create": _conv_create,
    "conv.add": _conv_add,
    "conv.list": _conv_list,
    "conv.get": _conv_get,
    "history": _history,
    "sync": _sync,
    "receipt": _receipt,
    "typing": _typing,
    "presence": _presence,
    "presence.get": _presence_get,
    "media.played": _media_played,
}
