"""The authorization matrix: every client frame type and every HTTP route x every kind of caller
(member, non-member, removed member, server admin who is not a member, bot, no token, expired
token), each answer checked against the table below.

Table-driven on purpose: the frame types are read from `protocol.frames.SCHEMAS` and the routes
from the running server's route table, so a new frame type or endpoint without a row here fails
`test_every_frame_type_has_a_row` / `test_every_route_has_a_row` until someone decides who may
use it. test_authorization.py checks the outsider's answers against a conversation that does not
exist and that no push leaks; this file covers the other callers and the whole catalogue.

SQLite only: authorization is decided above the store (test_authorization runs on both).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from support import PASSWORD, World, make_settings, start_world

from berrychat.client import Client, ClientError, http_json, login
from berrychat.protocol.frames import SCHEMAS

NOPE = 987654
# A call id that does not exist, owned by the process under test. (One naming another process
# is forwarded over the broker and waits 5 s for an owner that never answers.)
CALL = "{pid}.0123456789abcdef"

# ---- the cast ------------------------------------------------------------------------------


@dataclass
class Ctx:
    """One fresh group conversation per cell: owner (creator), member, removed (was a member),
    plus the ids and seqs a frame may name."""

    world: World
    owner: Client
    conv: int
    seq: int  # the owner's text message
    voice_seq: int | None
    ids: dict[str, int]
    tokens: dict[str, str] = field(default_factory=dict)
    attachment: str | None = None
    call: str = ""


# Who may do what. "ok" = acknowledged; anything else is the error code. Callers that are not in
# the conversation (outsider, removed, admin) must get `not_found` for every frame that names it,
# exactly as for a conversation that does not exist; frames that name no conversation behave for
# them as for a member.
F = Callable[[Ctx], dict[str, Any]]


@dataclass(frozen=True)
class Row:
    fields: F
    member: str  # the answer a plain member gets
    names_conv: bool = True  # the frame names a conversation (outsiders: not_found)


FRAME_ROWS: dict[str, Row] = {
    "hello": Row(lambda c: {"v": 1, "token": "x" * 20}, "conflict", False),
    "ping": Row(lambda c: {}, "ok", False),
    "conv.create": Row(lambda c: {"kind": "group", "members": ["friend"]}, "ok", False),
    "conv.list": Row(lambda c: {}, "ok", False),
    "conv.get": Row(lambda c: {"conv": c.conv}, "ok"),
    "conv.rename": Row(lambda c: {"conv": c.conv, "title": "pwned"}, "forbidden"),
    "conv.add": Row(lambda c: {"conv": c.conv, "users": ["friend"]}, "forbidden"),
    "conv.remove": Row(lambda c: {"conv": c.conv, "user": c.ids["owner"]}, "forbidden"),
    "conv.leave": Row(lambda c: {"conv": c.conv}, "ok"),
    "conv.role": Row(
        lambda c: {"conv": c.conv, "user": c.ids["member"], "role": "admin"}, "forbidden"
    ),
    "msg.send": Row(lambda c: {"conv": c.conv, "cid": "m1", "text": "hi"}, "ok"),
    "msg.edit": Row(
        lambda c: {"conv": c.conv, "cid": "m2", "seq": c.seq, "text": "x"}, "forbidden"
    ),
    "msg.recall": Row(lambda c: {"conv": c.conv, "cid": "m3", "seq": c.seq}, "forbidden"),
    "msg.react": Row(lambda c: {"conv": c.conv, "cid": "m4", "seq": c.seq, "emoji": "👍"}, "ok"),
    "history": Row(lambda c: {"conv": c.conv, "after": 0}, "ok"),
    "sync": Row(lambda c: {"cursors": {str(c.conv): 0}}, "ok", False),  # + removed: see below
    "receipt": Row(lambda c: {"conv": c.conv, "kind": "read", "seq": 1}, "ok"),
    "typing": Row(lambda c: {"conv": c.conv}, "ok"),
    "presence": Row(lambda c: {"status": "away"}, "ok", False),
    "presence.get": Row(lambda c: {"users": [c.ids["owner"]]}, "ok", False),  # + audience check
    "media.played": Row(lambda c: {"conv": c.conv, "seq": c.voice_seq or c.seq}, "ok"),
    "call.invite": Row(lambda c: {"conv": c.conv}, "forbidden"),  # group: calls are 1:1
    "call.ringing": Row(lambda c: {"call": c.call}, "not_found", False),
    "call.accept": Row(lambda c: {"call": c.call}, "not_found", False),
    "call.reject": Row(lambda c: {"call": c.call}, "not_found", False),
    "call.hangup": Row(lambda c: {"call": c.call}, "not_found", False),
    "call.sdp": Row(
        lambda c: {"call": c.call, "sdp_type": "offer", "sdp": "v=0"}, "not_found", False
    ),
    "call.ice": Row(lambda c: {"call": c.call, "candidate": ""}, "not_found", False),
    "call.ice_servers": Row(lambda c: {}, "ok", False),
}


def test_every_frame_type_has_a_row() -> None:
    missing = sorted(set(SCHEMAS) - set(FRAME_ROWS))
    assert not missing, f"frame types without an authorization row: {missing} (add them above)"


# ---- fixtures ------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def cast(tmp_path: Path):
    w = await start_world(
        make_settings(
            {"type": "sqlite", "database": str(tmp_path / "authz.db")},
            uploads={"dir": str(tmp_path / "uploads")},
        )
    )
    ids: dict[str, int] = {}
    tokens: dict[str, str] = {}
    clients: dict[str, Client] = {}
    for name in ("owner", "member", "removed", "outsider", "friend"):
        u, tok, c = await w.user(name)
        ids[name], tokens[name] = u["id"], tok
        assert c is not None
        clients[name] = c
    await w.server.chat.accounts.register("admin", PASSWORD, "", "admin")
    s = await login(w.host, w.port, "admin", PASSWORD)
    ids["admin"], tokens["admin"] = s["user"]["id"], s["token"]
    clients["admin"] = await w.connect(s["token"])
    st, r = await http_json(
        w.host, w.port, "POST", "/api/v1/admin/bots", {"username": "robo"}, token=s["token"]
    )
    if st == 201:
        ids["bot"], tokens["bot"] = r["bot"]["id"], r["token"]
    aid = await _voice(w, tokens["owner"])
    if aid is not None:
        tokens["voice"] = aid  # the owner's voice upload, attached in every fresh conversation
    # an expired session of a real user
    exp = await login(w.host, w.port, "outsider", PASSWORD, "old-phone")
    await _expire(w, exp["token"])
    tokens["expired"] = exp["token"]
    yield w, ids, tokens, clients
    await w.close()
    await w.server.stop(drain_seconds=0.2)


async def _expire(w: World, token: str) -> None:
    import time

    from berrychat.chat.accounts import token_hash
    from berrychat.store.base import Q

    def tx(d: Any):
        yield Q(
            "UPDATE sessions SET expires_at=? WHERE token_hash=?",
            (int(time.time() * 1000) - 1, token_hash(token)),
        )

    await w.server.store.run(tx)


async def _voice(w: World, token: str) -> str | None:
    """A tiny voice upload (Ogg signature, declared audio/ogg), or None without uploads."""
    import asyncio

    body = b"OggS" + bytes(200)
    head = (
        f"POST /api/v1/uploads?name=v.ogg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: audio/ogg\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(w.host, w.port)
    writer.write(head + body)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status, _, rest = data.partition(b"\r\n\r\n")
    if b" 201 " not in status.split(b"\r\n")[0]:
        return None
    import json

    return json.loads(rest)["attachment"]["id"]


async def _fresh(cast_: Any, with_bot: bool = False) -> Ctx:
    w, ids, tokens, clients = cast_
    owner = clients["owner"]
    members = ["member", "removed"] + (["robo"] if with_bot and "bot" in ids else [])
    conv = (await owner.request("conv.create", kind="group", members=members, title="t"))["conv"]
    seq = (await owner.send_text(conv, "secret"))["seq"]
    voice_seq = None
    aid = tokens.get("voice")
    if aid is not None:
        try:
            voice_seq = (
                await owner.request("msg.send", conv=conv, cid=f"v{conv}", attachment=aid)
            )["seq"]
        except ClientError:
            voice_seq = None
    await owner.request("conv.remove", conv=conv, user=ids["removed"])
    calls = getattr(w.server, "calls", None)
    call = CALL.format(pid=getattr(calls, "pid", "p0"))
    return Ctx(w, owner, conv, seq, voice_seq, ids, tokens, aid, call)


def _outcome(exc_or_ack: Any) -> str:
    if isinstance(exc_or_ack, ClientError):
        return str(exc_or_ack.code)
    return "ok"


async def _try(c: Client, ftype: str, fields: dict[str, Any]) -> tuple[str, dict]:
    try:
        r = await c.request(ftype, **fields)
        return "ok", r
    except ClientError as e:
        return _outcome(e), dict(e.frame)


# ---- WebSocket frames ----------------------------------------------------------------------


async def test_frame_matrix(cast) -> None:
    w, ids, tokens, clients = cast
    results: dict[tuple[str, str], str] = {}
    for ftype in sorted(SCHEMAS):
        row = FRAME_ROWS[ftype]
        shared = await _fresh(cast)
        for who in ("member", "outsider", "removed", "admin"):
            # the member may change the conversation: a fresh one; the others share one (and
            # are checked to change nothing)
            ctx = await _fresh(cast) if who == "member" else shared
            before = (await ctx.owner.request("conv.get", conv=ctx.conv))["conversation"]
            got, answer = await _try(clients[who], ftype, row.fields(ctx))
            results[(ftype, who)] = got
            if who == "member":
                want = row.member
            elif row.names_conv:
                want = "not_found"
                # indistinguishable from a conversation that does not exist
                fake = dict(row.fields(ctx), conv=NOPE)
                got_fake, answer_fake = await _try(clients[who], ftype, fake)
                answer.pop("id", None), answer_fake.pop("id", None)
                assert answer == answer_fake, (ftype, who, answer, answer_fake)
            else:
                want = row.member
            assert got == want, f"{ftype} by {who}: {got} ({answer}), expected {want}"
            if who != "member" and row.names_conv:
                after = (await ctx.owner.request("conv.get", conv=ctx.conv))["conversation"]
                assert after == before, f"{ftype} by {who} changed the conversation"
            if ftype == "sync" and who != "member":
                assert ctx.conv not in [x["conv"] for x in answer["changed"]]
                assert answer["removed"] == [ctx.conv]
            if ftype == "presence.get" and who != "member":
                # presence only between users who share a conversation (removed shares none)
                assert answer["users"] == {}, (who, answer)
    print("\nframe matrix:", len(results), "cells")


async def test_frames_without_a_valid_session(cast) -> None:
    """No hello, an expired token, a bot's API token: only hello and ping are answered."""
    w, ids, tokens, _ = cast
    ctx = await _fresh(cast)
    c = await Client.connect(w.host, w.port)
    sent = 0
    for ftype in sorted(SCHEMAS):
        if sent >= 8:  # not_authenticated counts towards the bad-frame limit (close 4400)
            c.abort()
            c = await Client.connect(w.host, w.port)
            sent = 0
        fields = FRAME_ROWS[ftype].fields(ctx)
        got, answer = await _try(c, ftype, fields)
        if ftype == "ping":
            assert got == "ok"
        elif ftype == "hello":
            assert got == "auth_failed"  # a made-up token
            assert (await c.wait_closed())[0] == 4401
            c = await Client.connect(w.host, w.port)
            sent = 0
        else:
            assert got == "not_authenticated", (ftype, answer)
            sent += 1
    c.abort()
    for kind in ("expired", "bot"):
        if kind not in tokens:
            continue
        c = await Client.connect(w.host, w.port)
        with pytest.raises(ClientError) as e:
            await c.hello(tokens[kind])
        assert e.value.code == "auth_failed"
        assert (await c.wait_closed())[0] == 4401
    # the URL form must not authenticate either: an error, then close 4401
    c = await Client.connect_url_token(w.host, w.port, tokens["expired"])
    err = await c.next_event("error")
    assert err["code"] == "auth_failed"
    assert (await c.wait_closed())[0] == 4401


