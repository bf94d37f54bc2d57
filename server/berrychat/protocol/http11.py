"""Sans-I/O HTTP/1.1 request parser and response builder (just what BerryChat needs).

Supports the request line, headers, `Content-Length` bodies and keep-alive. Chunked request
bodies are refused (501); clients of this API never need them.

Streamed bodies (uploads): a parser made with `stream=` asks that callback, for every request
head, whether the body should be streamed and up to which size. A streamed request is returned by
`events()` as soon as its head is complete (`req.streaming` is true); its body follows as `Body`
events, piece by piece as the bytes arrive, so the caller never holds the whole body. The size cap
is checked against `Content-Length` before a single body byte is read (413).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import strict_json

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Request:
    method: str
    target: str
    path: str
    query: dict[str, str]
    version: str
    headers: dict[str, str]
    body: bytes = b""
    keep_alive: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    streaming: bool = False  # the body arrives as Body events (see RequestParser.events)
    content_length: int = 0

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        """The body as JSON; raises HttpError(400) if it is not."""
        if not self.body:
            return {}
        try:
            return strict_json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise HttpError(400, "request body is not valid JSON")


@dataclass(slots=True)
class Body:
    """A piece of a streamed request body; `end` is true on the last piece."""

    data: bytes
    end: bool


class RequestParser:
    """Feed bytes, get complete requests. Raises HttpError on malformed input."""

    __slots__ = ("_buf", "_max_header", "_max_body", "_pending", "_stream", "_body_left")

    def __init__(
        self,
        *,
        max_header_bytes: int = 16384,
        max_body_bytes: int = 1 << 20,
        stream: Callable[[Request], int | None] | None = None,
    ) -> None:
        self._buf = bytearray()
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self._pending: Request | None = None
        # stream(req) -> the largest body to accept for a streamed request, or None (buffer it)
        self._stream = stream
        self._body_left = -1  # bytes still expected of the streamed body in progress (-1: none)

    @property
    def buffered(self) -> bytes:
        """Bytes received after the last complete request (e.g. the first WebSocket frame)."""
        return bytes(self._buf)

    def feed(self, data: bytes) -> list[Request]:
        """Complete requests only (for parsers without `stream=`, that is every request)."""
        return [e for e in self.events(data) if isinstance(e, Request)]

    def events(self, data: bytes) -> list[Request | Body]:
        """Requests (streamed ones as soon as their head is complete) and streamed body pieces,
        in arrival order."""
        self._buf += data
        out: list[Request | Body] = []
        while True:
            if self._body_left >= 0:
                n = min(len(self._buf), self._body_left)
                if n == 0 and self._body_left > 0:
                    break
                piece = bytes(self._buf[:n])
                del self._buf[:n]
                self._body_left -= n
                end = self._body_left == 0
                out.append(Body(piece, end))
                if not end:
                    break
                self._body_left = -1
                continue
            if self._pending is None:
                idx = self._buf.find(b"\r\n\r\n")
                if idx < 0:
                    if len(self._buf) > self._max_header:
                        raise HttpError(431, "request headers too large")
                    break
                if idx > self._max_header:
                    raise HttpError(431, "request headers too large")
                head = bytes(self._buf[:idx])
                del self._buf[: idx + 4]
                req = self._parse_head(head)
                cap = self._stream(req) if self._stream is not None else None
                if cap is not None:
                    if req.content_length > cap:
                        raise HttpError(413, f"request body too large (limit {cap} bytes)")
                    req.streaming = True
                    req.extra.pop("need", None)
                    out.append(req)
                    self._body_left = req.content_length
                    continue
                if req.content_length > self._max_body:
                    raise HttpError(413, "request body too large")
                self._pending = req
            req = self._pending
            need = req.extra["need"]
            if len(self._buf) < need:
                break
            req.body = bytes(self._buf[:need])
            del self._buf[:need]
            req.extra.pop("need", None)
            self._pending = None
            out.append(req)
            if req.method == "GET" and req.headers.get("upgrade", "").lower() == "websocket":
                break  # the rest of the buffer belongs to the WebSocket
        return out

    def _parse_head(self, head: bytes) -> Request:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            raise HttpError(400, "bad request")
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise HttpError(505, "HTTP version not supported")
        if not method or not set(method) <= _TOKEN_CHARS:
            raise HttpError(400, "malformed method")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or not set(name) <= _TOKEN_CHARS:
                raise HttpError(400, "malformed header line")
            key = name.lower()
            value = value.strip(" \t")
            if key in headers:
                if key == "content-length":
                    raise HttpError(400, "repeated Content-Length")
                headers[key] = headers[key] + ", " + value
            else:
                headers[key] = value
        if "transfer-encoding" in headers:
            raise HttpError(501, "Transfer-Encoding is not supported; send Content-Length")
        length = 0
        if "content-length" in headers:
            cl = headers["content-length"]
            if not cl.isdigit() or len(cl) > 12:
                raise HttpError(400, "bad Content-Length")
            length = int(cl)
        conn = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in conn
        else:
            keep_alive = "close" not in conn
        split = urlsplit(target)
        req = Request(
            method=method,
            target=target,
            path=unquote(split.path),
            query=dict(parse_qsl(split.query)),
            version=version,
            headers=headers,
            keep_alive=keep_alive,
            content_length=length,
        )
        req.extra["need"] = length
        return req


def build_response(
    status: int,
    body: bytes = b"",
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    keep_alive: bool = True,
) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    if body or status not in (204, 304):
        lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    lines.append("Cache-Control: no-store")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class FileResponse(bytes):
    """A response head (these bytes) whose body is `length` bytes of the file at `path` from
    `offset`: the connection writes the file in chunks instead of holding it in memory."""

    path: str
    offset: int
    length: int

    def __new__(cls, head: bytes, path: str, offset: int, length: int) -> FileResponse:
        obj = super().__new__(cls, head)
        obj.path = path
        obj.offset = offset
        obj.length = length
        return obj


def json_response(status: int, obj: Any, *, keep_alive: bool = True) -> bytes:
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return build_response(status, body, keep_alive=keep_alive)


def upgrade_response(accept: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode("latin-1")
