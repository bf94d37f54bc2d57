"""ICE servers for WebRTC clients: STUN URLs and TURN with time-limited credentials.

TURN credentials follow the TURN REST API scheme that coturn implements with
`use-auth-secret` + `static-auth-secret=<secret>`:

    username   = "<expiry unix seconds>:<user id>"
    credential = base64(HMAC-SHA1(secret, username))

coturn recomputes the credential from the username and refuses it after the expiry, so no
per-user state is shared between BerryChat and coturn.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from ..config import CallsSettings


def _urls(csv: str) -> list[str]:
    return [u.strip() for u in csv.split(",") if u.strip()]


def turn_credentials(secret: str, user: int | str, ttl: int, now: float | None = None) -> dict:
    """The TURN REST API username/credential pair valid for `ttl` seconds from `now`."""
    expiry = int(now if now is not None else time.time()) + int(ttl)
    username = f"{expiry}:{user}"
    mac = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return {"username": username, "credential": base64.b64encode(mac).decode("ascii")}


def ice_servers(settings: CallsSettings, user: int, now: float | None = None) -> dict[str, Any]:
    """`{"ice_servers": [...], "ttl": seconds}` in RTCPeerConnection's iceServers shape."""
    out: list[dict[str, Any]] = []
    stun = _urls(settings.stun_urls)
    if stun:
        out.append({"urls": stun})
    turn = _urls(settings.turn_urls)
    if turn and settings.turn_secret:
        cred = turn_credentials(settings.turn_secret, user, settings.turn_ttl_seconds, now)
        out.append({"urls": turn, **cred})
    return {"ice_servers": out, "ttl": settings.turn_ttl_seconds}
