"""HTTP endpoints for bots (docs/protocol.md, "Bots"), added to the HTTP API's route list.

Bot API (Authorization: Bearer <bot token>):
  GET  /api/v1/bot/me
  GET  /api/v1/bot/conversations
  POST /api/v1/bot/conversations/<conv>/messages   {"text", "cid"?, "reply_to"?, "mentions"?}
Admin API (Authorization: Bearer <session token of an admin>):
  POST   /api/v1/admin/bots                        {"username", "display_name"?,
                                                    "webhook_url"?, "events"?}
  GET    /api/v1/admin/bots
  DELETE /api/v1/admin/bots/<name>
  POST   /api/v1/admin/bots/<name>/token            (a new token; the old one stops working)
  PUT    /api/v1/admin/bots/<name>/webhook          {"webhook_url", "events"?, "rotate_secret"?}
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from ..protocol.codes import ChatError
from ..protocol.frames import FrameError, validate
from ..protocol.http11 import Request
from .service import BotService, public_bot


def routes(api: Any, bots: BotService) -> list[tuple[str, re.Pattern[str], Any, bool]]:
    c = r"(?P<conv>[0-9]{1,16})"
    n = r"(?P<name>[^/]{1,64})"
    max_text = api.settings.limits.max_text_chars

    def admin(s: dict[str, Any]) -> None:
        if s["role"] != "admin":
            raise ChatError("forbidden", "administrators only")

    def body(req: Request) -> dict[str, Any]:
        b = req.json()
        if not isinstance(b, dict):
            raise ChatError("bad_field", "body: expected a JSON object")
        return b

    async def me(req: Request, s: Any) -> tuple[int, Any]:
        bot = await bots.authenticate(req.header("authorization"))
        return 200, {"bot": public_bot(bot)}

    async def conversations(req: Request, s: Any) -> tuple[int, Any]:
        bot = await bots.authenticate(req.header("authorization"))
        return 200, {"conversations": await bots.chat.list_conversations(bot["id"])}

    async def post(req: Request, s: Any, conv: str) -> tuple[int, Any]:
        bot = await bots.authenticate(req.header("authorization"))
        err = bots.chat.rates.message(bot["id"], str(req.extra.get("peer", "")))
        if err is not None:
            raise err
        b = body(req)
        b["conv"] = int(conv)
        if b.get("cid") is None:  # optional for bots: without one a retry may post twice
            b["cid"] = f"bot-{secrets.token_hex(8)}"
        try:
            f = validate("msg.send", b, max_text=max_text)
        except FrameError as e:
            raise ChatError(e.code, e.message)
        if "text" not in f:  # msg.send also takes an attachment alone; the bot API does not
            raise ChatError("bad_field", "text: required (bots send text)")
        r = await bots.post(
            bot,
            f["conv"],
            f["text"],
            f["cid"],
            f.get("reply_to"),
            f.get("mentions"),
        )
        return 200, r

    async def admin_add(req: Request, s: dict[str, Any]) -> tuple[int, Any]:
        admin(s)
        b = body(req)
        r = await bots.add(
            b.get("username"),
            b.get("display_name") or "",
            b.get("webhook_url") or "",
            b.get("events"),
            s["user_id"],
        )
        bots.changed()
        return 201, r

    async def admin_list(req: Request, s: dict[str, Any]) -> tuple[int, Any]:
        admin(s)
        return 200, {"bots": await bots.list()}

    async def admin_remove(req: Request, s: dict[str, Any], name: str) -> tuple[int, Any]:
        admin(s)
        await bots.remove(name)
        bots.changed()
        return 200, {"removed": name}

    async def admin_token(req: Request, s: dict[str, Any], name: str) -> tuple[int, Any]:
        admin(s)
        return 200, {"token": await bots.new_token(name)}

    async def admin_webhook(req: Request, s: dict[str, Any], name: str) -> tuple[int, Any]:
        admin(s)
        b = body(req)
        r = await bots.set_webhook(
            name, b.get("webhook_url"), b.get("events"), bool(b.get("rotate_secret"))
        )
        bots.changed()
        return 200, r

    return [
        ("GET", re.compile(r"/api/v1/bot/me"), me, False),
        ("GET", re.compile(r"/api/v1/bot/conversations"), conversations, False),
        ("POST", re.compile(rf"/api/v1/bot/conversations/{c}/messages"), post, False),
        ("POST", re.compile(r"/api/v1/admin/bots"), admin_add, True),
        ("GET", re.compile(r"/api/v1/admin/bots"), admin_list, True),
        ("DELETE", re.compile(rf"/api/v1/admin/bots/{n}"), admin_remove, True),
        ("POST", re.compile(rf"/api/v1/admin/bots/{n}/token"), admin_token, True),
        ("PUT", re.compile(rf"/api/v1/admin/bots/{n}/webhook"), admin_webhook, True),
    ]
