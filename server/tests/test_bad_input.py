"""Bad input: an error frame or a close with the documented code, for that connection only;
the process and every other connection carry on; nothing is stored."""

import asyncio
import json

import pytest
from support import make_settings, start_world

from berrychat.client import Client, ClientError, http_json
from berrychat.protocol import codes
from berrychat.protocol.websocket import OP_BINARY, OP_TEXT, encode_frame


async def setup(world):
    _, _, ca = await world.user("ann")
    _, _, cb = await world.user("bob")
    conv = (await ca.request("conv.create", kind="direct", members=["bob"]))["conv"]
    await ca.send_text(conv, "baseline")
    return ca, cb, conv


async def assert_healthy(world, cb, conv, expected_last=2):
    h = await cb.history(conv)
    assert h["messages"][-1]["seq"] == expected_last  # nothing stored
    assert (await cb.request("ping"))["type"] == "ack"
    st, _ = await http_json(world.host, world.port, "GET", "/healthz")
    assert st == 200


async def next_error(c):
    return await c.next_event("error")


@pytest.mark.parametrize(
    "raw,code",
    [
        ("{not json", "bad_json"),
        ("[1,2,3]", "bad_json"),
        ('"just a string"', "bad_json"),
        ('{"id":"x1"}', "bad_frame"),
        ('{"type":"no.such.frame","id":"x2"}', "bad_frame"),
        ('{"type":42}', "bad_frame"),
        ('{"type":"msg.send","id":"x3","conv":"1","cid":"a","text":"hi"}', "bad_field"),
        ('{"type":"msg.send","id":"x4","conv":1,"cid":"a","text":5}', "bad_field"),
        (
            '{"type":"msg.send","id":"x5","conv":1,"cid":"' + "c" * 65 + '","text":"hi"}',
            "bad_field",
        ),
        ('{"type":"msg.send","id":"x6","conv":1,"text":"no cid"}', "bad_field"),
        ('{"type":"msg.send","id":"x7","conv":true,"cid":"a","text":"hi"}', "bad_field"),
        ('{"type":"msg.send","id":"x8","conv":-1,"cid":"a","text":"hi"}', "bad_field"),
        (
            '{"type":"msg.send","id":"x9","conv":1,"cid":"a","text":"hi","mentions":"all"}',
            "bad_field",
        ),
        ('{"type":"history","id":"y1","conv":1,"limit":100000}', "bad_field"),
        ('{"type":"receipt","id":"y2","conv":1,"kind":"seen","seq":1}', "bad_field"),
        ('{"type":"sync","id":"y3","cursors":{"abc":1}}', "bad_field"),
        ('{"type":"sync","id":"y4","cursors":[1]}', "bad_field"),
        ('{"type":"typing","id":"y5","conv":1,"on":"yes"}', "bad_field"),
        ('{"type":"msg.send","id":{"x":1},"conv":1,"cid":"a","text":"hi"}', "bad_field"),
        # unpaired UTF-16 surrogates cannot be stored or echoed (strict_json)
        ('{"type":"ping","id":"\\ud800"}', "bad_json"),
        ('{"type":"msg.send","id":"z1","conv":1,"cid":"a","text":"a\\udc00b"}', "bad_json"),
    ],
)
async def test_invalid_frames_get_error_frames(sworld, raw, code):
    """(SQLite only: invalid frames never reach the store; test_authorization and the domain
    tests cover both databases.)"""
    world = sworld
    ca, cb, conv = await setup(world)
    ca.send_frame(OP_TEXT, raw.encode())
    err = await next_error(ca)
    assert err["code"] == code and err["retryable"] is False
    try:
        fid = json.loads(raw).get("id")
    except (ValueError, AttributeError):
        fid = None
    if isinstance(fid, str) and code != "bad_json":  # a frame that did not parse has no id
        assert err["id"] == fid
    # the connection itself still works, and nothing was stored
    assert (await ca.request("ping"))["type"] == "ack"
    await assert_healthy(world, cb, conv)


