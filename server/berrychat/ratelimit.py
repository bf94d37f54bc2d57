"""Rate limits per user and per IP (messages, logins, registrations) on the shared state.

Fixed windows. Messages are checked synchronously against this process's window (so a
connection's frames keep their order) and summed across processes in Redis once per loop tick
(`RedisState.hit_now`); logins and registrations are rare and are counted in Redis directly.
Refusals answer `rate_limited` (retryable, HTTP 429)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .config import LimitsSettings
from .protocol.codes import ChatError
from .protocol.http11 import Request

if TYPE_CHECKING:
    from .metrics import Metrics
    from .shared import LocalState

LOOPBACK = ("127.", "::1", "::ffff:127.")
log = logging.getLogger(__name__)


class RateLimits:
    def __init__(self, limits: LimitsSettings, state: LocalState, metrics: Metrics | None) -> None:
        self.lim = limits
        self.state = state
        self.metrics = metrics
        self.trusted = {a.strip() for a in limits.trusted_proxies.split(",") if a.strip()}

    def _refused(self, name: str, window: float) -> ChatError:
        if self.metrics is not None:
            self.metrics.rate_limited.inc(name)
        return ChatError("rate_limited", f"too many {name.split('_')[0]}; retry in {window:g} s")

    def message(self, user: int, ip: str) -> ChatError | None:
        """Count one stream operation; the error to answer when over a limit."""
        lim = self.lim
        w = lim.message_window_seconds
        if lim.messages_per_user and not self.state.hit_now(
            "messages_user", user, lim.messages_per_user, w
        ):
            return self._refused("messages_user", w)
        if (
            lim.messages_per_ip
            and ip
            and not self.state.hit_now("messages_ip", ip, lim.messages_per_ip, w)
        ):
            return self._refused("messages_ip", w)
        return None

    async def _hit(self, name: str, key: str, limit: int, window: float) -> bool:
        try:
            return await self.state.hit(name, key, limit, window)
        except Exception as e:  # shared state unreachable: fail open (the limits are a guard)
            log.warning("rate limit %s not checked: %s", name, e)
            return True

    async def login(self, username: str, ip: str) -> None:
        lim = self.lim
        w = lim.login_window_seconds
        if lim.logins_per_ip and ip and not await self._hit("logins_ip", ip, lim.logins_per_ip, w):
            raise self._refused("logins_ip", w)
        if (
            lim.logins_per_user
            and username
            and not await self._hit("logins_user", username, lim.logins_per_user, w)
        ):
            raise self._refused("logins_user", w)

    async def registration(self, ip: str) -> None:
        lim = self.lim
        w = lim.registration_window_seconds
        if (
            lim.registrations_per_ip
            and ip
            and not await self._hit("registrations_ip", ip, lim.registrations_per_ip, w)
        ):
            raise self._refused("registrations_ip", w)

    def client_ip(self, req: Request, peer: str) -> str:
        """The client's address: the peer, or the proxy's forwarded address for trusted peers."""
        if not self.lim.trust_forwarded_for or not (
            peer.startswith(LOOPBACK) or peer in self.trusted
        ):
            return peer
        xff = req.header("x-forwarded-for")
        if xff:
            return xff.rsplit(",", 1)[-1].strip()[:64] or peer
        return (req.header("x-real-ip") or peer).strip()[:64]
