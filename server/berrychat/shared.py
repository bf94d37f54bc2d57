"""State that every server process must see the same: presence, rate-limit counters, revoked
session tokens, connections per user.

`LocalState` keeps it in this process (the embedded default, one process). `RedisState` keeps
it in Redis (config `redis.enabled`):

- presence: hash `<prefix>pres:<user>` with one field per process (`<process id>` -> `online` /
  `away`); a user's status is the best status over live processes (online > away > offline).
  A process announces itself with `<prefix>proc:<process id>` (expires after 15 s, refreshed
  every 5 s); fields of processes that died are ignored and removed when seen.
- connections per user: hash `<prefix>conns:<user>` (process id -> count), the same liveness.
- rate limits: fixed windows, `INCR <prefix>rl:<name>:<key>:<window number>` + `EXPIRE`.
- revoked tokens: `<prefix>rev:<token hash>` with the token's remaining lifetime as TTL; checked
  at every authentication, so a token revoked through any process is refused by every process
  at once (even when the session row read comes from a lagging replica).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

RANK = {"online": 2, "away": 1}
PROC_TTL = 15
PROC_REFRESH = 5.0


def best(statuses: Any) -> str:
    top = "offline"
    for s in statuses:
        if RANK.get(s, 0) > RANK.get(top, 0):
            top = s
    return top


class LocalState:
    shared = False

    def __init__(self) -> None:
        self.presence: dict[int, str] = {}
        self.conns: dict[int, int] = {}
        self._windows: dict[str, tuple[int, int]] = {}
        self._revoked: dict[str, float] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def presence_set(self, user: int, status: str | None) -> str:
        if status is None:
            self.presence.pop(user, None)
            return "offline"
        self.presence[user] = status
        return status

    async def presence_get(self, users: Sequence[int]) -> dict[int, str]:
        return {u: self.presence.get(u, "offline") for u in users}

    def hit_now(self, name: str, key: str | int, limit: int, window: float) -> bool:
        """Count one event; False when the window's limit is exceeded."""
        w = int(time.monotonic() // window)
        k = f"{name}:{key}"
        cur = self._windows.get(k)
        n = cur[1] + 1 if cur is not None and cur[0] == w else 1
        self._windows[k] = (w, n)
        if len(self._windows) > 200_000:
            self._windows = {a: b for a, b in self._windows.items() if b[0] == w}
        return n <= limit

    async def hit(self, name: str, key: str | int, limit: int, window: float) -> bool:
        return self.hit_now(name, key, limit, window)

    async def conn_add(self, user: int, delta: int) -> int:
        n = self.conns.get(user, 0) + delta
        if n <= 0:
            self.conns.pop(user, None)
        else:
            self.conns[user] = n
        return max(n, 0)

    async def revoke(self, token_hashes: Sequence[str], ttl_seconds: float) -> None:
        now = time.monotonic()
        for h in token_hashes:
            self._revoked[h] = now + ttl_seconds
        if len(self._revoked) > 100_000:
            self._revoked = {h: t for h, t in self._revoked.items() if t > now}

    async def is_revoked(self, token_hash: str) -> bool:
        t = self._revoked.get(token_hash)
        return t is not None and t > time.monotonic()


class RedisState(LocalState):
    shared = True

    def __init__(self, client: Any, prefix: str, process_id: str, metrics: Metrics | None) -> None:
        super().__init__()
        self.r = client
        self.p = prefix
        self.pid = process_id
        self.metrics = metrics
        self._alive: dict[str, float] = {}
        self._beat: asyncio.Task | None = None
        self._blocked: dict[str, float] = {}
        self._counts: dict[tuple[str, int, float], int] = {}
        self._count_task: asyncio.Task | None = None
        self._count_handle: asyncio.Handle | None = None

    async def start(self) -> None:
        await self.r.set(self._proc(self.pid), 1, ex=PROC_TTL)
        self._beat = asyncio.get_running_loop().create_task(self._heartbeat())

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            try:
                await self._beat
            except (asyncio.CancelledError, Exception):
                pass
        try:
            await self.r.delete(self._proc(self.pid))
        except Exception:
            pass

    def _proc(self, pid: str) -> str:
        return f"{self.p}proc:{pid}"

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(PROC_REFRESH)
            try:
                await self.r.set(self._proc(self.pid), 1, ex=PROC_TTL)
            except Exception as e:
                log.warning("redis heartbeat failed: %s", e)

    async def _timed(self, coro: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await coro
        finally:
            if self.metrics is not None:
                self.metrics.redis_latency.observe(time.perf_counter() - t0)

    async def _live(self, pids: set[str]) -> set[str]:
        now = time.monotonic()
        unknown = [p for p in pids if p != self.pid and self._alive.get(p, 0) < now]
        if unknown:
            pipe = self.r.pipeline(transaction=False)
            for p in unknown:
                pipe.exists(self._proc(p))
            for p, ok in zip(unknown, await self._timed(pipe.execute()), strict=True):
                if ok:
                    self._alive[p] = now + PROC_REFRESH
                else:
                    self._alive.pop(p, None)
        return {p for p in pids if p == self.pid or self._alive.get(p, 0) >= now}

    async def _aggregate(self, key: str, fields: dict[bytes, bytes]) -> list[str]:
        d = {k.decode(): v.decode() for k, v in fields.items()}
        live = await self._live(set(d))
        dead = [p for p in d if p not in live]
        if dead:
            await self.r.hdel(key, *dead)
        return [d[p] for p in d if p in live]

    async def presence_set(self, user: int, status: str | None) -> str:
        key = f"{self.p}pres:{user}"
        pipe = self.r.pipeline(transaction=False)
        if status is None:
            pipe.hdel(key, self.pid)
        else:
            pipe.hset(key, self.pid, status)
        pipe.hgetall(key)
        res = await self._timed(pipe.execute())
        return best(await self._aggregate(key, res[-1]))

    async def presence_get(self, users: Sequence[int]) -> dict[int, str]:
        if not users:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for u in users:
            pipe.hgetall(f"{self.p}pres:{u}")
        res = await self._timed(pipe.execute())
        out = {}
        for u, fields in zip(users, res, strict=True):
            key = f"{self.p}pres:{u}"
            out[u] = best(await self._aggregate(key, fields)) if fields else "offline"
        return out

    def hit_now(self, name: str, key: str | int, limit: int, window: float) -> bool:
        k = f"{name}:{key}"
        now = time.time()
        until = self._blocked.get(k)
        if until is not None:
            if until > now:
                return False
            del self._blocked[k]
        ok = super().hit_now(name, key, limit, window)
        ck = (k, limit, window)
        self._counts[ck] = self._counts.get(ck, 0) + 1
        if self._count_handle is None and self._count_task is None:
            self._count_handle = asyncio.get_running_loop().call_soon(self._flush_counts)
        return ok

    def _flush_counts(self) -> None:
        self._count_handle = None
        if self._count_task is None and self._counts:
            counts, self._counts = self._counts, {}
            self._count_task = asyncio.get_running_loop().create_task(self._send_counts(counts))

    async def _send_counts(self, counts: dict[tuple[str, int, float], int]) -> None:
        try:
            now = time.time()
            pipe = self.r.pipeline(transaction=False)
            keys = list(counts)
            for k, _limit, window in keys:
                rk = f"{self.p}rl:{k}:{int(now // window)}"
                pipe.incrby(rk, counts[(k, _limit, window)])
                pipe.expire(rk, int(window) + 1)
            res = await self._timed(pipe.execute())
            for i, (k, limit, window) in enumerate(keys):
                if int(res[2 * i]) > limit:
                    self._blocked[k] = (int(now // window) + 1) * window
        except Exception as e:
            log.warning("redis rate-limit sync failed: %s", e)
        finally:
            self._count_task = None
            if self._counts:
                self._count_handle = asyncio.get_running_loop().call_soon(self._flush_counts)

    async def hit(self, name: str, key: str | int, limit: int, window: float) -> bool:
        w = int(time.time() // window)
        k = f"{self.p}rl:{name}:{key}:{w}"
        pipe = self.r.pipeline(transaction=False)
        pipe.incr(k)
        pipe.expire(k, int(window) + 1)
        n, _ = await self._timed(pipe.execute())
        return int(n) <= limit

    async def conn_add(self, user: int, delta: int) -> int:
        key = f"{self.p}conns:{user}"
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(key, self.pid, delta)
        pipe.hgetall(key)
        res = await self._timed(pipe.execute())
        fields = res[-1]
        d = {k.decode(): int(v) for k, v in fields.items()}
        if d.get(self.pid, 0) <= 0:
            await self.r.hdel(key, self.pid)
        live = await self._live(set(d))
        return sum(max(v, 0) for p, v in d.items() if p in live)

    async def revoke(self, token_hashes: Sequence[str], ttl_seconds: float) -> None:
        await super().revoke(token_hashes, ttl_seconds)
        if not token_hashes:
            return
        pipe = self.r.pipeline(transaction=False)
        for h in token_hashes:
            pipe.set(f"{self.p}rev:{h}", 1, ex=max(1, int(ttl_seconds)))
        await self._timed(pipe.execute())

    async def is_revoked(self, token_hash: str) -> bool:
        if await super().is_revoked(token_hash):
            return True
        try:
            return bool(await self._timed(self.r.exists(f"{self.p}rev:{token_hash}")))
        except Exception as e:
            # fail open: the session row (read from the primary) is the truth; this list only
            # makes revocations visible before every process has dropped its connections
            log.warning("revocation list unreachable: %s", e)
            return False
