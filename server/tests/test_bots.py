"""Bots: accounts made by admins (HTTP API and CLI), API tokens (hashed, revocable), posting as
a bot, and outgoing webhooks to a real HTTP receiver on loopback that checks the HMAC
signature the way docs/protocol.md tells receivers to, including a delivery that fails first
and succeeds on retry, bounded attempts, a bounded queue, and a message path that never waits
for a webhook."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import PASSWORD, World, make_settings, start_world

from berrychat.cli import main
from berrychat.client import http_json, login


class Receiver:
    """A webhook receiver: answers with the next scripted status (then 200), optionally after
    a delay, verifies every signature independently of the server's code."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.delay = 0.0
        self.got: list[dict[str, Any]] = []
        self.secret = ""
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?x=1"

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
            lines = head.split("\r\n")
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                if k:
                    hdrs[k.strip().lower()] = v.strip()
            body = await r.readexactly(int(hdrs["content-length"]))
            ts = hdrs["x-berrychat-timestamp"]
            expected = hmac.new(
                self.secret.encode(), ts.encode() + b"." + body, hashlib.sha256
            ).hexdigest()
            valid = hmac.compare_digest("sha256=" + expected, hdrs["x-berrychat-signature"])
            fresh = abs(time.time() - int(ts)) < 300
            self.got.append(
                {
                    "line": lines[0],
                    "valid": valid and fresh,
                    "attempt": int(hdrs["x-berrychat-attempt"]),
                    "json": json.loads(body),
                }
            )
            if self.delay:
                await asyncio.sleep(self.delay)
            status = self.statuses.pop(0) if self.statuses else 200
            w.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode())
            await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:  # the test ended while a slow answer was pending
            pass
        finally:
            w.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


BOTS_FAST = {
    "webhook_backoff_seconds": 0.05,
    "webhook_backoff_max_seconds": 0.2,
    "webhook_max_attempts": 3,
    "webhook_timeout_seconds": 2,
}


async def _admin(w: World) -> str:
    await w.server.chat.accounts.register("root", PASSWORD, "", "admin")
    return (await login(w.host, w.port, "root", PASSWORD, "d1"))["token"]


async def _api(w: World, method: str, path: str, body: Any = None, token: str | None = None):
    return await http_json(w.host, w.port, method, path, body, token=token)


async def _metric(w: World, sample: str) -> None:
    """Wait until /metrics shows this sample line (bounded)."""
    await _until(lambda: sample in w.server.metrics.render().decode())


