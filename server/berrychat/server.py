"""Wiring: settings -> store -> chat -> hub/broker -> gateway + HTTP API -> listening socket.

server = Server(settings)
await server.start()          # binds; server.port is the real port (use port 0 in tests)
...
await server.stop()           # drain: close WebSockets with 1001, finish commits, close DB
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import resource
import signal
from typing import Any

from .chat.service import ChatService
from .config import Settings
from .gateway import Gateway
from .http import HttpApi
from .http.static import StaticFiles
from .hub import Broker, Hub, InProcessBroker
from .metrics import Metrics
from .protocol.codes import CLOSE_AUTH, CLOSE_DISABLED, ChatError
from .protocol.http11 import Request, build_response
from .shared import LocalState
from .store import Store, open_store
from .store.base import now_ms

log = logging.getLogger("berrychat")


_ERROR_CODE = re.compile(rb'"error":\{"code":"([a-z_]{1,40})"')


def _rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return round(r.ru_utime + r.ru_stime, 3)


class Server:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        broker: Broker | None = None,
        migrate: bool = True,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = store or open_store(settings.database, settings.replicas)
        if broker is None and settings.redis.enabled:
            from .hub.redis_broker import RedisBroker

            broker = RedisBroker(settings.redis, metrics=self.metrics)
        self.broker = broker or InProcessBroker()
        self.hub = Hub(
            self.broker,
            max_per_user=settings.limits.max_connections_per_user,
            max_total=settings.limits.max_connections,
        )
        self.state: LocalState = LocalState()
        self.chat = ChatService(settings, self.store, self.hub)
        self.hub.on_members_changed = self.chat.members_changed
        self.api = HttpApi(settings, self.chat)
        self._static = StaticFiles(self.api)
        self.gateway = Gateway(settings, self.chat, self.hub, self._http)
        from .calls.manager import CallManager

        self.calls = CallManager(settings, self.chat, self.hub, self.metrics)
        self.gateway.calls = self.calls
        from .assistant.bot import Assistant

        self.assistant = (
            Assistant(settings, self.chat, self.metrics) if settings.ai.enabled else None
        )
        from .bots.http import routes as bot_routes
        from .bots.service import BotService

        self.bots = BotService(settings, self.chat, self.hub, self.metrics)
        if settings.bots.enabled:
            self.api.routes.extend(bot_routes(self.api, self.bots))
        from .http.uploads import MediaHttp
        from .media.service import MediaService

        self.media = MediaService(settings, self.store, self.hub, self.chat.members.get)
        self.chat.media = self.media  # type: ignore[attr-defined]  # media.played frames
        self.media_http = MediaHttp(self.media, self.chat)
        self.api.routes[0:0] = self.media_http.routes()
        self.gateway.stream_body = self.media_http.stream_cap
        self.migrate = migrate
        self._wire_metrics()
        self._server: asyncio.AbstractServer | None = None
        self._janitor: asyncio.Task | None = None
        self._auditor: asyncio.Task | None = None
        self.port = 0

    def _wire_metrics(self) -> None:
        m = self.metrics
        gw, hub, committer = self.gateway, self.hub, self.chat.committer
        gw.metrics = m
        self.store.observe = m.db_latency.observe
        committer.observe = m.send_commit.observe
        self.chat.rates.metrics = m
        self.chat.observe_fanout = m.e2e.observe
        g = m.gauge
        g("berrychat_connections", "authenticated WebSocket connections", lambda: hub.total)
        g("berrychat_sockets", "open TCP connections (HTTP and WebSocket)", lambda: len(gw.conns))
        g("berrychat_users_connected", "users with a connection here", lambda: len(hub.by_user))
        g(
            "berrychat_frames_in_total",
            "WebSocket text frames received",
            lambda: gw.frames_in,
            "counter",
        )
        g(
            "berrychat_frames_out_total",
            "frames queued to connections (answers and pushes)",
            lambda: gw.frames_out,
            "counter",
        )
        g("berrychat_writes_total", "transport writes (coalesced)", lambda: gw.writes, "counter")
        g(
            "berrychat_deliveries_total",
            "pushes queued to local connections (one per copy)",
            lambda: hub.deliveries,
            "counter",
        )
        g(
            "berrychat_messages_committed_total",
            "stream operations committed",
            lambda: committer.ops,
            "counter",
        )
        g(
            "berrychat_commit_batches_total",
            "group-commit transactions",
            lambda: committer.batches,
            "counter",
        )
        g(
            "berrychat_slow_consumer_disconnects_total",
            "connections closed with 4000 because their queue overflowed",
            lambda: gw.slow_consumers,
            "counter",
        )
        g(
            "berrychat_protocol_errors_total",
            "invalid frames (bad JSON, fields, WebSocket framing)",
            lambda: gw.bad_frames + gw.protocol_errors,
            "counter",
        )
        g(
            "berrychat_queue_bytes",
            "bytes waiting in connection queues and transports",
            gw.queued_bytes,
        )
        g("berrychat_queue_bytes_max", "largest single connection backlog", gw.max_queued_bytes)
        reads = getattr(self.store, "reads", None)
        if reads is not None:
            g(
                "berrychat_db_replica_reads_total",
                "replica-eligible reads served by a replica",
                lambda: reads["replica"],
                "counter",
            )
            g(
                "berrychat_db_primary_reads_total",
                "replica-eligible reads served by the primary (read-your-writes, lag, none)",
                lambda: reads["primary"],
                "counter",
            )
            g(
                "berrychat_replica_lag_seconds",
                "the largest measured replica lag (-1: no replica reachable)",
                lambda: max(
                    (r.lag for r in self.store.replicas if r.lag != float("inf")), default=-1
                ),
            )
        g("process_resident_memory_bytes", "resident set size", _rss)
        g("process_cpu_seconds_total", "user + system CPU time", _cpu, "counter")

    async def _http(self, req: Request) -> bytes:
        if req.method == "POST" and req.path in ("/api/v1/login", "/api/v1/register"):
            rates = self.chat.rates
            ip = rates.client_ip(req, str(req.extra.get("peer", "")))
            try:
                if req.path == "/api/v1/login":
                    try:
                        body = req.json()
                        name = body.get("username") if isinstance(body, dict) else None
                    except Exception:
                        name = None
                    await rates.login(
                        name.strip().lower()[:64] if isinstance(name, str) else "", ip
                    )
                else:
                    await rates.registration(ip)
            except ChatError as e:
                self.metrics.errors.inc(e.code)
                err = {"error": {"code": e.code, "message": e.message, "retryable": True}}
                return build_response(429, json.dumps(err).encode(), keep_alive=req.keep_alive)
        if req.path == "/metrics" and req.method == "GET":
            return build_response(
                200,
                self.metrics.render(),
                content_type="text/plain; version=0.0.4; charset=utf-8",
                keep_alive=req.keep_alive,
            )
        resp = await self._static(req)
        if resp[9:10] in (b"4", b"5"):
            m = _ERROR_CODE.search(resp, 0, 4096)
            self.metrics.errors.inc(m.group(1).decode() if m else "http_" + resp[9:12].decode())
        return resp

    async def start(self) -> None:
        try:
            self.media.prepare()
        except OSError as e:
            raise RuntimeError(f"uploads.dir {self.media.files.root}: {e.strerror}")
        await self.store.connect()
        if self.migrate:
            applied = await self.store.migrate()
            if applied:
                log.info("applied migrations %s", applied)
        await self.broker.start(self.hub)
        redis_client = getattr(self.broker, "redis", None)
        if redis_client is not None:
            from .shared import RedisState

            self.state = RedisState(
                redis_client,
                self.settings.redis.prefix,
                getattr(self.broker, "process_id", "p"),
                self.metrics,
            )
            await self.state.start()
            self.chat.use_state(self.state)
            self.calls.use_redis(redis_client, self.settings.redis.prefix)
        self.calls.start()
        if self.assistant is not None:
            await self.assistant.start()
        if self.settings.bots.enabled:
            await self.bots.start()
        loop = asyncio.get_running_loop()
        s = self.settings.server
        self._server = await loop.create_server(
            self.gateway.protocol_factory,
            host=s.host,
            port=s.port,
            backlog=s.backlog,
            reuse_port=s.reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.gateway.start()
        self._janitor = loop.create_task(self._clean_sessions())
        self._auditor = loop.create_task(self._audit_sessions())
        self.media.start()  # the orphaned-upload sweep
        log.info("listening on %s:%d (database %s)", s.host, self.port, self.settings.database.type)

    async def _clean_sessions(self) -> None:
        while True:
            try:
                await self.store.purge_expired_sessions(now_ms())
            except Exception as e:  # the database may be down; try again later
                log.warning("session cleanup failed: %s", e)
            await asyncio.sleep(3600)

    async def _audit_sessions(self) -> None:
        """Close live connections whose session was revoked elsewhere (CLI, another process),
        has expired, or whose account was disabled."""
        period = self.settings.auth.session_audit_seconds
        while True:
            await asyncio.sleep(period)
            hashes = list(self.hub.by_session)
            if not hashes:
                continue
            try:
                live = await self.store.live_sessions(hashes)
            except Exception as e:
                log.warning("session audit failed: %s", e)
                continue
            now = now_ms()
            gone = [h for h in hashes if h not in live or live[h][0] <= now]
            disabled = {h for h, (_, dis) in live.items() if dis}
            if gone:
                owners = {h: eps[0].user_id for h in gone if (eps := self.hub.by_session.get(h))}
                try:
                    off = await self.store.disabled_users(sorted(set(owners.values())))
                except Exception:
                    off = set()
                disabled.update(h for h, u in owners.items() if u in off)
            for h in gone:
                if h not in disabled:
                    self._kick(h, CLOSE_AUTH, "session ended: log in again")
            for h in disabled:
                self._kick(h, CLOSE_DISABLED, "account disabled")

    def _kick(self, token_hash: str, code: int, reason: str) -> None:
        self.hub.on_control(
            {"op": "kick_sessions", "hashes": [token_hash], "code": code, "reason": reason}
        )

    async def stop(self, *, drain_seconds: float = 2.0) -> None:
        """Stop accepting, tell clients to reconnect elsewhere, finish in-flight commits."""
        if self._server is not None:
            self._server.close()
        await self.calls.stop()  # end the calls owned here (recorded while commits still run)
        if self.assistant is not None:
            await self.assistant.stop()
        await self.bots.stop()
        # 1. stop taking new work, 2. commit and acknowledge what was accepted,
        # 3. close every WebSocket with 1001 ("reconnect elsewhere").
        self.gateway.quiesce()
        try:
            await asyncio.wait_for(self.chat.committer.drain(), timeout=max(drain_seconds, 0.1))
        except TimeoutError:
            log.warning("in-flight commits did not finish in %.1fs", drain_seconds)
        await self.gateway.drain()
        deadline = asyncio.get_running_loop().time() + drain_seconds
        while self.gateway.conns and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        await self.gateway.stop()
        for task in (self._janitor, self._auditor):
            if task is not None:
                task.cancel()
        await self.media.stop()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
            except TimeoutError:
                pass
        await self.state.close()
        await self.broker.close()
        await self.store.close()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then drain."""
    server = Server(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover
            pass
    await stop.wait()
    log.info("shutting down")
    await server.stop()