# ---- HTTP routes -----------------------------------------------------------------------------

CALLERS = ("member", "outsider", "removed", "admin", "bot", "none", "expired")


@dataclass(frozen=True)
class Http:
    path: Callable[[Ctx], str]
    body: Callable[[Ctx], Any] | None
    want: dict[str, int]  # caller -> status; callers not listed: `default`
    default: int


def _users(ok: int) -> dict[str, int]:
    """A route any logged-in person may use; bots (API tokens) and sessionless callers not."""
    return {"member": ok, "outsider": ok, "removed": ok, "admin": ok}


def _member_only(ok: int) -> dict[str, int]:
    return {"member": ok, "outsider": 404, "removed": 404, "admin": 404}


def _admin_only(ok: int) -> dict[str, int]:
    return {"admin": ok, "member": 403, "outsider": 403, "removed": 403}


_c = r"/api/v1/conversations/(?P<conv>[0-9]{1,16})"
HTTP_ROWS: dict[tuple[str, str], Http] = {
    ("GET", "/healthz"): Http(lambda c: "/healthz", None, {}, 200),
    ("GET", "/readyz"): Http(lambda c: "/readyz", None, {}, 200),
    ("GET", "/"): Http(lambda c: "/", None, {}, 200),
    ("GET", "/metrics"): Http(lambda c: "/metrics", None, {}, 200),
    # public, token or not; a wrong password is a 401 for everyone
    ("POST", "/api/v1/register"): Http(
        lambda c: "/api/v1/register", lambda c: {"username": "owner", "password": PASSWORD}, {}, 409
    ),
    ("POST", "/api/v1/login"): Http(
        lambda c: "/api/v1/login", lambda c: {"username": "owner", "password": "wrong!!!"}, {}, 401
    ),
    ("POST", "/api/v1/logout"): Http(lambda c: "/api/v1/logout", lambda c: {}, _users(200), 401),
    ("POST", "/api/v1/password"): Http(
        lambda c: "/api/v1/password",
        lambda c: {"old_password": "not it at all", "new_password": PASSWORD},
        {},
        401,  # the old password is checked: a stolen token alone cannot change it
    ),
    ("GET", "/api/v1/me"): Http(lambda c: "/api/v1/me", None, _users(200), 401),
    ("GET", "/api/v1/conversations"): Http(
        lambda c: "/api/v1/conversations", None, _users(200), 401
    ),
    ("POST", "/api/v1/conversations"): Http(
        lambda c: "/api/v1/conversations",
        lambda c: {"kind": "group", "members": ["friend"]},
        _users(201),
        401,
    ),
    ("GET", _c): Http(lambda c: f"/api/v1/conversations/{c.conv}", None, _member_only(200), 401),
    ("GET", _c + "/messages"): Http(
        lambda c: f"/api/v1/conversations/{c.conv}/messages?after=0", None, _member_only(200), 401
    ),
    ("POST", _c + "/messages"): Http(
        lambda c: f"/api/v1/conversations/{c.conv}/messages",
        lambda c: {"cid": "h1", "text": "via http"},
        _member_only(200),
        401,
    ),
    ("POST", "/api/v1/admin/users"): Http(
        lambda c: "/api/v1/admin/users",
        lambda c: {"username": f"new{c.conv}", "password": PASSWORD},
        _admin_only(201),
        401,
    ),
    ("POST", r"/api/v1/admin/users/(?P<name>[^/]{1,64})/(?P<action>disable|enable)"): Http(
        lambda c: "/api/v1/admin/users/friend/enable", None, _admin_only(200), 401
    ),
    # attachments
    ("POST", r"/api/v1/uploads"): Http(
        lambda c: "/api/v1/uploads?name=a.bin", lambda c: b"plain bytes", _users(201), 401
    ),
    ("GET", r"/api/v1/uploads/limits"): Http(lambda c: "/api/v1/uploads/limits", None, {}, 200),
    # signed download links are issued to any user; the download itself checks membership
    ("POST", r"/api/v1/files/links"): Http(
        lambda c: "/api/v1/files/links",
        lambda c: {"ids": ["AAAAAAAAAAAAAAAAAAAAAA"]},
        _users(200),
        401,
    ),
    ("GET", r"/api/v1/files/(?P<aid>[A-Za-z0-9_-]{8,32})"): Http(
        lambda c: f"/api/v1/files/{c.attachment}", None, _member_only(200), 401
    ),
    # bots: their API takes only bot tokens; administration only admins
    ("GET", "/api/v1/bot/me"): Http(lambda c: "/api/v1/bot/me", None, {"bot": 200}, 401),
    ("GET", "/api/v1/bot/conversations"): Http(
        lambda c: "/api/v1/bot/conversations", None, {"bot": 200}, 401
    ),
    ("POST", r"/api/v1/bot/conversations/(?P<conv>[0-9]{1,16})/messages"): Http(
        lambda c: f"/api/v1/bot/conversations/{c.conv}/messages",
        lambda c: {"text": "beep"},
        {"bot": 200},
        401,
    ),
    ("POST", "/api/v1/admin/bots"): Http(
        lambda c: "/api/v1/admin/bots",
        lambda c: {"username": f"bot{c.conv}"},
        _admin_only(201),
        401,
    ),
    ("GET", "/api/v1/admin/bots"): Http(
        lambda c: "/api/v1/admin/bots", None, _admin_only(200), 401
    ),
    ("DELETE", r"/api/v1/admin/bots/(?P<name>[^/]{1,64})"): Http(
        lambda c: "/api/v1/admin/bots/nobot", None, _admin_only(404), 401
    ),
    ("POST", r"/api/v1/admin/bots/(?P<name>[^/]{1,64})/token"): Http(
        lambda c: "/api/v1/admin/bots/nobot/token", None, _admin_only(404), 401
    ),
    ("PUT", r"/api/v1/admin/bots/(?P<name>[^/]{1,64})/webhook"): Http(
        lambda c: "/api/v1/admin/bots/nobot/webhook",
        lambda c: {"webhook_url": ""},
        _admin_only(404),
        401,
    ),
}