async def _until(pred: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def bw(sqlite_db) -> AsyncIterator[World]:
    w = await start_world(make_settings(sqlite_db, bots=BOTS_FAST))
    yield w
    await w.close()
    await w.server.stop(drain_seconds=0.5)


@pytest.fixture
async def bw_any(backend) -> AsyncIterator[World]:
    """SQLite and MariaDB."""
    w = await start_world(make_settings(backend, bots=BOTS_FAST))
    yield w
    await w.close()
    await w.server.stop(drain_seconds=0.5)


async def test_admin_creates_bot_that_posts_and_tokens_are_revocable(bw_any, receiver):
    w = bw_any
    root = await _admin(w)
    ann, ann_tok, ann_c = await w.user("ann")
    assert ann_c is not None
    st, r = await _api(w, "POST", "/api/v1/admin/bots", {"username": "x-bot"}, ann_tok)
    assert st == 403
    st, r = await _api(
        w,
        "POST",
        "/api/v1/admin/bots",
        {"username": "Helper", "display_name": "Helper Bot", "webhook_url": receiver.url},
        root,
    )
    assert st == 201, r
    token, bot = r["token"], r["bot"]
    assert token.startswith("bcb_") and bot["username"] == "helper"
    assert bot["events"] == ["mentions", "messages"] and r["webhook_secret"]
    # only the hash is stored
    rows = await w.server.bots.bots.all()
    assert token not in json.dumps(rows)
    assert rows[0]["has_token"]
    st, r = await _api(w, "GET", "/api/v1/admin/bots", None, root)
    assert st == 200 and "webhook_secret" not in json.dumps(r) and r["bots"][0]["id"] == bot["id"]
    st, r = await _api(w, "POST", "/api/v1/admin/bots", {"username": "helper"}, root)
    assert st == 409 and r["error"]["code"] == "user_exists"
    st, r = await _api(
        w, "POST", "/api/v1/admin/bots", {"username": "b2", "webhook_url": "ftp://x"}, root
    )
    assert st == 400
    # a bot cannot log in with a password
    st, _ = await _api(w, "POST", "/api/v1/login", {"username": "helper", "password": "!bot"})
    assert st == 401
    st, r = await _api(w, "GET", "/api/v1/bot/me", None, token)
    assert st == 200 and r["bot"]["username"] == "helper"
    # a direct conversation with the bot: it may post there
    conv = (await ann_c.request("conv.create", kind="direct", members=["helper"]))["conv"]
    st, r = await _api(
        w, "POST", f"/api/v1/bot/conversations/{conv}/messages", {"text": "hi"}, token
    )
    assert st == 200, r
    ev = await ann_c.next_event("msg", pred=lambda e: e.get("bot"))
    assert ev["text"] == "hi" and ev["from"] == bot["id"]
    other = (await ann_c.request("conv.create", kind="group", members=[], title="private"))["conv"]
    st, r = await _api(
        w, "POST", f"/api/v1/bot/conversations/{other}/messages", {"text": "x"}, token
    )
    assert st == 404
    st, r = await _api(w, "POST", f"/api/v1/bot/conversations/{conv}/messages", {"text": ""}, token)
    assert st == 400
    st, r = await _api(w, "GET", "/api/v1/bot/conversations", None, token)
    assert [c["conv"] for c in r["conversations"]] == [conv]
    # a session token is not a bot token, and the reverse
    st, _ = await _api(w, "GET", "/api/v1/bot/me", None, ann_tok)
    assert st == 401
    st, _ = await _api(w, "GET", "/api/v1/me", None, token)
    assert st == 401
    # a new token revokes the old one at once
    st, r = await _api(w, "POST", "/api/v1/admin/bots/helper/token", None, root)
    new = r["token"]
    st, _ = await _api(w, "GET", "/api/v1/bot/me", None, token)
    assert st == 401
    st, _ = await _api(w, "GET", "/api/v1/bot/me", None, new)
    assert st == 200
    st, _ = await _api(w, "DELETE", "/api/v1/admin/bots/helper", None, root)
    assert st == 200
    st, _ = await _api(w, "GET", "/api/v1/bot/me", None, new)
    assert st == 401


async def test_webhooks_signed_for_messages_and_mentions(bw, receiver):
    w = bw
    root = await _admin(w)
    _, _, ann = await w.user("ann")
    _, _, bob = await w.user("bob")
    assert ann is not None and bob is not None
    st, r = await _api(
        w, "POST", "/api/v1/admin/bots", {"username": "watcher", "webhook_url": receiver.url}, root
    )
    receiver.secret = r["webhook_secret"]
    bot_id, token = r["bot"]["id"], r["token"]
    st, r = await _api(
        w,
        "POST",
        "/api/v1/admin/bots",
        {"username": "pager", "webhook_url": receiver.url, "events": ["mentions"]},
        root,
    )
    pager_id = r["bot"]["id"]
    # the pager signs with its own secret: give it the same receiver but check by bot id below
    pager_secret = r["webhook_secret"]
    conv = (
        await ann.request(
            "conv.create", kind="group", members=["bob", "watcher", "pager"], title="ops"
        )
    )["conv"]
    await ann.send_text(conv, "deploy at five")
    await _until(lambda: len(receiver.got) >= 1)
    await bob.send_text(conv, "ping @watcher", mentions=[bot_id])
    await _until(lambda: len(receiver.got) >= 2)
    # the bot's own posts are not sent back to it
    await _api(w, "POST", f"/api/v1/bot/conversations/{conv}/messages", {"text": "ack"}, token)
    await asyncio.sleep(0.3)
    got = [g for g in receiver.got if g["json"]["bot"]["id"] == bot_id]
    assert len(got) == 2 and all(g["valid"] for g in got)
    assert got[0]["line"] == "POST /hook?x=1 HTTP/1.1"
    assert (
        got[0]["json"]["event"] == "message"
        and got[0]["json"]["message"]["text"] == "deploy at five"
    )
    assert got[1]["json"]["event"] == "mention" and got[1]["json"]["conv"] == conv
    assert not [g for g in receiver.got if g["json"]["bot"]["id"] == pager_id]  # not mentioned
    receiver.secret = pager_secret
    await ann.send_text(conv, "@pager wake up", mentions=[pager_id])
    await _until(lambda: any(g["json"]["bot"]["id"] == pager_id for g in receiver.got))
    g = next(g for g in receiver.got if g["json"]["bot"]["id"] == pager_id)
    assert g["valid"] and g["json"]["event"] == "mention"
    await _metric(w, 'berrychat_webhook_deliveries_total{result="ok"} 4')  # both bots: the last


async def test_webhook_retried_with_backoff_then_bounded(bw, receiver):
    w = bw
    root = await _admin(w)
    _, _, ann = await w.user("ann")
    assert ann is not None
    st, r = await _api(
        w, "POST", "/api/v1/admin/bots", {"username": "flaky", "webhook_url": receiver.url}, root
    )
    receiver.secret = r["webhook_secret"]
    conv = (await ann.request("conv.create", kind="direct", members=["flaky"]))["conv"]
    receiver.statuses = [500]  # fails first, succeeds on the retry
    t0 = time.monotonic()
    await ann.send_text(conv, "one")
    await _until(lambda: len(receiver.got) >= 2)
    assert [g["attempt"] for g in receiver.got] == [1, 2]
    assert all(g["valid"] for g in receiver.got)
    assert time.monotonic() - t0 >= 0.05  # waited the backoff
    receiver.statuses = [503, 503, 503, 503]  # every attempt fails: 3 attempts, then given up
    await ann.send_text(conv, "two")
    await _until(lambda: len(receiver.got) >= 5)
    await asyncio.sleep(0.5)
    assert len(receiver.got) == 5 and [g["attempt"] for g in receiver.got[2:]] == [1, 2, 3]
    await _metric(w, 'berrychat_webhook_deliveries_total{result="failed"} 1')
    m = w.server.metrics.render().decode()
    assert 'berrychat_webhook_deliveries_total{result="ok"} 1' in m
    assert 'berrychat_webhook_attempts_total{outcome="http_5xx"} 4' in m


async def test_slow_receiver_never_blocks_messages_and_queue_is_bounded(sqlite_db, receiver):
    w = await start_world(
        make_settings(
            sqlite_db, bots={**BOTS_FAST, "webhook_queue_size": 2, "webhook_timeout_seconds": 5}
        )
    )
    try:
        root = await _admin(w)
        _, _, ann = await w.user("ann")
        assert ann is not None
        st, r = await _api(
            w,
            "POST",
            "/api/v1/admin/bots",
            {"username": "slowpoke", "webhook_url": receiver.url},
            root,
        )
        receiver.secret = r["webhook_secret"]
        receiver.delay = 3.0
        conv = (await ann.request("conv.create", kind="direct", members=["slowpoke"]))["conv"]
        slowest = 0.0
        for i in range(6):
            t0 = time.monotonic()
            await ann.send_text(conv, f"m{i}")
            slowest = max(slowest, time.monotonic() - t0)
        assert slowest < 1.5  # no ack waited for the receiver (which holds each POST 3 s)
        m = w.server.metrics.render().decode()
        # the queue holds two (the one in flight included): the rest are dropped
        assert 'berrychat_webhook_deliveries_total{result="dropped"} 4' in m
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.5)


