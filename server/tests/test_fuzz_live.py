"""Live fuzzing over real sockets: mutated handshakes, WebSocket frames and JSON frames sent to a
running server close (or answer) only the connection that sent them, with a documented close
code or HTTP status, while another pair of users keeps chatting through the whole run.

test_bad_input.py has one hand-written case per rule; this file throws generated ones (a fixed
seed, so every run sends the same bytes) and checks the server as a whole stays healthy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

from harness_fuzz import FULL, SEED, Counter, mutations
from support import PASSWORD, make_settings, start_world

from berrychat.client import http_json, login
from berrychat.protocol import codes
from berrychat.protocol.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    FrameParser,
    encode_frame,
)

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
DOCUMENTED_CLOSES = set(codes.CLOSE_CODES)
# codes a client may put in its own close frame, which the server echoes (RFC 6455 §5.5.1)
PEER_CLOSES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011} | set(range(3000, 5000))
HTTP_REFUSALS = {b"400", b"404", b"405", b"413", b"429", b"431", b"501", b"503", b"505"}


def _frames(token: str, conv: int) -> list[bytes]:
    """Valid client traffic to mutate: hello, requests, fragments, control frames."""
    objs = [
        {"type": "hello", "id": "h", "v": 1, "token": token},
        {"type": "msg.send", "id": "s", "conv": conv, "cid": "fz", "text": "fuzz 😀"},
        {"type": "history", "id": "y", "conv": conv, "after": 0, "limit": 5},
        {"type": "sync", "id": "c", "cursors": {str(conv): {"seq": 1, "read": 0}}},
        {"type": "receipt", "id": "r", "conv": conv, "kind": "read", "seq": 1},
        {"type": "conv.create", "id": "k", "kind": "group", "members": ["bob"], "title": "t"},
    ]
    out = [encode_frame(OP_TEXT, json.dumps(o).encode(), mask=True) for o in objs]
    out.append(
        encode_frame(OP_TEXT, b'{"type":"pi', mask=True, fin=False)
        + encode_frame(OP_PING, b"p", mask=True)
        + encode_frame(OP_CONT, b'ng","id":"p"}', mask=True)
    )
    out.append(encode_frame(OP_BINARY, b"\x00", mask=True))
    out.append(encode_frame(OP_CLOSE, b"\x03\xe8bye", mask=True))
    return out


async def _attack(port: int, payload: bytes, handshake: bool) -> tuple[str, object]:
    """Send one input; return how the server ended it: ("http", status), ("close", code),
    ("open", None) when it still serves the connection after 0.5 s, or ("eof", None)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((HANDSHAKE if handshake else b"") + payload)
        head = b""
        if handshake:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if b" 101 " not in head.split(b"\r\n")[0] + b" ":
                return "http", head.split(b" ")[1]
        else:
            try:
                data = await asyncio.wait_for(reader.read(), 2)
            except TimeoutError:
                return "open", None  # an incomplete request: the server waits for the rest
            return ("http", data.split(b" ")[1]) if data else ("eof", None)
        parser = FrameParser(server=False, max_message=1 << 24)
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.5
        while loop.time() < end:
            try:
                data = await asyncio.wait_for(reader.read(65536), end - loop.time())
            except TimeoutError:
                return "open", None
            if not data:
                return "eof", None
            for m in parser.feed(data):
                if m.opcode == OP_CLOSE:
                    return "close", m.close_code
                if m.opcode == OP_TEXT:
                    f = json.loads(m.data)  # every frame is valid JSON with a type (answers,
                    assert isinstance(f.get("type"), str), f  # or pushes after a good hello)
                    if f["type"] == "error":
                        assert f["code"] in codes.ERRORS and f["code"] != "internal", f
        return "open", None
    except (ConnectionError, asyncio.IncompleteReadError):
        return "eof", None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _timed(attack: Any) -> tuple[str, object, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    kind, detail = await attack
    return kind, detail, loop.time() - t0


async def test_malformed_traffic_closes_only_that_connection(sqlite_db):
    w = await start_world(make_settings(sqlite_db))
    count = Counter("live sockets (handshakes, frames)")
    try:
        _, _, ca = await w.user("ann")
        _, tok_b, cb = await w.user("bob")
        conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
        chatting = True
        acked: list[int] = []

        async def chat() -> None:  # the bystanders: must never notice anything
            i = 0
            while chatting and i < 100_000:
                i += 1
                acked.append((await ca.send_text(conv, f"still here {i}", timeout=10))["seq"])
                await asyncio.sleep(0.01)

        chatter = asyncio.create_task(chat())
        rng = random.Random(SEED)
        frames = _frames(tok_b, conv)
        n = 2000 if FULL else 120
        ws_inputs = list(mutations(frames, rng, n))
        http_inputs = list(
            mutations(
                [
                    HANDSHAKE,
                    b"POST /api/v1/login HTTP/1.1\r\nContent-Length: 40\r\n\r\n"
                    b'{"username":"ann","password":"x"*3}    ',
                    b"GET /api/v1/conversations/1/messages?after=0 HTTP/1.1\r\n"
                    b"Authorization: Bearer " + tok_b.encode() + b"\r\n\r\n",
                ],
                rng,
                n // 4,
            )
        )
        outcomes: dict[str, int] = {}
        for batch_start in range(0, len(ws_inputs), 40):
            batch = [
                _attack(w.port, p, True) for p in ws_inputs[batch_start : batch_start + 40]
            ] + [
                _attack(w.port, p, False)
                for p in http_inputs[batch_start // 4 : (batch_start + 40) // 4]
            ]
            for kind, detail, took in await asyncio.gather(*(_timed(a) for a in batch)):
                count.n += 1
                count.slowest = max(count.slowest, took)
                outcomes[kind] = outcomes.get(kind, 0) + 1
                if kind == "close":  # a documented code, or the echo of the client's own
                    assert detail in DOCUMENTED_CLOSES or detail in PEER_CLOSES, detail
                if kind == "http":
                    assert detail in HTTP_REFUSALS or detail in (b"200", b"201"), detail
            assert not chatter.done(), chatter  # the bystanders' loop never failed
        chatting = False
        await asyncio.wait_for(chatter, 15)
        count.report()
        print(f"outcomes: {outcomes}, bystander messages acknowledged: {len(acked)}")
        assert outcomes.get("close", 0) > 0 and outcomes.get("http", 0) > 0
        # the bystanders' stream is complete and gap-free; the server is healthy
        h = await cb.history(conv, after=0, limit=500)
        seqs = [m["seq"] for m in h["messages"]]
        assert set(acked) <= set(seqs) or h["more"]
        assert (await cb.request("ping"))["type"] == "ack"
        assert (await http_json(w.host, w.port, "GET", "/readyz"))[0] == 200
        # only connections that misbehaved were closed: ann and bob are still connected
        assert not ca.closed.done() and not cb.closed.done()
        # the close metric counts only closes the server started: documented codes only
        m = w.server.gateway.metrics
        assert m is not None
        assert {int(k) for k in m.closes.values} <= DOCUMENTED_CLOSES, m.closes.values
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.5)


async def test_unpaired_surrogate_fails_only_its_own_frame(sqlite_db):
    """Regression: a `text` holding an unpaired UTF-16 surrogate (`"\\udc00"`) made the database
    driver fail the whole group-commit batch, so other users' messages committed with it were
    refused as `unavailable`; one in an `id` made the echo crash the connection (1006, no close
    code). Now such a frame is refused alone with `bad_json`."""
    w = await start_world(make_settings(sqlite_db, limits={"group_commit_ms": 50}))
    try:
        _, _, ca = await w.user("ann")
        _, _, cb = await w.user("bob")
        conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
        for raw in (
            '{"type":"msg.send","id":"x","conv":' + str(conv) + ',"cid":"s1","text":"a\\udc00b"}',
            '{"type":"ping","id":"\\ud800"}',
            '{"type":"conv.create","kind":"group","members":["ann"],"title":"\\udfff"}',
        ):
            cb.send_frame(OP_TEXT, raw.encode())
            # bob's good message is committed in the same 50 ms batch window
            ok = await cb.send_text(conv, "fine")
            assert ok["dup"] is False
            err = await cb.next_event("error")
            assert err["code"] == "bad_json"
        assert not cb.closed.done()
        st, body = await http_json(
            w.host,
            w.port,
            "POST",
            "/api/v1/register",
            raw_body=b'{"username":"zed","password":"%s","display_name":"\\ud800"}'
            % PASSWORD.encode(),
        )
        assert st == 400, body  # not 503 "retry later": it will never work
        tok = (await login(w.host, w.port, "ann", PASSWORD, "d9"))["token"]
        st, body = await http_json(
            w.host,
            w.port,
            "POST",
            f"/api/v1/conversations/{conv}/messages",
            raw_body=b'{"cid":"h1","text":"\\ud83d"}',
            token=tok,
        )
        assert st == 400, body
        texts = [m["text"] for m in (await ca.history(conv))["messages"] if m["kind"] == "text"]
        assert texts == ["fine"] * 3
    finally:
        await w.close()
        await w.server.stop(drain_seconds=0.5)


def test_a_paired_surrogate_escape_is_still_accepted():
    from berrychat.protocol.frames import parse_client_frame

    _, _, f = parse_client_frame('{"type":"msg.send","conv":1,"cid":"a","text":"\\ud83d\\ude00"}')
    assert f["text"] == "😀"
    try:
        parse_client_frame('{"type":"msg.send","conv":1,"cid":"a","text":"\\ude00\\ud83d"}')
    except Exception as e:
        assert getattr(e, "code", None) == "bad_json"
    else:
        raise AssertionError("reversed pair accepted")
