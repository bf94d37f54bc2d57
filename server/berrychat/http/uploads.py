"""HTTP endpoints for attachments (docs/protocol.md, "Attachments"):

- `POST /api/v1/uploads` — the body is the file itself (streamed to disk as it arrives);
- `GET /api/v1/uploads/limits` — per-kind size limits;
- `POST /api/v1/files/links` — short-lived signed download URLs (media/links.py) for `<img>`,
  `<audio>`, `<video>` and plain links, which cannot send an Authorization header;
- `GET /api/v1/files/<id>` — the bytes, for members of a conversation that references the file,
  authenticated by the Authorization header or by a signed link (never by `?token=`).
  With `uploads.accel_prefix` set, the answer is an `X-Accel-Redirect` and Nginx sends the file;
  otherwise this process streams it in chunks (Range requests supported).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any
from urllib.parse import quote

from ..chat.service import ChatService
from ..media.links import LINK_PARAMS
from ..media.service import MediaService
from ..protocol.codes import ChatError
from ..protocol.http11 import FileResponse, HttpError, Request

UPLOAD_PATH = "/api/v1/uploads"
_RANGE = re.compile(r"bytes=(\d{0,15})-(\d{0,15})")
INLINE_KINDS = ("image", "voice", "video", "thumbnail", "poster")
AID = re.compile(r"[A-Za-z0-9_-]{8,32}")
MAX_LINKS = 200  # ids per POST /api/v1/files/links


class MediaHttp:
    def __init__(self, media: MediaService, chat: ChatService) -> None:
        self.media = media
        self.chat = chat

    def stream_cap(self, req: Request) -> int | None:
        """The gateway's question for every request head: stream this body, up to what size?"""
        if req.method == "POST" and req.path == UPLOAD_PATH:
            return self.media.max_upload()
        return None

    def routes(self) -> list[tuple[str, re.Pattern[str], Any, bool]]:
        aid = rf"(?P<aid>{AID.pattern})"
        return [
            ("POST", re.compile(re.escape(UPLOAD_PATH)), self.upload, True),
            ("GET", re.compile(r"/api/v1/uploads/limits"), self.limits, False),
            ("POST", re.compile(r"/api/v1/files/links"), self.links, True),
            ("GET", re.compile(rf"/api/v1/files/{aid}"), self.download, False),
        ]

    async def limits(self, req: Request, s: Any) -> tuple[int, Any]:
        return 200, {"limits": self.media.limits()}

    async def upload(self, req: Request, s: dict[str, Any]) -> tuple[int, Any]:
        body = req.extra.get("body")
        if body is None:  # not streamed (cannot happen through the gateway)
            raise HttpError(400, "upload body missing")
        if "content-length" not in req.headers:
            raise HttpError(411, "send Content-Length")
        name = req.query.get("name") or req.header("x-filename")
        att = await self.media.upload(s["user_id"], req.header("content-type"), name, body)
        return 201, {"attachment": att}

    async def links(self, req: Request, s: dict[str, Any]) -> tuple[int, Any]:
        """Signed download URLs for the caller, one per id. Issued for any well-formed id: the
        download decides (an id the caller may not read answers 404 there, as always)."""
        body = req.json()
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_LINKS:
            raise ChatError("bad_field", f"ids: expected a list of 1-{MAX_LINKS} file ids")
        for i in ids:
            if not isinstance(i, str) or not AID.fullmatch(i):
                raise ChatError("bad_field", "ids: every item must be a file id")
        signer = self.media.signer
        user = s["user_id"]
        now = time.time()
        exp = signer.expiry(now)
        out = {i: f"/api/v1/files/{i}?{signer.query(i, user, exp)}" for i in ids}
        # expires_in: clients time links on their own clock, whatever its skew
        return 200, {"links": out, "expires_at": exp * 1000, "expires_in": exp - int(now)}

    async def download(self, req: Request, s: Any, aid: str) -> tuple[int, Any]:
        h = req.header("authorization", "") or ""
        if "token" in req.query:
            # a session token in a URL reaches proxy logs and browser history: never accepted
            # (even next to a valid header: the client must stop putting it there)
            raise ChatError(
                "token_in_url",
                "downloads take Authorization: Bearer <token> or a signed link from "
                "POST /api/v1/files/links, not ?token=",
            )
        if h.lower().startswith("bearer "):
            session = await self.chat.accounts.authenticate(h[7:].strip())
            user = session["user_id"]
        elif any(k in req.query for k in LINK_PARAMS):
            user = self.media.signer.verify(aid, req.query)
            await self.media.user_active(user)
        else:
            raise ChatError(
                "not_authenticated",
                "send Authorization: Bearer <token> or a signed link (POST /api/v1/files/links)",
            )
        f = await self.media.readable(aid, user)
        headers = _file_headers(f)
        prefix = self.media.cfg.accel_prefix
        if prefix:
            headers["X-Accel-Redirect"] = prefix + f["relpath"]
            return 200, _head(200, headers, 0, req.keep_alive, f["mime"])
        try:
            size = os.stat(f["path"]).st_size
        except OSError:
            raise ChatError("not_found", "the file is missing from storage")
        start, length, status = 0, size, 200
        rng = req.header("range")
        if rng:
            m = _RANGE.fullmatch(rng.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else size - 1
                else:  # the last N bytes
                    start = max(0, size - int(m.group(2)))
                    end = size - 1
                end = min(end, size - 1)
                if start > end or start >= size:
                    return 416, _head(
                        416, {"Content-Range": f"bytes */{size}"}, 0, req.keep_alive, f["mime"]
                    )
                length = end - start + 1
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        head = _head(status, headers, length, req.keep_alive, f["mime"])
        return status, FileResponse(head, f["path"], start, length)


def _file_headers(f: dict[str, Any]) -> dict[str, str]:
    disp = "inline" if f["kind"] in INLINE_KINDS else "attachment"
    ascii_name = f["name"].encode("ascii", "replace").decode().replace('"', "'")
    return {
        "Content-Disposition": (
            f"{disp}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(f['name'], safe='')}"
        ),
        "ETag": f'"{f["sha256"]}"',
        "Cache-Control": "private, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Accept-Ranges": "bytes",
    }


def _head(status: int, headers: dict[str, str], length: int, keep: bool, mime: str) -> bytes:
    phrase = {200: "OK", 206: "Partial Content", 416: "Range Not Satisfiable"}[status]
    lines = [f"HTTP/1.1 {status} {phrase}", f"Content-Type: {mime}", f"Content-Length: {length}"]
    lines.append("Connection: keep-alive" if keep else "Connection: close")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
