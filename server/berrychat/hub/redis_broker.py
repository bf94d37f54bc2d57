"""The Redis broker: routes encoded frames and control messages between server processes.

Channels (prefix `redis.prefix`, default `berrychat:`):
- `<prefix>u:<shard>` for each user shard (`user_id % redis.shards`). A process subscribes to
  the shards of the users connected to it (reference-counted through the hub's
  `local_user_added` / `local_user_removed`), so it only receives traffic for shards it serves.
- `<prefix>ctl`: control messages (kick sessions/users, membership cache invalidation); every
  process subscribes.

Fast path: `publish` delivers to local connections at once (no round trip through Redis for
them) and appends one record per shard to a per-tick buffer. Once per loop tick (or, under load,
whenever the previous pipeline returned) all buffered records go out in one pipeline with one
PUBLISH per shard: many frames, one PUBLISH. The frame bytes are shipped verbatim.

Wire format of a shard payload: 8-byte origin id, the publish time (f64, Unix seconds; for the
cross-process delivery latency metric), then records
`<u32 data length><u32 user count><user ids as u64 ...><data>` (little-endian). A process
ignores payloads it published itself (it already delivered them locally).

Pub/sub is at-most-once: a lost publish (Redis restart, a subscription that is not active yet,
the fault injection below) is repaired by clients syncing by seq (protocol.md §11-12).
`drop_fraction` drops that fraction of incoming deliveries on purpose (tests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import struct
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .broker import Broker, Receiver

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..config import RedisSettings
    from ..metrics import Metrics

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<II")
_TS = struct.Struct("<d")
MAX_PENDING_BYTES = 64 << 20  # above this (Redis down), new publishes are dropped


class BrokerUnavailable(Exception):
    pass


class RedisBroker(Broker):
    def __init__(
        self,
        settings: RedisSettings,
        *,
        metrics: Metrics | None = None,
        drop_fraction: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.origin = os.urandom(8)
        self.process_id = self.origin.hex()
        self.shards = settings.shards
        p = settings.prefix
        self.prefix = p
        self.ctl_channel = (p + "ctl").encode()
        self.shard_channels = [f"{p}u:{i}".encode() for i in range(self.shards)]
        self._chan_to_shard = {c: i for i, c in enumerate(self.shard_channels)}
        self.drop_fraction = drop_fraction
        self._rng = random.Random(seed)
        self.redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._rx: Receiver | None = None
        self._reader: asyncio.Task | None = None
        self._pending: dict[int, list[bytes]] = {}
        self._pending_ctl: list[bytes] = []
        self._pending_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._sending: asyncio.Task | None = None
        self._refs = [0] * self.shards
        self._subscribed: set[int] = set()
        self._sub_task: asyncio.Task | None = None
        self._sub_dirty = False
        self._sub_waiters: list[asyncio.Future[None]] = []
        self._sub_failing = False
        self._closed = False
        self._last_err = 0.0
        # counters (also in metrics when given)
        self.published = 0
        self.received = 0
        self.dropped = 0

    # ---- lifecycle -----------------------------------------------------------------------
    def client(self) -> aioredis.Redis:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        s = self.settings
        return aioredis.Redis(
            host=s.host,
            port=s.port,
            db=s.db,
            username=s.username or None,
            password=s.password or None,
            socket_connect_timeout=s.socket_timeout,
            socket_timeout=None,
            health_check_interval=0,
            # one quick retry: callers handle failures (at-most-once, fail open); redis-py's
            # default backoff would stall hellos and logins for seconds while Redis is down
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        )

    async def start(self, receiver: Receiver) -> None:
        import redis.exceptions

        self._rx = receiver
        self.redis = self.client()
        try:
            await asyncio.wait_for(self.redis.ping(), self.settings.socket_timeout)
            self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            await self._pubsub.subscribe(self.ctl_channel)
        except (OSError, TimeoutError, redis.exceptions.RedisError) as e:
            await self.redis.aclose()
            self.redis = None
            s = self.settings
            raise BrokerUnavailable(f"cannot connect to Redis at {s.host}:{s.port}: {e}") from e
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def close(self) -> None:
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if (self._pending or self._pending_ctl) and self._sending is None and self.redis:
            self._flush()
        for t in (self._sending, self._sub_task):
            if t is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(t), 2.0)
                except (TimeoutError, Exception):
                    pass
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except Exception:
                pass
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        self._rx = None

    # ---- publishing ----------------------------------------------------------------------
    def publish(self, user_ids: Sequence[int], data: bytes) -> None:
        rx = self._rx
        if rx is None:
            return
        rx.deliver(user_ids, data)
        if self._pending_bytes > MAX_PENDING_BYTES:
            self._error("publish buffer full (Redis unreachable?): dropping")
            return
        n = self.shards
        if n == 1:
            groups: dict[int, list[int]] = {0: list(user_ids)}
        else:
            groups = {}
            for u in user_ids:
                s = u % n
                g = groups.get(s)
                if g is None:
                    groups[s] = [u]
                else:
                    g.append(u)
        pend = self._pending
        ld = len(data)
        for s, us in groups.items():
            rec = _HEAD.pack(ld, len(us)) + struct.pack(f"<{len(us)}Q", *us) + data
            lst = pend.get(s)
            if lst is None:
                pend[s] = [rec]
            else:
                lst.append(rec)
            self._pending_bytes += len(rec)
        self._schedule()

    def control(self, msg: dict[str, Any]) -> None:
        rx = self._rx
        if rx is None:
            return
        rx.on_control(msg)
        self._pending_ctl.append(self.origin + json.dumps(msg).encode())
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_handle is None and self._sending is None and not self._closed:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._sending is not None or self.redis is None:
            return
        if not self._pending and not self._pending_ctl:
            return
        pend, ctl = self._pending, self._pending_ctl
        self._pending, self._pending_ctl, self._pending_bytes = {}, [], 0
        self._sending = asyncio.get_running_loop().create_task(self._send(pend, ctl))

    async def _send(self, pend: dict[int, list[bytes]], ctl: list[bytes]) -> None:
        try:
            assert self.redis is not None
            pipe = self.redis.pipeline(transaction=False)
            head = self.origin + _TS.pack(time.time())
            chans = self.shard_channels
            for s, recs in pend.items():
                pipe.publish(chans[s], head + b"".join(recs))
            for c in ctl:
                pipe.publish(self.ctl_channel, c)
            t0 = time.perf_counter()
            await pipe.execute()
            n = len(pend) + len(ctl)
            self.published += n
            m = self.metrics
            if m is not None:
                m.redis_latency.observe(time.perf_counter() - t0)
                m.redis_published.inc(n)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._error(f"publish failed: {e!r}")
        finally:
            self._sending = None
            if (self._pending or self._pending_ctl) and not self._closed:
                self._schedule()

    def _error(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics.redis_errors.inc()
        now = time.monotonic()
        if now - self._last_err > 5.0:
            self._last_err = now
            log.warning("redis broker: %s", what)

    # ---- subscriptions -------------------------------------------------------------------
    def local_user_added(self, user_id: int) -> None:
        s = user_id % self.shards
        self._refs[s] += 1
        if self._refs[s] == 1 and s not in self._subscribed:
            self._sync_subscriptions()

    def local_user_removed(self, user_id: int) -> None:
        s = user_id % self.shards
        self._refs[s] -= 1
        if self._refs[s] == 0 and s in self._subscribed:
            self._sync_subscriptions()

    def _sync_subscriptions(self) -> None:
        self._sub_dirty = True
        if self._sub_task is None and self._pubsub is not None and not self._closed:
            self._sub_task = asyncio.get_running_loop().create_task(self._resubscribe())

    async def _resubscribe(self) -> None:
        try:
            while self._sub_dirty and not self._closed:
                self._sub_dirty = False
                want = {i for i, r in enumerate(self._refs) if r > 0}
                add = want - self._subscribed
                drop = self._subscribed - want
                try:
                    if add:
                        await self._pubsub.subscribe(*(self.shard_channels[i] for i in add))
                        self._subscribed |= add
                        self._sub_failing = False
                        self._wake()
                    if drop:
                        await self._pubsub.unsubscribe(*(self.shard_channels[i] for i in drop))
                        self._subscribed -= drop
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self._error(f"subscribe failed: {e!r}")
                    self._sub_failing = True  # hellos need not wait for a broken Redis
                    self._wake()
                    await asyncio.sleep(0.5)
                    self._sub_dirty = True
        finally:
            self._sub_task = None
            self._wake()

    async def wait_routed(self, user_id: int) -> None:
        s = user_id % self.shards
        end = time.monotonic() + 2.0  # bounded: a broken Redis must not hold hellos
        while (
            s not in self._subscribed
            and self._refs[s] > 0
            and not self._closed
            and not self._sub_failing
        ):
            if time.monotonic() > end:
                return
            fut = asyncio.get_running_loop().create_future()
            self._sub_waiters.append(fut)
            try:
                await asyncio.wait_for(fut, max(0.01, end - time.monotonic()))
            except TimeoutError:
                return

    def _wake(self) -> None:
        waiters, self._sub_waiters = self._sub_waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def subscribed_shards(self) -> set[int]:
        return set(self._subscribed)

    # ---- receiving -----------------------------------------------------------------------
    async def _read_loop(self) -> None:
        backoff = 0.1
        while not self._closed:
            try:
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._error(f"subscription read failed: {e!r}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if msg is None or msg.get("type") != "message":
                continue
            try:
                ch = msg["channel"]
                if ch == self.ctl_channel:
                    self._on_control(msg["data"])
                else:
                    self._on_deliveries(msg["data"])
            except Exception:
                log.exception("bad broker payload on %r", msg.get("channel"))

    def _on_control(self, payload: bytes) -> None:
        if payload[:8] == self.origin or self._rx is None:
            return
        self._rx.on_control(json.loads(payload[8:]))

    def _on_deliveries(self, payload: bytes) -> None:
        if payload[:8] == self.origin:
            return
        rx = self._rx
        if rx is None:
            return
        mv = memoryview(payload)
        sent = _TS.unpack_from(mv, 8)[0]
        pos = 16
        end = len(payload)
        head = _HEAD.unpack_from
        drop = self.drop_fraction
        rnd = self._rng.random
        n = 0
        while pos < end:
            ld, nu = head(mv, pos)
            pos += 8
            users = struct.unpack_from(f"<{nu}Q", mv, pos)
            pos += 8 * nu
            data = payload[pos : pos + ld]
            pos += ld
            n += 1
            if drop and rnd() < drop:
                self.dropped += 1
                if self.metrics is not None:
                    self.metrics.redis_dropped.inc()
                continue
            rx.deliver(users, data)
        self.received += n
        if self.metrics is not None:
            self.metrics.redis_received.inc(n)
            self.metrics.redis_delivery.observe(max(0.0, time.time() - sent))
