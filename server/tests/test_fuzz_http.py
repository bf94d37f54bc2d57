"""Fuzzing HTTP: the sans-I/O request parser (`protocol.http11`) and the HTTP handlers
(`http.api` and every route added to it: uploads, files, bots, admin) of a running server.

Parser: any bytes in any chunking give requests or `HttpError` with a documented status, and
never buffer more than one head plus one body. Handlers: requests generated from the route table
(every method x path template, ids and names near the edges, tokens of a member, an outsider, an
admin, a bot, garbage or none, JSON bodies of known and unknown fields) sent over a real socket
get a well-formed HTTP answer: never 500, and an error body names a documented code; the server
log holds no traceback.

Sizes: a few hundred inputs in `make test`, the full count under `make fuzz` (harness_fuzz.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from harness_fuzz import FULL, SEED, Counter, fuzz_settings, memory_growth, mutations
from hypothesis import given
from hypothesis import strategies as st
from support import PASSWORD, make_settings

from berrychat.client import http_json, login, register
from berrychat.protocol import codes
from berrychat.protocol.http11 import HttpError, RequestParser
from berrychat.server import Server

PARSER_STATUSES = {400, 413, 431, 501, 505}
MAX_HEADER, MAX_BODY = 2048, 4096

# ---- the request parser ------------------------------------------------------------------


def _check_parser(chunks: list[bytes]) -> None:
    p = RequestParser(max_header_bytes=MAX_HEADER, max_body_bytes=MAX_BODY)
    for c in chunks:
        try:
            reqs = p.feed(c)
        except HttpError as e:
            assert e.status in PARSER_STATUSES, e.status
            return
        for r in reqs:
            assert r.method and r.version in ("HTTP/1.1", "HTTP/1.0")
            assert len(r.body) == int(r.headers.get("content-length", "0") or 0)
            assert isinstance(r.path, str) and isinstance(r.query, dict)
            with contextlib.suppress(HttpError):
                r.json()  # a body is JSON or an HttpError(400), nothing else
        # bounded: one head (<= MAX_HEADER) plus one body (<= MAX_BODY) plus what just came
        assert len(p.buffered) <= MAX_HEADER + 4 + MAX_BODY + len(c)


_token = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=12,
)
_hdr_value = st.one_of(
    st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=30),
    st.sampled_from(["close", "keep-alive", "websocket", "Upgrade", "chunked", "100-continue"]),
)


@st.composite
def http_request(draw: st.DrawFn) -> bytes:
    method = draw(st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]), _token))
    target = draw(
        st.one_of(
            st.sampled_from(["/", "/healthz", "/api/v1/login", "/ws?token=x", "/%2e%2e/%00", "*"]),
            st.text(st.characters(min_codepoint=33, max_codepoint=255), max_size=40),
        )
    )
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2", "http/1.1"]))
    body = draw(st.one_of(st.just(b""), st.binary(max_size=64), st.just(b'{"a":[1,{"b":null}]}')))
    headers = draw(st.lists(st.tuples(_token, _hdr_value), max_size=5))
    cl = draw(
        st.sampled_from(
            [str(len(body)), str(len(body)), "", "-1", "1e3", "99999999999999", " 5", "0x10"]
        )
    )
    lines = [f"{method} {target} {version}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if draw(st.integers(0, 5)):
        lines.append(f"Content-Length: {cl}")
    sep = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    head = sep.join(lines).encode("latin-1", "replace") + b"\r\n\r\n"
    return head + body


PARSER = Counter("http request parser (structured)")


@fuzz_settings(full=6_000, ci=120)
@given(
    st.lists(http_request(), min_size=1, max_size=3), st.lists(st.integers(0, 10**5), max_size=4)
)
def _parser(reqs: list[bytes], cuts: list[int]) -> None:
    data = b"".join(reqs)
    pts = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(pts, pts[1:], strict=False)] or [b""]
    PARSER.timed(lambda: _check_parser(chunks))


def test_fuzz_http_parser_structured() -> None:
    _parser()
    PARSER.report()


def test_fuzz_http_parser_mutations_and_memory() -> None:
    count = Counter("http request parser (mutations)")
    rng = random.Random(SEED + 3)
    samples = [
        b"GET /api/v1/conversations/12/messages?after=3&limit=5 HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer abcdefghijklmnop\r\n\r\n",
        b"POST /api/v1/login HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 47\r\n"
        b'\r\n{"username":"ann","password":"p","device_id":"d"}',
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x80",
        b"POST /api/v1/uploads?name=a.png HTTP/1.0\r\nContent-Length: 8\r\nConnection: keep-alive"
        b"\r\n\r\n\x89PNG\r\n\x1a\n",
    ]
    per_batch = 6_000 if FULL else 400

    def batch(_: int) -> None:
        for data in mutations(samples, rng, per_batch):
            cut = rng.randrange(len(data) + 1)
            count.timed(lambda data=data, cut=cut: _check_parser([data[:cut], data[cut:]]))

    grown = memory_growth(batch)
    count.report()
    assert grown < 64 * 1024, f"{grown} bytes kept after {count.n} inputs"


# ---- the handlers of a running server --------------------------------------------------------


class Target:
    """A running server with a member, an outsider, an admin and (when bots exist) a bot."""

    def __init__(self, server: Server, tokens: dict[str, str], conv: int, names: list[str]):
        self.server = server
        self.port = server.port
        self.tokens = tokens
        self.conv = conv
        self.names = names  # user and bot names the fuzzer must not disable or delete


async def _start(tmp_path: Path, db: dict[str, Any] | None = None) -> Target:
    s = make_settings(
        db or {"type": "sqlite", "database": str(tmp_path / "fuzz.db")},
        uploads={"dir": str(tmp_path / "uploads")},
    )
    server = Server(s)
    await server.start()
    h, p = "127.0.0.1", server.port
    for n in ("member", "friend", "outsider"):
        await register(h, p, n, PASSWORD)
    await server.chat.accounts.register("boss", PASSWORD, "", "admin")
    tokens = {n: (await login(h, p, n, PASSWORD))["token"] for n in ("member", "outsider", "boss")}
    st, r = await http_json(
        h,
        p,
        "POST",
        "/api/v1/conversations",
        {"kind": "group", "members": ["friend"]},
        token=tokens["member"],
    )
    assert st == 201, r
    conv = r["conv"]
    await http_json(
        h,
        p,
        "POST",
        f"/api/v1/conversations/{conv}/messages",
        {"cid": "c1", "text": "hi"},
        token=tokens["member"],
    )
    names = ["member", "friend", "outsider", "boss"]
    st, r = await http_json(
        h, p, "POST", "/api/v1/admin/bots", {"username": "robo"}, token=tokens["boss"]
    )
    if st == 201:  # bots exist in this build
        tokens["bot"] = r["token"]
        names.append("robo")
        await http_json(
            h,
            p,
            "POST",
            "/api/v1/admin/users",
            {"username": "spare", "password": PASSWORD},
            token=tokens["boss"],
        )
    return Target(server, tokens, conv, names)


def _route_templates(server: Server) -> list[tuple[str, str]]:
    """(method, path template) of every route the API serves, read from its route table."""
    out = []
    for method, pattern, _, _ in server.api.routes:
        out.append((method, pattern.pattern))
    return out


def _fill(template: str, draw: st.DrawFn, t: Target) -> str:
    """A concrete path for a route regex: named groups get edge values."""
    import re

    def group(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "conv":
            return str(draw(st.sampled_from([t.conv, t.conv + 1, 0, 1, 10**15, 9999999999999999])))
        if name == "action":
            return draw(st.sampled_from(["disable", "enable"]))
        if name == "name":
            return draw(
                st.sampled_from(["nobody", "spare", "..", "%2e%2e", "a" * 64, "ünï", "x y"])
            )
        return draw(
            st.one_of(
                st.text(
                    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_-", min_size=1, max_size=40
                ),
                st.just(".."),
            )
        )

    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", group, template)
    return path.replace("\\", "")


_field_names = [
    "username",
    "password",
    "display_name",
    "device_id",
    "old_password",
    "new_password",
    "kind",
    "members",
    "title",
    "cid",
    "text",
    "reply_to",
    "mentions",
    "role",
    "attachment",
    "webhook_url",
    "events",
    "rotate_secret",
    "x",
]
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "group",
            "direct",
            "admin",
            "user",
            "member",
            PASSWORD,
            "http://127.0.0.1:1/h",
            "abcdefghij",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=2)
    ),
    max_leaves=5,
)


@st.composite
def api_request(draw: st.DrawFn, t: Target, templates: list[tuple[str, str]]) -> bytes:
    method, template = draw(st.sampled_from(templates))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = _fill(template, draw, t)
    destructive = path.endswith(("/logout", "/password")) or "/disable" in path
    who = draw(st.sampled_from([*sorted(t.tokens), "garbage", "none"]))
    if destructive and who in t.tokens:
        who = "garbage"  # keep the fuzzer's own sessions alive so that it keeps reaching deep
    if "/admin/bots/" in path and "robo" in path:
        path = path.replace("robo", "nobody")
    query = draw(
        st.sampled_from(
            [
                "",
                "?after=0",
                "?before=2&limit=1",
                "?limit=99999",
                "?after=-1",
                "?name=../../etc/passwd",
                "?after=1&after=2",
                "?limit=abc",
            ]
        )
    )
    body_kind = draw(st.integers(0, 9))
    if body_kind < 6:
        body = json.dumps(
            draw(st.dictionaries(st.sampled_from(_field_names), _values, max_size=5)),
            ensure_ascii=draw(st.booleans()),
        ).encode()
    elif body_kind < 8:
        body = draw(st.binary(max_size=80))
    else:
        body = b""
    ctype = draw(
        st.sampled_from(["application/json", "image/png", "application/pdf", "text/html", ""])
    )
    lines = [f"{method} {path}{query} HTTP/1.1", "Host: fuzz", "Connection: close"]
    if who == "garbage":
        lines.append(
            "Authorization: "
            + draw(st.sampled_from(["Bearer x", "Bearer " + "A" * 600, "Basic Zm9v", "Bearer"]))
        )
    elif who != "none":
        lines.append(f"Authorization: Bearer {t.tokens[who]}")
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _send(port: int, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body if b"chunked" not in head.lower() else b""


def _check_answer(status: int, body: bytes) -> None:
    assert status != 500, body[:300]
    assert status != 503, body[:300]  # the database is up: "unavailable" would be a lie
    assert 100 <= status < 600
    if status >= 400 and body.startswith(b"{"):
        err = json.loads(body)["error"]
        assert err["code"] in codes.ERRORS or err["code"] == "bad_request", err


@pytest.mark.parametrize("database", ["sqlite", "mariadb"])
def test_fuzz_http_handlers(
    database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """On SQLite and on MariaDB (whose column sizes and strict mode are where a value that
    passed validation could still fail: a 503 "retry later" for input that never works)."""
    db = None
    if database == "mariadb":
        m = request.getfixturevalue("mariadb")
        db = {
            "type": "mysql",
            "host": "127.0.0.1",
            "port": m.port,
            "user": "root",
            "password": "",
            "database": m.new_database(),
            "pool_size": 4,
        }
    api = Counter(f"http handlers (every route, live server, {database})")
    caplog.set_level(logging.ERROR, logger="berrychat")
    loop = asyncio.new_event_loop()
    try:
        t = loop.run_until_complete(_start(tmp_path, db))
        templates = _route_templates(t.server)

        @fuzz_settings(full=4_000, ci=150)
        @given(api_request(t, templates))
        def run(raw: bytes) -> None:
            status, body = api.timed(lambda: loop.run_until_complete(_send(t.port, raw)))
            _check_answer(status, body)

        run()
        api.report()
        tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert not tracebacks, [r.getMessage() for r in tracebacks[:5]]
        # the fuzzer's member still works: the server is healthy after it all
        st, r = loop.run_until_complete(
            http_json(
                "127.0.0.1",
                t.port,
                "GET",
                f"/api/v1/conversations/{t.conv}/messages",
                token=t.tokens["member"],
            )
        )
        assert st == 200 and r["messages"][0]["seq"] == 1
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(t.server.stop(drain_seconds=0.2))
        loop.close()


async def test_bot_post_without_text_is_refused_not_a_crash(tmp_path: Path) -> None:
    """Regression (found by the handler fuzzer): the bot API passed `msg.send` validation with an
    `attachment` and no `text`, then read `text` and answered 500 internal."""
    t = await _start(tmp_path)
    try:
        if "bot" not in t.tokens:
            pytest.skip("this build has no bots")
        h, p = "127.0.0.1", t.port
        st, r = await http_json(
            h,
            p,
            "POST",
            "/api/v1/conversations",
            {"kind": "group", "members": ["robo"]},
            token=t.tokens["member"],
        )
        path = f"/api/v1/bot/conversations/{r['conv']}/messages"
        st, r = await http_json(
            h, p, "POST", path, {"attachment": "abcdefghij"}, token=t.tokens["bot"]
        )
        assert st == 400 and r["error"]["code"] == "bad_field", (st, r)
        st, r = await http_json(h, p, "POST", path, {"text": "hi"}, token=t.tokens["bot"])
        assert st == 200, r
    finally:
        await t.server.stop(drain_seconds=0.2)
