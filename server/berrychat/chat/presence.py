"""Presence: online / away / offline per user, throttled, sent only to peers.

The hub reports first-connect and last-disconnect of a user on this process; the client may set
`away`. Each process stores its own contribution in the shared state (in-process, or Redis with
several processes); a user's status is the best over all processes, so a user stays online while
any device is connected anywhere. Broadcasts are throttled per user
(`presence.throttle_seconds`): changes inside the window are coalesced and the latest state
is sent by a single periodic flush.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from ..config import PresenceSettings
from ..protocol.frames import encode
from ..shared import LocalState

STATUSES = ("online", "away", "offline")
log = logging.getLogger(__name__)


class Presence:
    def __init__(
        self,
        settings: PresenceSettings,
        peers: Callable[[int], Awaitable[Sequence[int]]],
        publish: Callable[[Sequence[int], bytes], None],
        state: LocalState | None = None,
    ) -> None:
        self.enabled = settings.enabled
        self.throttle = settings.throttle_seconds
        self._peers = peers
        self._publish = publish
        self.state = state or LocalState()
        self.local: dict[int, str] = {}  # this process's own contribution per user
        self.announced: dict[int, str] = {}  # last status this process pushed per user
        self._last_sent: dict[int, float] = {}
        self._pending: dict[int, str] = {}

    async def get_many(self, users: Sequence[int]) -> dict[int, str]:
        """Status of these users over every process (shared state)."""
        return await self.state.presence_get(users)

    async def status(self, user: int) -> str:
        return (await self.state.presence_get([user]))[user]

    async def set(self, user: int, status: str) -> None:
        if not self.enabled:
            return
        if status == "offline":
            if self.local.pop(user, None) is None:
                return
            agg = await self._store(user, None)
        else:
            if self.local.get(user) == status:
                return
            self.local[user] = status
            agg = await self._store(user, status)
        if agg is None:
            return
        if agg == self._pending.get(user, self.announced.get(user, "offline")):
            return
        now = time.monotonic()
        if now - self._last_sent.get(user, -1e9) < self.throttle:
            self._pending[user] = agg
            return
        self._pending.pop(user, None)
        await self._send(user, agg, now)

    async def _store(self, user: int, status: str | None) -> str | None:
        try:
            return await self.state.presence_set(user, status)
        except Exception as e:  # shared state unreachable: presence is best effort
            log.warning("presence update failed: %s", e)
            return None

    async def _send(self, user: int, status: str, now: float) -> None:
        self._last_sent[user] = now
        if status == "offline":
            self.announced.pop(user, None)
            if len(self._last_sent) > 100_000:
                cut = now - self.throttle
                self._last_sent = {u: t for u, t in self._last_sent.items() if t > cut}
        else:
            self.announced[user] = status
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
            await self._send(u, self._pending.pop(u), now)
