"""REST endpoints (JSON over HTTP/1.1). See docs/protocol.md, "HTTP API"."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from .. import PROTOCOL_VERSION, __version__
from ..chat.accounts import public_user
from ..chat.service import ChatService
from ..config import Settings
from ..protocol import codes
from ..protocol.codes import ChatError
from ..protocol.frames import FrameError, validate
from ..protocol.http11 import HttpError, Request, build_response
from ..store import Op, StoreError
from ..store.schema import LATEST

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[tuple[int, Any]]]


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class HttpApi:
    def __init__(self, settings: Settings, chat: ChatService) -> None:
        self.settings = settings
        self.chat = chat
        self.store = chat.store
        c = r"(?P<conv>[0-9]{1,16})"
        self.routes: list[tuple[str, re.Pattern[str], Handler, bool]] = [
            ("GET", re.compile(r"/healthz"), self.healthz, False),
            ("GET", re.compile(r"/readyz"), self.readyz, False),
            ("GET", re.compile(r"/"), self.root, False),
            ("POST", re.compile(r"/api/v1/register"), self.register, False),
            ("POST", re.compile(r"/api/v1/login"), self.login, False),
            ("POST", re.compile(r"/api/v1/logout"), self.logout, True),
            ("POST", re.compile(r"/api/v1/password"), self.password, True),
            ("GET", re.compile(r"/api/v1/me"), self.me, True),
            ("GET", re.compile(r"/api/v1/conversations"), self.conv_list, True),
            ("POST", re.compile(r"/api/v1/conversations"), self.conv_create, True),
            ("GET", re.compile(rf"/api/v1/conversations/{c}"), self.conv_get, True),
            ("GET", re.compile(rf"/api/v1/conversations/{c}/messages"), self.history, True),
            ("POST", re.compile(rf"/api/v1/conversations/{c}/messages"), self.send, True),
            ("POST", re.compile(r"/api/v1/admin/users"), self.admin_create_user, True),
            (
                "POST",
                re.compile(r"/api/v1/admin/users/(?P<name>[^/]{1,64})/(?P<action>disable|enable)"),
                self.admin_user,
                True,
            ),
        ]

    async def __call__(self, req: Request) -> bytes:
        keep = req.keep_alive
        try:
            status, body = await self._route(req)
        except ChatError as e:
            status = codes.http_status(e.code)
            body = {
                "error": {
                    "code": e.code,
                    "message": e.message,
                    "retryable": codes.retryable(e.code),
                }
            }
        except HttpError as e:
            status = e.status
            body = {"error": {"code": "bad_request", "message": e.message, "retryable": False}}
        except StoreError as e:
            log.warning("database error: %s", e)
            status = 503
            body = {
                "error": {
                    "code": "unavailable",
                    "message": "database unavailable",
                    "retryable": True,
                }
            }
        if isinstance(body, bytes):  # a complete response (file downloads)
            return body
        if status == 204:
            return build_response(204, keep_alive=keep)
        return build_response(status, _dump(body), keep_alive=keep)

    async def _route(self, req: Request) -> tuple[int, Any]:
        allowed = []
        for method, pattern, handler, auth in self.routes:
            m = pattern.fullmatch(req.path)
            if not m:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            session = await self._session(req) if auth else None
            return await handler(req, session, **m.groupdict())
        if allowed:
            raise HttpError(405, "method not allowed")
        raise ChatError("not_found", "no such endpoint")

    async def _session(self, req: Request) -> dict[str, Any]:
        h = req.header("authorization", "") or ""
        if not h.lower().startswith("bearer "):
            raise ChatError("not_authenticated", "send Authorization: Bearer <token>")
        return await self.chat.accounts.authenticate(h[7:].strip())

    @staticmethod
    def _body(req: Request) -> dict[str, Any]:
        b = req.json()
        if not isinstance(b, dict):
            raise ChatError("bad_field", "body: expected a JSON object")
        return b

    # ---- health --------------------------------------------------------------------------
    async def root(self, req: Request, s: Any) -> tuple[int, Any]:
        return 200, {"service": "berrychat", "version": __version__, "protocol": PROTOCOL_VERSION}

    async def healthz(self, req: Request, s: Any) -> tuple[int, Any]:
        return 200, {"status": "ok", "version": __version__}

    async def readyz(self, req: Request, s: Any) -> tuple[int, Any]:
        try:
            ok = await self.store.ping()
            version = await self.store.schema_version()
        except StoreError as e:
            return 503, {"status": "unavailable", "database": "unreachable", "detail": str(e)[:200]}
        if not ok:
            return 503, {"status": "unavailable", "database": "unreachable"}
        if version != LATEST:
            return 503, {
                "status": "unavailable",
                "database": "ok",
                "schema": {"current": version, "latest": LATEST},
                "detail": "run berrychat migrate",
            }
        return 200, {
            "status": "ready",
            "database": "ok",
            "schema": {"current": version, "latest": LATEST},
        }

    # ---- accounts ------------------------------------------------------------------------
    async def register(self, req: Request, s: Any) -> tuple[int, Any]:
        if not self.settings.auth.open_registration:
            raise ChatError("registration_closed")
        b = self._body(req)
        user = await self.chat.accounts.register(
            b.get("username"), b.get("password"), b.get("display_name") or ""
        )
        return 201, {"user": public_user(user)}

    async def login(self, req: Request, s: Any) -> tuple[int, Any]:
        b = self._body(req)
        return 200, await self.chat.accounts.login(
            b.get("username"), b.get("password"), b.get("device_id") or "default"
        )

    async def logout(self, req: Request, s: dict[str, Any]) -> tuple[int, Any]:
        await self.chat.accounts.logout(s)
        return 200, {}

    async def password(self, req: Request, s: dict[str, Any]) -> tuple[int, Any]:
        b = self._body(req)
        n = await self.chat.accounts.change_password(
            s, b.get("old_password"), b.get("new_password")
        )
        return 200, {"revoked_sessions": n}

    async def me(self, req: Request, s: dict[str, Any]) -> tuple[int, Any]:
        user = {
            "id": s["user_id"],
            "username": s["username"],
            "display_name": s["display_name"],
            "role": s["role"],
        }
        return 200, {"user": user, "device_id": s["device_id"], "expires_at": s["expires_at"]}

    async def admin_create_user(self, req: Request, s: dict[str, Any]) -> tuple[int, Any]:
        if s["role"] != "admin":
            raise ChatError("forbidden", "administrators only")
        b = self._body(req)
        role = b.get("role", "user")
        if role not in ("user", "admin"):
            raise ChatError("bad_field", "role: expected user or admin")
        user = await self.chat.accounts.register(
            b.get("username"), b.get("password"), b.get("display_name") or "", role
        )
        return 201, {"user": public_user(user)}

    async def admin_user(
        self, req: Request, s: dict[str, Any], name: str, action: str
    ) -> tuple[int, Any]:
        if s["role"] != "admin":
            raise ChatError("forbidden", "administrators only")
        u = await self.chat.accounts.set_disabled(name, action == "disable")
        return 200, {"user": public_user(u), "disabled": action == "disable"}

    # ---- conversations and messages ------------------------------------------------------
    async def conv_list(self, req: Request, s: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"conversations": await self.chat.list_conversations(s["user_id"])}

    async def conv_create(self, req: Request, s: dict[str, Any]) -> tuple[int, Any]:
        f = self._validate("conv.create", self._body(req))
        r = await self.chat.create_conversation(
            s["user_id"], f["kind"], f.get("members") or [], f.get("title", "")
        )
        return (200 if r["existed"] else 201), r

    async def conv_get(self, req: Request, s: dict[str, Any], conv: str) -> tuple[int, Any]:
        return 200, {"conversation": await self.chat.get_conversation(s["user_id"], int(conv))}

    async def history(self, req: Request, s: dict[str, Any], conv: str) -> tuple[int, Any]:
        q: dict[str, Any] = {"conv": int(conv)}
        for k in ("before", "after", "limit"):
            if k in req.query:
                v = req.query[k]
                if not v.isdigit() or len(v) > 16:
                    raise ChatError("bad_field", f"{k}: expected a non-negative integer")
                q[k] = int(v)
        f = self._validate("history", q)
        return 200, await self.chat.history(
            s["user_id"], f["conv"], f.get("before"), f.get("after"), f.get("limit")
        )

    async def send(self, req: Request, s: dict[str, Any], conv: str) -> tuple[int, Any]:
        b = self._body(req)
        b["conv"] = int(conv)
        f = self._validate("msg.send", b)
        op = Op(
            "text",
            f["conv"],
            s["user_id"],
            f["cid"],
            text=f.get("text", ""),
            target=f.get("reply_to"),
            mentions=f.get("mentions"),
            attachment=f.get("attachment"),
        )
        r = await self.chat.apply(op)
        r["cid"] = f["cid"]
        return 200, r

    def _validate(self, ftype: str, obj: dict[str, Any]) -> dict[str, Any]:
        try:
            return validate(ftype, obj, max_text=self.settings.limits.max_text_chars)
        except FrameError as e:
            raise ChatError(e.code, e.message)
