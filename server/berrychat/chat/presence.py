"""Presence: online / away / offline per user, throttled, sent only to peers.

The hub reports first-connect and last-disconnect of a user on this process; the client may set
`away`. Broadcasts are throttled per user (`presence.throttle_seconds`): changes inside the
window are coalesced and the latest state is sent by a single periodic flush.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from ..config import PresenceSettings
from ..protocol.frames import encode

STATUSES = ("online", "away", "offline")


class Presence:
    def __init__(
        self,
        settings: PresenceSettings,
        peers: Callable[[int], Awaitable[Sequence[int]]],
        publish: Callable[[Sequence[int], bytes], None],
    ) -> None:
        self.enabled = settings.enabled
        self.throttle = settings.throttle_seconds
        self._peers = peers
        self._publish = publish
        self.status: dict[int, str] = {}
        self._last_sent: dict[int, float] = {}
        self._pending: dict[int, str] = {}

    def get(self, user: int) -> str:
        return self.status.get(user, "offline")

    async def set(self, user: int, status: str) -> None:
        if not self.enabled:
            return
        if status == "offline":
            self.status.pop(user, None)
        else:
            if self.status.get(user) == status:
                return
            self.status[user] = status
        now = time.monotonic()
        if now - self._last_sent.get(user, -1e9) < self.throttle:
            self._pending[user] = status
            return
        self._pending.pop(user, None)
        await self._send(user, status, now)

    async def _send(self, user: int, status: str, now: float) -> None:
        self._last_sent[user] = now
        peers = await self._peers(user)
        if peers:
            self._publish(
                peers,
                encode(
                    {
                        "type": "presence",
                        "user": user,
                        "status": status,
                        "ts": int(time.time() * 1000),
                    }
                ),
            )

    async def flush(self) -> None:
        """Send coalesced changes whose throttle window has passed (called periodically)."""
        if not self._pending:
            return
        now = time.monotonic()
        due = [u for u in self._pending if now - self._last_sent.get(u, -1e9) >= self.throttle]
        for u in due:
            status = self._pending.pop(u)
            await self._send(u, status, now)
