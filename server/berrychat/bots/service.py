"""Bot accounts: creation and removal (admins), API tokens, posting as a bot, and the events
that become webhooks.

A bot is a `users` row with role "bot" (it cannot log in: its password hash matches nothing)
plus a `bots` row. People add a bot to conversations like any user (`conv.add` with its name,
or a direct conversation with it). Its API token (`bcb_...`, shown once) is stored as a
SHA-256 hash; issuing a new one revokes the old one at once.

Webhook events are produced on the process that committed the message (once cluster-wide);
the bot list is cached per process and refreshed every `REFRESH_SECONDS` and at once when an
admin changes a bot through any process (control message "bots.changed"); CLI changes are seen
within `REFRESH_SECONDS`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Sequence
from typing import Any

from ..background import spawn
from ..chat.accounts import check_new_account, normalize_username, token_hash
from ..metrics import Metrics
from ..protocol.codes import ChatError
from ..store import Conflict, Op, StoreError
from ..store.base import now_ms
from .store import BotStore
from .webhooks import WebhookDispatcher

log = logging.getLogger(__name__)

BOT_PASSWORD_HASH = "!bot"  # no password verifies against this: bots never log in
TOKEN_PREFIX = "bcb_"
EVENTS = ("messages", "mentions")
REFRESH_SECONDS = 10.0
# stream event kinds that are messages (text, attachments); call records and changes are not
_NOT_MESSAGES = {"call", "edit", "recall", "react", "rename", "add", "remove", "leave", "role"}
_URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_webhook(url: Any, events: Any) -> tuple[str, list[str]]:
    if url is None:
        url = ""
    if not isinstance(url, str) or len(url) > 2000 or (url and not _URL.match(url)):
        raise ChatError("bad_field", "webhook_url: expected an http:// or https:// URL")
    if events is None:
        events = list(EVENTS)
    if isinstance(events, str):
        events = [e.strip() for e in events.split(",") if e.strip()]
    if not isinstance(events, list) or not all(e in EVENTS for e in events):
        raise ChatError("bad_field", f"events: a list of {', '.join(EVENTS)}")
    return url, sorted(set(events))


def public_bot(b: dict[str, Any]) -> dict[str, Any]:
    """A bot as admins see it (never the token or the webhook secret)."""
    return {k: b[k] for k in ("id", "username", "display_name", "webhook_url", "events")} | {
        "disabled": b["disabled"],
        "has_token": b["has_token"],
        "created_at": b["created_at"],
    }


class BotAdmin:
    """Admin operations; used by the HTTP API and by the CLI (no running server needed)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.bots = BotStore(store)

    async def add(
        self,
        username: Any,
        display_name: Any = "",
        webhook_url: Any = "",
        events: Any = None,
        created_by: int = 0,
    ) -> dict[str, Any]:
        name = check_new_account(username, display_name)
        url, evs = check_webhook(webhook_url, events)
        try:
            user = await self.store.create_user(
                name, BOT_PASSWORD_HASH, display_name or name, "bot"
            )
        except Conflict:
            raise ChatError("user_exists")
        token = new_token()
        secret = secrets.token_hex(32)
        await self.bots.create(user["id"], created_by, token_hash(token), url, secret, evs)
        bot = await self.bots.by_name(name)
        assert bot is not None
        return {"bot": public_bot(bot), "token": token, "webhook_secret": secret}

    async def get(self, username: str) -> dict[str, Any]:
        bot = await self.bots.by_name(normalize_username(username))
        if bot is None:
            raise ChatError("not_found", f"no such bot: {username}")
        return bot

    async def list(self) -> list[dict[str, Any]]:
        return [public_bot(b) for b in await self.bots.all()]

    async def remove(self, username: str) -> dict[str, Any]:
        bot = await self.get(username)
        await self.bots.delete(bot["id"])
        return bot

    async def new_token(self, username: str) -> str:
        bot = await self.get(username)
        token = new_token()
        await self.bots.set_token(bot["id"], token_hash(token))
        return token

    async def set_webhook(
        self, username: str, url: Any, events: Any, rotate_secret: bool = False
    ) -> dict[str, Any]:
        bot = await self.get(username)
        u, evs = check_webhook(url, events)
        secret = secrets.token_hex(32) if rotate_secret else None
        await self.bots.set_webhook(bot["id"], u, secret, evs)
        out: dict[str, Any] = {"bot": public_bot(await self.get(username))}
        if secret:
            out["webhook_secret"] = secret
        return out