def _route_keys(w: World) -> set[tuple[str, str]]:
    keys = {(m, p.pattern) for m, p, _, _ in w.server.api.routes}
    keys.add(("GET", "/metrics"))  # served by the server itself, before the API
    return keys


async def test_every_route_has_a_row(cast) -> None:
    w = cast[0]
    missing = sorted(_route_keys(w) - set(HTTP_ROWS))
    assert not missing, f"routes without an authorization row: {missing} (add them above)"


async def test_http_matrix(cast) -> None:
    w, ids, tokens, clients = cast
    routes = _route_keys(w)
    cells = 0
    for key in sorted(routes):
        row = HTTP_ROWS[key]
        for who in CALLERS:
            if who == "bot" and "bot" not in tokens:
                continue
            ctx = await _fresh(cast, with_bot=(who == "bot"))
            if "{None}" in row.path(ctx):
                continue  # no attachment in this build
            token = None
            if who in ("member", "outsider", "removed", "admin"):
                # a throwaway device session, so that logout cannot end the cast's own sessions
                token = (await login(w.host, w.port, who, PASSWORD, f"d{ctx.conv}"))["token"]
            elif who in ("bot", "expired"):
                token = tokens[who]
            body = row.body(ctx) if row.body else None
            raw = body if isinstance(body, bytes) else None
            st, answer = await http_json(
                w.host,
                w.port,
                key[0],
                row.path(ctx),
                None if raw is not None else body,
                token=token,
                raw_body=raw,
            )
            want = row.want.get(who, row.default)
            assert st == want, f"{key[0]} {row.path(ctx)} by {who}: {st} {answer}, expected {want}"
            if st == 404 and who in ("outsider", "removed", "admin") and "{" not in row.path(ctx):
                # indistinguishable from a conversation/file that does not exist
                nope = re.sub(r"/conversations/\d+", f"/conversations/{NOPE}", row.path(ctx))
                nope = re.sub(r"/files/[A-Za-z0-9_-]+", "/files/AAAAAAAAAAAAAAAAAAAAAA", nope)
                st2, answer2 = await http_json(
                    w.host, w.port, key[0], nope, None if raw else body, token=token, raw_body=raw
                )
                assert (st2, answer2) == (st, answer), (key, who, answer, answer2)
            cells += 1
    print("\nHTTP matrix:", cells, "cells over", len(routes), "routes")


