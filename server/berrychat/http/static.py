"""The web client's static files (package data in `berrychat/webclient/`), served in front of the
HTTP API: `GET /app/…` serves the client, `GET /` sends browsers (Accept: text/html) there and
leaves every other request to the API.

Only files found in the directory are served (a fixed table, so no path can escape it). Each file
is read once (again when its mtime changes), gzipped once when that saves bytes, and served with a
strong ETag and `Cache-Control: no-cache` (revalidate: file names carry no content hash, and a 304
costs one small round trip).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ..protocol.http11 import Request

ROOT = Path(__file__).resolve().parent.parent / "webclient"
PREFIX = "/app/"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
}
COMPRESSIBLE = {".html", ".js", ".mjs", ".css", ".svg", ".json", ".webmanifest", ".txt"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
        "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
}


@dataclass(slots=True)
class _File:
    mtime: int
    body: bytes
    gz: bytes | None
    etag: str
    ctype: str


class StaticFiles:
    """An HTTP handler: the web client's files, else `fallback` (the API)."""

    def __init__(self, fallback: Callable[[Request], Awaitable[bytes]], root: Path = ROOT) -> None:
        self.fallback = fallback
        self.root = root
        self._names: dict[str, Path] | None = None
        self._cache: dict[str, _File] = {}

    def _table(self) -> dict[str, Path]:
        if self._names is None:
            names: dict[str, Path] = {}
            if self.root.is_dir():
                for dirpath, _dirs, files in os.walk(self.root):
                    for f in files:
                        p = Path(dirpath) / f
                        if p.suffix in TYPES:
                            names[p.relative_to(self.root).as_posix()] = p
            self._names = names
        return self._names

    def _load(self, name: str) -> _File | None:
        path = self._table().get(name)
        if path is None:
            return None
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        f = self._cache.get(name)
        if f is None or f.mtime != mtime:
            body = path.read_bytes()
            gz = None
            if path.suffix in COMPRESSIBLE and len(body) > 256:
                z = gzip.compress(body, compresslevel=9, mtime=0)
                gz = z if len(z) < len(body) else None
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            f = _File(mtime, body, gz, etag, TYPES[path.suffix])
            self._cache[name] = f
        return f

    async def __call__(self, req: Request) -> bytes:
        path = req.path
        if req.method in ("GET", "HEAD"):
            if path == "/" and "text/html" in (req.header("accept") or ""):
                return _response(req, 302, b"", {"Location": PREFIX})
            if path == PREFIX[:-1]:
                return _response(req, 301, b"", {"Location": PREFIX})
            if path.startswith(PREFIX):
                return self._serve(req, path[len(PREFIX) :] or "index.html")
        return await self.fallback(req)

    def _serve(self, req: Request, name: str) -> bytes:
        f = self._load(name)
        if f is None:
            return _response(req, 404, b"not found\n", {"Content-Type": "text/plain"})
        headers = {
            "Content-Type": f.ctype,
            "ETag": f.etag,
            "Cache-Control": "no-cache",
            "Vary": "Accept-Encoding",
            **SECURITY_HEADERS,
        }
        if f.etag in (req.header("if-none-match") or "").replace("W/", "").split(", "):
            return _response(req, 304, b"", headers, length=False)
        body = f.body
        if f.gz is not None and "gzip" in (req.header("accept-encoding") or ""):
            body = f.gz
            headers["Content-Encoding"] = "gzip"
        return _response(req, 200, body, headers)


def _response(
    req: Request, status: int, body: bytes, headers: dict[str, str], *, length: bool = True
) -> bytes:
    reason = {200: "OK", 301: "Moved Permanently", 302: "Found", 304: "Not Modified"}.get(
        status, "Not Found"
    )
    lines = [f"HTTP/1.1 {status} {reason}"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: keep-alive" if req.keep_alive else "Connection: close")
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if req.method == "HEAD" or status == 304 else head + body
