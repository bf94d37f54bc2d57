"""One TCP connection: HTTP/1.1 until it upgrades to a WebSocket, then BerryChat frames.

No task and no timer per connection: reading is the protocol callback, writing is a byte queue
that the gateway flushes once per loop tick, timeouts are checked by the gateway's sweeper.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from .. import PROTOCOL_VERSION
from ..background import spawn
from ..http.body import BodyReader
from ..protocol import codes
from ..protocol.codes import ChatError
from ..protocol.frames import FrameError, ack, encode, error, parse_client_frame
from ..protocol.http11 import (
    Body,
    FileResponse,
    HttpError,
    Request,
    RequestParser,
    build_response,
    upgrade_response,
)
from ..protocol.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    WebSocketError,
    accept_key,
    encode_close,
    encode_frame,
    valid_client_key,
)

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger(__name__)

HTTP, WS, CLOSED = 0, 1, 2
PING_FRAME = encode_frame(OP_PING, b"")
MAX_INFLIGHT = 256  # unanswered requests per connection before the server stops reading it
# An upload answered early (refused) is read to its end and dropped when at most this much is
# left, so the client sees the answer; the sweeper ends the wait after CLOSING_GRACE seconds.
LINGER_BYTES = 32 << 20


class Connection(asyncio.Protocol):
    __slots__ = (
        "gw",
        "transport",
        "state",
        "http",
        "ws",
        "out",
        "out_bytes",
        "dirty",
        "last_rx",
        "opened",
        "last_ping",
        "closing",
        "closing_since",
        "hard_close",
        "authed",
        "hello_pending",
        "user_id",
        "token_hash",
        "device_id",
        "bad_frames",
        "http_queue",
        "http_busy",
        "peer",
        "attached",
        "inflight",
        "paused",
        "rx_t0",
        "counted",
        "upload",
        "write_paused",
        "drain_waiter",
        "__weakref__",
    )

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.transport: asyncio.Transport | None = None
        self.state = HTTP
        self.http: RequestParser | None = RequestParser(
            max_body_bytes=gw.settings.limits.http_max_body_bytes, stream=gw.stream_body
        )
        self.ws: FrameParser | None = None
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.dirty = False
        now = time.monotonic()
        self.last_rx = now
        self.opened = now
        self.last_ping = now
        self.closing = False
        self.closing_since = 0.0
        self.hard_close = False
        self.authed = False
        self.hello_pending = False
        self.user_id = 0
        self.token_hash = ""
        self.device_id = ""
        self.bad_frames = 0
        self.http_queue: list[Request] | None = None
        self.http_busy = False
        self.peer = ""
        self.attached = False
        self.inflight = 0
        self.paused = False
        self.rx_t0 = 0.0
        self.counted = False
        self.upload: BodyReader | None = None  # the streamed request body being received
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        self.gw.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.out = []
        self.out_bytes = 0
        self.gw.conns.discard(self)
        self._detach()
        self.transport = None
        if self.upload is not None:
            self.upload.connection_lost()
            self.upload = None
        self.resume_writing()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        self.rx_t0 = time.perf_counter()
        if self.state == WS:
            self._ws_data(data)
        elif self.state == HTTP:
            self._http_data(data)

    # ---- request backpressure: stop reading while too many requests are unanswered ----------
    def begin_request(self) -> None:
        self.inflight += 1
        if self.inflight >= MAX_INFLIGHT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def end_request(self) -> None:
        self.inflight -= 1
        if (
            self.paused
            and self.inflight <= MAX_INFLIGHT // 2
            and self.transport is not None
            and not self.gw.draining
        ):
            self.paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    # ---- output --------------------------------------------------------------------------
    def send_bytes(self, data: bytes, answer: bool = False) -> None:
        """Queue an encoded frame; flushed with everything else at the end of this tick.

        Pushes count against `limits.out_queue_bytes` (slow consumer: close 4000). Answers to
        the client's own requests (`answer=True`) do not: they are bounded by the request
        backpressure instead, and a history page may be larger than the push budget."""
        if self.closing or self.state != WS:
            return
        t = self.transport
        if t is None:
            return
        if (
            not answer
            and self.out_bytes + len(data) + t.get_write_buffer_size() > self.gw.out_limit
        ):
            self.close_ws(codes.CLOSE_SLOW_CONSUMER, "slow consumer: reconnect and resync", True)
            self.gw.slow_consumers += 1
            return
        self.out.append(data)
        self.out_bytes += len(data)
        self.gw.frames_out += 1
        if not self.dirty:
            self.dirty = True
            self.gw.mark_dirty(self)

    def send_obj(self, obj: dict[str, Any]) -> None:
        """Queue an answer (ack or error)."""
        self.send_bytes(encode(obj), True)

    def send_error(self, fid: Any, re: str | None, code: str, message: str) -> None:
        m = self.gw.metrics
        if m is not None:
            m.errors.inc(code)
        self.send_obj(error(fid, re, code, message, codes.retryable(code)))

    def close_ws(self, code: int, reason: str, hard: bool = False, echo: bool = False) -> None:
        """Send a close frame and detach. `hard`: close TCP after it is written instead of
        waiting for the peer's close frame (dead or slow peers). `echo`: the answer to the
        peer's own close frame (not counted as a close the server started: the peer chooses
        that code, any of 3000-4999, and would otherwise mint metric labels)."""
        if self.state == HTTP:
            if self.transport is not None:
                self.transport.close()
            return
        if self.state != WS or self.closing:
            return
        self.closing = True
        self.hard_close = hard
        self.closing_since = time.monotonic()
        m = self.gw.metrics
        if m is not None and not echo:
            m.closes.inc(str(code))
        self._detach()
        self.out.append(encode_close(code, reason))
        if not self.dirty:
            self.dirty = True
            self.gw.mark_dirty(self)
        if self.paused and not hard and self.transport is not None and not self.gw.draining:
            self.paused = False  # read again: the peer's close reply ends the connection
            self.transport.resume_reading()

    def _detach(self) -> None:
        if self.attached:
            self.attached = False
            if self.gw.hub.detach(self):
                self.gw.user_gone(self.user_id)
            self.gw.conn_closed(self)
        if self.counted:
            self.counted = False
            self.gw.uncount(self.user_id)

    # ---- HTTP ----------------------------------------------------------------------------
    def _http_data(self, data: bytes) -> None:
        assert self.http is not None
        try:
            events = self.http.events(data)
        except HttpError as e:
            self._http_fail(e.status, e.message)
            return
        for req in events:
            if isinstance(req, Body):
                if self.upload is not None:
                    self.upload.push(req.data, req.end)
                    if req.end:
                        self.upload = None
                continue
            if self.closing:
                continue  # lingering after a refused upload: nothing more is served
            if req.streaming:
                self._start_upload(req)
            elif (req.header("upgrade") or "").lower() == "websocket":
                if self.http_busy or self.http_queue:
                    self._http_fail(400, "a WebSocket upgrade must not be pipelined")
                    return
                self._upgrade(req)
                return
            if self.http_queue is None:
                self.http_queue = []
            if len(self.http_queue) >= 64:
                self._http_fail(429, "too many pipelined requests")
                return
            self.http_queue.append(req)
        if self.http_queue and not self.http_busy:
            self.http_busy = True
            spawn(self._serve_http())

    def _start_upload(self, req: Request) -> None:
        t = self.transport
        assert t is not None

        def resume() -> None:
            if self.transport is not None and not self.paused:
                self.transport.resume_reading()

        def send_continue() -> None:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        expect = (req.header("expect") or "").lower() == "100-continue"
        self.upload = BodyReader(
            req.content_length, t.pause_reading, resume, send_continue if expect else None
        )
        req.extra["body"] = self.upload

    async def _send_file(self, resp: FileResponse) -> None:
        """Write a file response in chunks, waiting whenever the socket buffer is full."""
        t = self.transport
        assert t is not None
        t.write(bytes(resp))
        left = resp.length
        with open(resp.path, "rb") as f:
            f.seek(resp.offset)
            while left > 0 and self.transport is not None and not t.is_closing():
                chunk = f.read(min(65536, left))
                if not chunk:  # the file shrank: cut the connection, the length was promised
                    t.close()
                    return
                left -= len(chunk)
                t.write(chunk)
                if self.write_paused:
                    self.drain_waiter = asyncio.get_running_loop().create_future()
                    try:
                        await self.drain_waiter
                    finally:
                        self.drain_waiter = None

    def _http_fail(self, status: int, message: str) -> None:
        if self.transport is not None:
            code = {
                404: "not_found",
                413: "too_large",
                429: "rate_limited",
                503: "unavailable",
            }.get(status, "bad_request")
            body = json.dumps({"error": {"code": code, "message": message}}).encode()
            self.transport.write(build_response(status, body, keep_alive=False))
            self.transport.close()
        self.state = CLOSED

    async def _serve_http(self) -> None:
        try:
            while self.http_queue and self.transport is not None:
                req = self.http_queue.pop(0)
                req.extra["peer"] = self.peer
                try:
                    resp = await self.gw.http_handler(req)
                except Exception:
                    log.exception("HTTP handler failed")
                    resp = build_response(500, b'{"error":{"code":"internal"}}')
                if self.transport is None:
                    return
                body = req.extra.get("body")
                linger = body is not None and not body.complete
                if linger:
                    req.keep_alive = False  # the rest of an unread body cannot be skipped
                if isinstance(resp, FileResponse):
                    await self._send_file(resp)
                else:
                    self.transport.write(resp)
                if self.transport is None:
                    return
                if linger and body.length - body.received <= LINGER_BYTES:
                    self.closing = True  # the sweeper aborts after CLOSING_GRACE at most
                    self.closing_since = time.monotonic()
                    body.discard(self.transport.close)
                    self.http_queue = None
                    return
                if not req.keep_alive:
                    self.transport.close()
                    self.state = CLOSED
                    return
        finally:
            self.http_busy = False

    def _upgrade(self, req: Request) -> None:
        t = self.transport
        if t is None:
            return
        if req.method != "GET" or req.path not in self.gw.ws_paths:
            self._http_fail(404, "no WebSocket endpoint here (use /ws)")
            return
        key = req.header("sec-websocket-key")
        if (
            "upgrade" not in req.header("connection", "").lower()
            or req.header("sec-websocket-version") != "13"
            or not valid_client_key(key)
        ):
            t.write(
                build_response(
                    400,
                    b'{"error":{"code":"bad_request","message":"bad WebSocket handshake"}}',
                    headers={"Sec-WebSocket-Version": "13"},
                    keep_alive=False,
                )
            )
            t.close()
            self.state = CLOSED
            return
        if self.gw.draining:
            self._http_fail(503, "server is draining; reconnect elsewhere")
            return
        assert key is not None and self.http is not None
        self.peer = self.gw.chat.rates.client_ip(req, self.peer)
        rest = self.http.buffered
        self.http = None
        self.http_queue = None
        self.state = WS
        self.ws = FrameParser(server=True, max_message=self.gw.settings.limits.max_frame_bytes)
        t.write(upgrade_response(accept_key(key)))
        self.opened = time.monotonic()
        token = req.query.get("token")
        if token:  # optional: authenticate from the URL, same as a first hello frame
            self._start_hello(None, {"v": PROTOCOL_VERSION, "token": token})
        if rest:
            self._ws_data(rest)

    # ---- WebSocket -----------------------------------------------------------------------
    def _ws_data(self, data: bytes) -> None:
        if self.closing:
            # Only the peer's close frame matters now.
            try:
                msgs = self.ws.feed(data) if self.ws is not None else []
            except WebSocketError:
                msgs = []
            if any(m.opcode == OP_CLOSE for m in msgs) and self.transport is not None:
                self.gw.flush_now(self)
                self.transport.close()
            return
        assert self.ws is not None
        try:
            msgs = self.ws.feed(data)
        except WebSocketError as e:
            self.gw.protocol_errors += 1
            self.close_ws(e.code, e.reason, True)
            return
        for m in msgs:
            op = m.opcode
            if op == OP_TEXT:
                assert isinstance(m.data, str)
                self._on_text(m.data)
            elif op == OP_PING:
                pong = encode_frame(OP_PONG, m.data if isinstance(m.data, bytes) else b"")
                self.send_bytes(pong, True)
            elif op == OP_PONG:
                pass
            elif op == OP_CLOSE:
                code = m.close_code if m.close_code not in (None, 1005) else 1000
                self.close_ws(code, "", True, echo=True)
                return
            elif op == OP_BINARY:
                self.close_ws(codes.CLOSE_UNSUPPORTED_DATA, "binary frames are not supported", True)
                return
            if self.closing:
                return

    def _on_text(self, text: str) -> None:
        gw = self.gw
        gw.frames_in += 1
        try:
            ftype, fid, fields = parse_client_frame(
                text, max_text=gw.settings.limits.max_text_chars
            )
        except FrameError as e:
            self._bad_frame(e.frame_id, e.frame_type, e.code, e.message)
            return
        if not self.authed:
            if ftype == "hello":
                if self.hello_pending:
                    self._bad_frame(fid, ftype, "conflict", "hello already in progress")
                else:
                    self._start_hello(fid, fields)
            elif ftype == "ping":
                self.send_obj(ack(fid, "ping", server_time=int(time.time() * 1000)))
            else:
                self._bad_frame(fid, ftype, "not_authenticated", "send hello first")
            return
        gw.dispatch(self, ftype, fid, fields)

    def _bad_frame(self, fid: Any, ftype: str | None, code: str, message: str) -> None:
        self.bad_frames += 1
        self.gw.bad_frames += 1
        self.send_error(fid, ftype, code, message)
        if self.bad_frames >= self.gw.settings.limits.bad_frames_before_close:
            self.close_ws(codes.CLOSE_BAD_FRAMES, "too many invalid frames")

    # ---- authentication ------------------------------------------------------------------
    def _start_hello(self, fid: Any, fields: dict[str, Any]) -> None:
        self.hello_pending = True
        spawn(self._hello(fid, fields))

    async def _hello(self, fid: Any, fields: dict[str, Any]) -> None:
        gw = self.gw
        try:
            if self.authed:
                self.send_error(fid, "hello", "conflict", "already authenticated")
                return
            if fields["v"] != PROTOCOL_VERSION:
                self.send_error(
                    fid, "hello", "bad_field", f"v: this server speaks {PROTOCOL_VERSION}"
                )
                self.close_ws(codes.CLOSE_UNSUPPORTED_VERSION, "unsupported protocol version")
                return
            try:
                s = await gw.chat.accounts.authenticate(fields["token"])
            except ChatError as e:
                self.send_error(fid, "hello", e.code, e.message)
                if e.code == "account_disabled":
                    self.close_ws(codes.CLOSE_DISABLED, "account disabled")
                elif e.code == "unavailable":
                    self.close_ws(codes.CLOSE_INTERNAL, "database unavailable; retry later")
                else:
                    self.close_ws(codes.CLOSE_AUTH, "authentication failed: log in again")
                return
            except Exception as e:
                log.warning("hello failed: %s", e)
                self.send_error(fid, "hello", "unavailable", "cannot authenticate now")
                self.close_ws(codes.CLOSE_INTERNAL, "database unavailable; retry later")
                return
            if self.state != WS or self.closing:
                return
            self.user_id = s["user_id"]
            self.token_hash = s["token_hash"]
            self.device_id = s["device_id"]
            ok, first = gw.hub.attach(self)
            if not ok:
                self.send_error(fid, "hello", "rate_limited", "too many connections")
                self.close_ws(codes.CLOSE_TOO_MANY, "too many connections")
                return
            self.attached = True
            if first:
                await gw.hub.broker.wait_routed(self.user_id)
                if self.closing or self.state != WS:
                    return  # closed meanwhile (already detached)
            state = gw.chat.state
            if state.shared:  # the per-user cap counts every process
                try:
                    n = await state.conn_add(self.user_id, 1)
                except Exception as e:
                    log.warning("connection count not shared: %s", e)
                    n = 0
                else:
                    self.counted = True
                if n > gw.hub.max_per_user or self.closing or self.state != WS:
                    self._detach()
                    self.send_error(fid, "hello", "rate_limited", "too many connections")
                    self.close_ws(codes.CLOSE_TOO_MANY, "too many connections")
                    return
            self.authed = True
            lim = gw.settings.limits
            hb = gw.settings.heartbeat
            self.send_obj(
                ack(
                    fid,
                    "hello",
                    v=PROTOCOL_VERSION,
                    user={
                        "id": s["user_id"],
                        "username": s["username"],
                        "display_name": s["display_name"],
                        "role": s["role"],
                    },
                    device_id=s["device_id"],
                    expires_at=s["expires_at"],
                    server_time=int(time.time() * 1000),
                    heartbeat={"interval": hb.interval_seconds, "timeout": hb.timeout_seconds},
                    limits={
                        "max_frame_bytes": lim.max_frame_bytes,
                        "max_text_chars": lim.max_text_chars,
                        "max_members": lim.max_members,
                        "history_page": lim.history_page,
                        "recall_window_seconds": lim.recall_window_seconds,
                        "edit_window_seconds": lim.edit_window_seconds,
                    },
                    presence=gw.settings.presence.enabled,
                )
            )
            if first:
                await gw.chat.presence.set(self.user_id, "online")
        finally:
            self.hello_pending = False
