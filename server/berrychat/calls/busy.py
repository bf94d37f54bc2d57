"""Who is in a call, shared by every process: a claim per user (`user -> call id`).

In one process a dict; with Redis `SET <prefix>call:<user> <call id> NX EX <ttl>`. Claims
expire unless the owning process refreshes them, so a process that dies mid-call frees its
users after at most `CLAIM_TTL` seconds.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

CLAIM_TTL = 60  # seconds; refreshed every CLAIM_TTL / 3 by the call's owner

_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
    "else return 0 end"
)


class LocalBusy:
    def __init__(self) -> None:
        self._claims: dict[int, tuple[str, float]] = {}

    async def claim(self, user: int, call: str) -> bool:
        now = time.monotonic()
        cur = self._claims.get(user)
        if cur is not None and cur[0] != call and cur[1] > now:
            return False
        self._claims[user] = (call, now + CLAIM_TTL)
        return True

    async def release(self, user: int, call: str) -> None:
        cur = self._claims.get(user)
        if cur is not None and cur[0] == call:
            del self._claims[user]

    async def holders(self, users: list[int]) -> dict[int, str | None] | None:
        """The call each user's claim names (None: no claim); None when unknown."""
        now = time.monotonic()
        return {
            u: c[0] if (c := self._claims.get(u)) is not None and c[1] > now else None
            for u in users
        }

    async def refresh(self, claims: list[tuple[int, str]]) -> None:
        now = time.monotonic()
        for user, call in claims:
            cur = self._claims.get(user)
            if cur is not None and cur[0] == call:
                self._claims[user] = (call, now + CLAIM_TTL)


class RedisBusy(LocalBusy):
    """Claims in Redis. Fails open: when Redis is unreachable a call is allowed."""

    def __init__(self, client: Any, prefix: str) -> None:
        super().__init__()
        self.r = client
        self.p = prefix

    def _key(self, user: int) -> str:
        return f"{self.p}call:{user}"

    async def claim(self, user: int, call: str) -> bool:
        try:
            ok = await self.r.set(self._key(user), call, nx=True, ex=CLAIM_TTL)
            if ok:
                return True
            cur = await self.r.get(self._key(user))
            return cur is not None and cur.decode() == call
        except Exception as e:
            log.warning("call claims unavailable (allowing the call): %s", e)
            return True

    async def release(self, user: int, call: str) -> None:
        try:
            await self.r.eval(_RELEASE, 1, self._key(user), call)
        except Exception as e:
            log.warning("call claim not released (expires by itself): %s", e)

    async def holders(self, users: list[int]) -> dict[int, str | None] | None:
        if not users:
            return {}
        try:
            pipe = self.r.pipeline(transaction=False)
            for user in users:
                pipe.get(self._key(user))
            got = await pipe.execute()
        except Exception as e:
            log.warning("call claims not read: %s", e)
            return None
        return {u: v.decode() if v is not None else None for u, v in zip(users, got, strict=True)}

    async def refresh(self, claims: list[tuple[int, str]]) -> None:
        if not claims:
            return
        try:
            pipe = self.r.pipeline(transaction=False)
            for user, call in claims:
                pipe.set(self._key(user), call, ex=CLAIM_TTL)
            await pipe.execute()
        except Exception as e:
            log.warning("call claims not refreshed: %s", e)