async def test_oversize_frame_closes_with_1009(sworld):
    ca, cb, conv = await setup(sworld)
    limit = sworld.server.settings.limits.max_frame_bytes
    payload = json.dumps({"type": "msg.send", "conv": conv, "cid": "big", "text": "x" * limit})
    ca.send_frame(OP_TEXT, payload.encode())
    code, _ = await ca.wait_closed()
    assert code == codes.CLOSE_TOO_BIG
    await assert_healthy(sworld, cb, conv)


async def test_invalid_utf8_closes_with_1007(sworld):
    ca, cb, conv = await setup(sworld)
    ca.send_frame(OP_TEXT, b'{"type":"msg.send","conv":1,"cid":"u","text":"\xff\xfe"}')
    code, _ = await ca.wait_closed()
    assert code == codes.CLOSE_INVALID_PAYLOAD
    await assert_healthy(sworld, cb, conv)


async def test_binary_frame_closes_with_1003(sworld):
    ca, cb, conv = await setup(sworld)
    ca.send_frame(OP_BINARY, b"\x00\x01")
    code, _ = await ca.wait_closed()
    assert code == 1003
    await assert_healthy(sworld, cb, conv)


async def test_unmasked_frame_closes_with_1002(sworld):
    ca, cb, conv = await setup(sworld)
    ca.writer.write(encode_frame(OP_TEXT, b'{"type":"ping"}', mask=False))
    code, _ = await ca.wait_closed()
    assert code == codes.CLOSE_PROTOCOL_ERROR
    await assert_healthy(sworld, cb, conv)


async def test_too_many_bad_frames_closes_with_4400(sworld):
    ca, cb, conv = await setup(sworld)
    n = sworld.server.settings.limits.bad_frames_before_close
    for _ in range(n):
        ca.send_frame(OP_TEXT, b"nope")
    code, _ = await ca.wait_closed()
    assert code == codes.CLOSE_BAD_FRAMES
    await assert_healthy(sworld, cb, conv)


async def test_frames_before_hello(sworld):
    _, token, _ = await sworld.user("cid", connect=False)
    c = await Client.connect(sworld.host, sworld.port)
    with pytest.raises(ClientError) as e:
        await c.request("conv.list")
    assert e.value.code == "not_authenticated"
    assert (await c.request("ping"))["type"] == "ack"  # allowed before hello
    await c.hello(token)
    assert "conversations" in await c.request("conv.list")
    with pytest.raises(ClientError) as e:
        await c.hello(token)
    assert e.value.code == "conflict"


async def test_hello_timeout_closes_with_4401(sqlite_db):
    w = await start_world(make_settings(sqlite_db, limits={"hello_timeout_seconds": 0.2}))
    try:
        c = await Client.connect(w.host, w.port)
        code, _ = await c.wait_closed(timeout=5)
        assert code == codes.CLOSE_AUTH
    finally:
        await w.server.stop(drain_seconds=0.2)


async def test_bad_http_and_handshakes(sworld):
    h, p = sworld.host, sworld.port
    for raw in (
        b"GARBAGE\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET /nope HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"POST /api/v1/login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(h, p)
        writer.write(raw)
        resp = await asyncio.wait_for(reader.read(), 5)
        assert resp.split(b" ")[1] in (b"400", b"404", b"501"), resp[:60]
        writer.close()
    st, body = await http_json(h, p, "GET", "/api/v1/nothing-here")
    assert st == 404
    st, body = await http_json(h, p, "DELETE", "/healthz")
    assert st == 405
    st, _ = await http_json(h, p, "GET", "/healthz")
    assert st == 200


async def test_http_wrong_types(sworld):
    _, token, _ = await sworld.user("dee", connect=False)
    h, p = sworld.host, sworld.port
    for body in ({"kind": "circle"}, {"kind": "group", "members": "everyone"}, [1, 2]):
        st, r = await http_json(h, p, "POST", "/api/v1/conversations", body, token=token)
        assert st == 400 and r["error"]["code"] in ("bad_field", "bad_request")
    st, r = await http_json(h, p, "GET", "/api/v1/conversations/1/messages?limit=abc", token=token)
    assert st == 400