class BotService(BotAdmin):
    """The running server's side: token auth, posting, webhook events."""

    def __init__(self, settings: Any, chat: Any, hub: Any, metrics: Metrics | None = None) -> None:
        super().__init__(chat.store)
        self.settings = settings
        self.chat = chat
        self.hub = hub
        self.webhooks = WebhookDispatcher(settings.bots, metrics)
        self.cache: dict[int, dict[str, Any]] = {}
        self._refresher: asyncio.Task | None = None
        hub.control_handlers["bots.changed"] = lambda msg: self._refresh_soon()

    async def start(self) -> None:
        try:
            await self.refresh()
        except StoreError as e:  # e.g. the schema is not migrated yet: retried every 10 s
            log.warning("bot list not loaded: %s", e)
        self.chat.event_hooks.append(self.on_event)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        await self.webhooks.close()

    async def refresh(self) -> None:
        self.cache = {b["id"]: b for b in await self.bots.all() if not b["disabled"]}

    def _refresh_soon(self) -> None:
        async def go() -> None:
            try:
                await self.refresh()
            except StoreError as e:
                log.warning("bot list not refreshed: %s", e)

        spawn(go())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self.refresh()
            except StoreError as e:
                log.warning("bot list not refreshed: %s", e)

    def changed(self) -> None:
        """Tell every process (this one included) to reload the bot list."""
        self.hub.broker.control({"op": "bots.changed"})

    # ---- the bot API ---------------------------------------------------------------------
    async def authenticate(self, authorization: str | None) -> dict[str, Any]:
        h = authorization or ""
        if not h.lower().startswith("bearer "):
            raise ChatError("not_authenticated", "send Authorization: Bearer <bot token>")
        token = h[7:].strip()
        if not token.startswith(TOKEN_PREFIX):
            raise ChatError("auth_failed", "not a bot token")
        bot = await self.bots.by_token_hash(token_hash(token))
        if bot is None:
            raise ChatError("auth_failed", "unknown or revoked bot token")
        if bot["disabled"]:
            raise ChatError("account_disabled")
        return bot

    async def post(
        self,
        bot: dict[str, Any],
        conv: int,
        text: str,
        cid: str | None,
        reply_to: int | None,
        mentions: list[int] | None,
    ) -> dict[str, Any]:
        op = Op(
            "text",
            conv,
            bot["id"],
            cid or f"bot-{secrets.token_hex(8)}",
            text=text,
            target=reply_to,
            mentions=mentions,
            extra={"bot": True},
        )
        r = await self.chat.apply(op)
        r["cid"] = op.cid
        return r

    # ---- webhooks ------------------------------------------------------------------------
    def on_event(self, ev: dict[str, Any], members: Sequence[int]) -> None:
        if not self.cache or ev.get("kind") in _NOT_MESSAGES:
            return
        mentions = ev.get("mentions") or ()
        for uid in members:
            bot = self.cache.get(uid)
            if bot is None or uid == ev.get("from") or not bot["webhook_url"]:
                continue
            kind = "mention" if uid in mentions else "message"
            wanted = "mentions" if kind == "mention" else "messages"
            if wanted not in bot["events"] and "messages" not in bot["events"]:
                continue
            payload = {
                "event": kind,
                "bot": {"id": uid, "username": bot["username"]},
                "conv": ev["conv"],
                "message": ev,
                "sent_at": now_ms(),
            }
            self.webhooks.enqueue(uid, bot["webhook_url"], bot["webhook_secret"], payload)
