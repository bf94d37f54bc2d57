"""Outgoing webhooks: signed POSTs to a bot's URL, in the background, retried with backoff.

Each bot has its own bounded queue and at most one worker task (created when an event arrives,
ended when the queue is empty), so a slow or dead receiver delays only its own bot and the
message path never waits: `enqueue` is synchronous and drops the event (counted) when the
bot's queue (`webhook_queue_size` events, the one being delivered included) is full.

Signature (docs/protocol.md, "Webhooks"): headers
`X-BerryChat-Timestamp: <unix seconds>` and
`X-BerryChat-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`.
A delivery succeeds on any 2xx; other statuses, timeouts and connection errors are retried
after `backoff * 2**(attempt-1)` seconds (capped, with up to 10 % jitter) until
`webhook_max_attempts` attempts were made.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import BotsSettings
from ..metrics import LabeledCounter, Metrics
from .http_client import HttpClientError, request

log = logging.getLogger(__name__)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-BerryChat-Signature value for this body and timestamp."""
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, max_age: float = 300) -> bool:
    """What a receiver does (also used by the tests): constant-time compare, reject stale."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > max_age:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


@dataclass
class _BotQueue:
    url: str
    secret: str
    items: deque[bytes] = field(default_factory=deque)
    worker: asyncio.Task | None = None


class WebhookDispatcher:
    def __init__(self, settings: BotsSettings, metrics: Metrics | None = None) -> None:
        self.s = settings
        self.queues: dict[int, _BotQueue] = {}
        self.results = LabeledCounter(
            "berrychat_webhook_deliveries_total",
            "webhook events by result (ok, failed after every attempt, dropped: queue full)",
            "result",
        )
        self.attempts = LabeledCounter(
            "berrychat_webhook_attempts_total", "webhook HTTP attempts by outcome", "outcome"
        )
        if metrics is not None:
            metrics._all.append(self.results)
            metrics._all.append(self.attempts)
            metrics.gauge(
                "berrychat_webhook_queued",
                "webhook events waiting in every bot's queue",
                lambda: sum(len(q.items) for q in self.queues.values()),
            )
        self.sleep: Callable[[float], Any] = asyncio.sleep  # tests may speed this up
        self._closed = False

    def enqueue(self, bot_id: int, url: str, secret: str, payload: dict[str, Any]) -> bool:
        """Queue one event for a bot; False (and counted) when its queue is full."""
        if self._closed:
            return False
        q = self.queues.get(bot_id)
        if q is None:
            q = self.queues[bot_id] = _BotQueue(url, secret)
        q.url, q.secret = url, secret
        if len(q.items) >= self.s.webhook_queue_size:
            self.results.inc("dropped")
            return False
        q.items.append(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
        if q.worker is None:
            q.worker = asyncio.get_running_loop().create_task(self._work(bot_id, q))
        return True

    async def close(self) -> None:
        self._closed = True
        tasks = [q.worker for q in self.queues.values() if q.worker is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    async def _work(self, bot_id: int, q: _BotQueue) -> None:
        try:
            while q.items:
                body = q.items[0]
                ok = await self._deliver(q, body)
                q.items.popleft()
                self.results.inc("ok" if ok else "failed")
        finally:
            q.worker = None
            if not q.items:
                self.queues.pop(bot_id, None)

    async def _deliver(self, q: _BotQueue, body: bytes) -> bool:
        s = self.s
        for attempt in range(1, s.webhook_max_attempts + 1):
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "X-BerryChat-Timestamp": str(ts),
                "X-BerryChat-Signature": sign(q.secret, ts, body),
                "X-BerryChat-Attempt": str(attempt),
            }
            outcome = await self._post(q.url, body, headers)
            self.attempts.inc(outcome)
            if outcome == "ok":
                return True
            if attempt < s.webhook_max_attempts:
                delay = min(
                    s.webhook_backoff_seconds * 2 ** (attempt - 1), s.webhook_backoff_max_seconds
                )
                await self.sleep(delay * (1 + random.random() * 0.1))
        log.warning("webhook to %s failed after %d attempts", q.url, s.webhook_max_attempts)
        return False

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str:
        t = self.s.webhook_timeout_seconds
        try:
            resp = await request(
                "POST", url, body=body, headers=headers, connect_timeout=t, head_timeout=t
            )
        except HttpClientError as e:
            return "timeout" if e.code == "timeout" else "error"
        try:
            await resp.read(t, 65536)
        except HttpClientError:
            pass
        finally:
            resp.close()
        return "ok" if 200 <= resp.status < 300 else f"http_{resp.status // 100}xx"