def test_cli_bot_add_list_token_remove(tmp_path, capsys):
    db = tmp_path / "cli.db"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"database": {"type": "sqlite", "database": str(db)}}))
    assert (
        main(
            [
                "bot",
                "--config",
                str(cfg),
                "add",
                "deploybot",
                "--webhook-url",
                "http://127.0.0.1:9/h",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    token = next(ln.split()[1] for ln in out.splitlines() if ln.startswith("token:"))
    assert token.startswith("bcb_") and "webhook secret:" in out
    assert main(["bot", "--config", str(cfg), "add", "deploybot"]) == 1
    assert "user_exists" in capsys.readouterr().err
    assert main(["bot", "--config", str(cfg), "list"]) == 0
    out = capsys.readouterr().out
    assert "deploybot" in out and token not in out
    assert main(["bot", "--config", str(cfg), "token", "deploybot"]) == 0
    new = capsys.readouterr().out.split()[1]
    assert new.startswith("bcb_") and new != token

    async def check() -> tuple[int, int]:
        w = await start_world(make_settings({"type": "sqlite", "database": str(db)}))
        try:
            a, _ = await _api(w, "GET", "/api/v1/bot/me", None, token)
            b, _ = await _api(w, "GET", "/api/v1/bot/me", None, new)
            return a, b
        finally:
            with contextlib.suppress(Exception):
                await w.server.stop(drain_seconds=0.2)

    assert asyncio.run(check()) == (401, 200)
    assert main(["bot", "--config", str(cfg), "remove", "deploybot"]) == 0
    assert main(["bot", "--config", str(cfg), "remove", "deploybot"]) == 1
    assert main(["bot", "--config", str(cfg), "add", "x", "--events", "nope"]) == 1


async def test_two_processes_one_webhook_per_message(sqlite_db, redis_server, receiver):
    """Two server processes sharing Redis: a bot made through one is known to the other at
    once (control message), and each message gives exactly one webhook, from the process that
    committed it."""
    from berrychat.server import Server

    s = make_settings(sqlite_db, redis=redis_server.settings(), bots=BOTS_FAST)
    servers = [Server(s), Server(s)]
    for srv in servers:
        await srv.start()
    w1, w2 = World(servers[0]), World(servers[1])
    try:
        root = await _admin(w1)
        _, _, ann = await w2.user("ann")
        assert ann is not None
        st, r = await _api(
            w1,
            "POST",
            "/api/v1/admin/bots",
            {"username": "relay", "webhook_url": receiver.url},
            root,
        )
        receiver.secret = r["webhook_secret"]
        await _until(lambda: r["bot"]["id"] in servers[1].bots.cache, timeout=5)
        conv = (await ann.request("conv.create", kind="direct", members=["relay"]))["conv"]
        for i in range(3):
            await ann.send_text(conv, f"hello {i}")
        await _until(lambda: len(receiver.got) >= 3)
        await asyncio.sleep(0.3)
        texts = sorted(g["json"]["message"]["text"] for g in receiver.got)
        assert texts == ["hello 0", "hello 1", "hello 2"] and all(g["valid"] for g in receiver.got)
        await _metric(w2, 'berrychat_webhook_deliveries_total{result="ok"} 3')
        assert 'result="ok"' not in servers[0].metrics.render().decode()
    finally:
        for w in (w1, w2):
            await w.close()
        for srv in servers:
            await srv.stop(drain_seconds=0.2)