async def test_call_frames_on_a_real_call_by_non_parties(cast) -> None:
    """A call between two members of a direct conversation: every call frame with the real call
    id from someone who is not a party answers `not_found` and leaves the call as it was."""
    w, ids, tokens, clients = cast
    if "call.invite" not in SCHEMAS:
        pytest.skip("this build has no calls")
    owner, member = clients["owner"], clients["member"]
    conv = (await owner.request("conv.create", kind="direct", members=["member"]))["conv"]
    call = (await owner.request("call.invite", conv=conv))["call"]
    for who in ("outsider", "removed", "admin"):
        c = clients[who]
        with pytest.raises(ClientError) as e:
            await c.request("call.invite", conv=conv)
        assert e.value.code == "not_found"
        for ftype, extra in (
            ("call.ringing", {}),
            ("call.accept", {}),
            ("call.reject", {}),
            ("call.hangup", {}),
            ("call.sdp", {"sdp_type": "offer", "sdp": "v=0"}),
            ("call.ice", {"candidate": ""}),
        ):
            with pytest.raises(ClientError) as e:
                await c.request(ftype, call=call, **extra)
            assert e.value.code == "not_found", (who, ftype, e.value.frame)
    # the call is untouched: the callee can still accept it, and it is active
    r = await member.request("call.accept", call=call)
    assert r["state"] == "active"
    await owner.request("call.hangup", call=call)
