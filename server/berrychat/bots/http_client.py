"""A small HTTP/1.1 client on asyncio streams, for webhooks and the AI assistant.

One request per connection (`Connection: close`), no pooling: webhook and model calls are few
and slow compared with a TCP handshake on a LAN. Bodies are read by Content-Length, chunked
transfer coding or until EOF, and can be consumed incrementally (server-sent events).
Every wait has a timeout; errors are `HttpClientError` with a short code:
`connect` (refused, unreachable, DNS), `timeout`, `protocol` (not HTTP / malformed),
`closed` (the peer closed before the body ended).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024
MAX_LINE = 1 << 20  # one server-sent event line


class HttpClientError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    _reader: asyncio.StreamReader
    _writer: asyncio.StreamWriter
    _chunked: bool = False
    _left: int | None = None  # Content-Length still to read (None: until EOF or chunked)
    _chunk_left: int = 0
    _done: bool = False
    _buf: bytearray = field(default_factory=bytearray)

    def close(self) -> None:
        try:
            self._writer.close()
        except Exception:
            pass

    async def read_chunk(self, timeout: float) -> bytes:
        """The next piece of the body (b"" at its end)."""
        try:
            return await asyncio.wait_for(self._next(), timeout)
        except TimeoutError:
            raise HttpClientError("timeout", f"no data from the server within {timeout:g} s")
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            raise HttpClientError("closed", f"the server closed the connection: {e}")

    async def _next(self) -> bytes:
        if self._done:
            return b""
        r = self._reader
        if self._chunked:
            if self._chunk_left == 0:
                line = await r.readuntil(b"\r\n")
                size_s = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_s, 16)
                except ValueError:
                    raise HttpClientError("protocol", "bad chunk size") from None
                if size == 0:
                    # trailers end with an empty line
                    while (await r.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    self._done = True
                    return b""
                self._chunk_left = size
            data = await r.read(min(self._chunk_left, 65536))
            if not data:
                raise asyncio.IncompleteReadError(b"", self._chunk_left)
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                await r.readexactly(2)
            return data
        if self._left is not None:
            if self._left == 0:
                self._done = True
                return b""
            data = await r.read(min(self._left, 65536))
            if not data:
                raise asyncio.IncompleteReadError(b"", self._left)
            self._left -= len(data)
            return data
        data = await r.read(65536)
        if not data:
            self._done = True
        return data

    async def read(self, timeout: float, limit: int = 1 << 20) -> bytes:
        """The whole (rest of the) body, at most `limit` bytes (more is cut off)."""
        out = bytearray()
        while len(out) < limit:
            chunk = await self.read_chunk(timeout)
            if not chunk:
                break
            out += chunk
        return bytes(out[:limit])

    async def lines(self, first_timeout: float, idle_timeout: float) -> AsyncIterator[bytes]:
        """The body split into lines (without the line end); `first_timeout` for the first
        data, `idle_timeout` between later reads."""
        timeout = first_timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl]).rstrip(b"\r")
                del self._buf[: nl + 1]
                yield line
                continue
            chunk = await self.read_chunk(timeout)
            timeout = idle_timeout
            if not chunk:
                if self._buf:
                    line = bytes(self._buf)
                    self._buf.clear()
                    yield line
                return
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise HttpClientError("protocol", "line too long in the response")


def _target(url: str) -> tuple[str, str, int, bool, str]:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise HttpClientError("protocol", f"not an http(s) URL: {url!r}")
    tls = u.scheme == "https"
    port = u.port or (443 if tls else 80)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    default = port == (443 if tls else 80)
    name = f"[{u.hostname}]" if ":" in u.hostname else u.hostname  # IPv6 literal
    host_header = name if default else f"{name}:{port}"
    return u.hostname, host_header, port, tls, path


async def request(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    connect_timeout: float = 5.0,
    head_timeout: float = 30.0,
) -> Response:
    """Send a request and read the status line and headers; the caller reads the body and
    must `close()` the response."""
    host, host_header, port, tls, path = _target(url)
    ctx = ssl.create_default_context() if tls else None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, limit=MAX_HEAD), connect_timeout
        )
    except TimeoutError:
        raise HttpClientError("timeout", f"connecting to {host}:{port} timed out")
    except (OSError, ssl.SSLError) as e:
        raise HttpClientError("connect", f"cannot connect to {host}:{port}: {e.strerror or e}")
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host_header}", "Connection: close"]
        lines.append("User-Agent: BerryChat")
        for k, v in (headers or {}).items():
            if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
                raise HttpClientError("protocol", "header with a line break")
            lines.append(f"{k}: {v}")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), head_timeout)
        except TimeoutError:
            raise HttpClientError("timeout", f"no response within {head_timeout:g} s")
        except asyncio.LimitOverrunError:
            raise HttpClientError("protocol", "response headers too large")
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise HttpClientError("closed", f"the server closed the connection: {e}")
        resp = _parse_head(head, reader, writer)
    except BaseException:
        writer.close()
        raise
    return resp


def _parse_head(
    head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Response:
    text = head.decode("latin-1").split("\r\n")
    parts = text[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpClientError("protocol", f"not an HTTP response: {text[0][:80]!r}")
    headers: dict[str, str] = {}
    for ln in text[1:]:
        if not ln:
            continue
        k, sep, v = ln.partition(":")
        if not sep:
            raise HttpClientError("protocol", "malformed response header")
        headers[k.strip().lower()] = v.strip()
    resp = Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, reader, writer)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        resp._chunked = True
    elif "content-length" in headers:
        try:
            resp._left = int(headers["content-length"])
        except ValueError:
            raise HttpClientError("protocol", "bad Content-Length") from None
    return resp
