"""Short-lived signed download links (docs/protocol.md §17, "Download").

`<img>`, `<audio>` and `<video>` cannot send an Authorization header, and a session token in a URL
ends up in proxy access logs and browser history. Instead a client asks for links
(`POST /api/v1/files/links`) and gets `/api/v1/files/<id>?u=<user>&e=<expiry>&s=<signature>`:
the signature is HMAC-SHA256 over the file id, the user id and the expiry (Unix seconds) with a
server-side key. A link is only a way of saying *who* asks: the download still checks that this
user may read the file now (membership, recalls), exactly as with the header.

Expiries are rounded up to a multiple of half the lifetime, so every link a user is given within
that window is the same URL (the browser's cache keeps working) and lives between `ttl` and
`1.5 * ttl` seconds.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from pathlib import Path

from ..protocol.codes import ChatError

log = logging.getLogger(__name__)

KEY_FILE = "url-signing.key"  # next to uploads.dir when media.url_signing_key is not set
_DIGITS = re.compile(r"[0-9]{1,19}")
_SIG = re.compile(r"[A-Za-z0-9_-]{43}")
LINK_PARAMS = ("u", "e", "s")


def load_or_create_key(root: Path) -> bytes:
    """The local signing key kept in `root` (created on first use, mode 0600). Several processes
    starting at once end with the same key: the file is written aside and hard-linked into place,
    and whoever loses the race reads the winner's key."""
    path = root / KEY_FILE
    for _ in range(3):
        try:
            key = path.read_bytes().strip()
        except FileNotFoundError:
            pass
        else:
            if len(key) < 32:
                raise OSError(f"{path}: signing key shorter than 32 bytes (remove the file)")
            return key
        root.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = root / f".{KEY_FILE}.{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process was first: read its key
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    raise OSError(f"{path}: cannot create the signing key")


class LinkSigner:
    def __init__(self, key: bytes, ttl_seconds: int) -> None:
        if len(key) < 32:
            raise ValueError("signing key shorter than 32 bytes")
        self._key = key
        self.ttl = ttl_seconds
        self._step = max(1, ttl_seconds // 2)

    def expiry(self, now: float | None = None) -> int:
        t = int(time.time() if now is None else now)
        return (t // self._step + 3) * self._step

    def _mac(self, aid: str, user: int, exp: int) -> str:
        msg = f"berrychat-file-v1\n{aid}\n{user}\n{exp}".encode()
        mac = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def query(self, aid: str, user: int, exp: int) -> str:
        """The query string of a link to `aid` for `user`, valid until `exp`."""
        return f"u={user}&e={exp}&s={self._mac(aid, user, exp)}"

    def verify(self, aid: str, q: dict[str, str], now: float | None = None) -> int:
        """The user id a link was issued to; ChatError(link_invalid / link_expired) otherwise.
        The signature is checked before the expiry (a forged link learns nothing more)."""
        u, e, s = (q.get(k, "") for k in LINK_PARAMS)
        if not (_DIGITS.fullmatch(u) and _DIGITS.fullmatch(e) and _SIG.fullmatch(s)):
            raise ChatError("link_invalid", "a signed link needs u, e and s")
        user, exp = int(u), int(e)
        if not hmac.compare_digest(self._mac(aid, user, exp), s):
            raise ChatError("link_invalid")
        if exp <= (time.time() if now is None else now):
            raise ChatError("link_expired")
        return user
