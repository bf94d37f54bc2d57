"""Sans-I/O HTTP/1.1 request parsing."""

import pytest

from berrychat.protocol.http11 import HttpError, RequestParser, build_response


def test_get_and_pipelined_post():
    p = RequestParser()
    data = (
        b"GET /healthz?x=1&y=%20z HTTP/1.1\r\nHost: a\r\n\r\n"
        b'POST /api/v1/login HTTP/1.1\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{"a":1}'
    )
    r1, r2 = p.feed(data)
    assert r1.method == "GET" and r1.path == "/healthz" and r1.query == {"x": "1", "y": " z"}
    assert r1.keep_alive
    assert r2.body == b'{"a":1}' and not r2.keep_alive and r2.json() == {"a": 1}


def test_body_in_pieces():
    p = RequestParser()
    assert p.feed(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab") == []
    [r] = p.feed(b"cd")
    assert r.body == b"abcd"


def test_http10_defaults_to_close():
    [r] = RequestParser().feed(b"GET / HTTP/1.0\r\n\r\n")
    assert not r.keep_alive


@pytest.mark.parametrize(
    "raw,status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 20000, 431),
    ],
)
def test_malformed(raw, status):
    with pytest.raises(HttpError) as e:
        RequestParser().feed(raw)
    assert e.value.status == status


def test_websocket_upgrade_leaves_rest_buffered():
    p = RequestParser()
    [r] = p.feed(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x80abcd")
    assert r.header("upgrade") == "websocket"
    assert p.buffered == b"\x81\x80abcd"


def test_build_response():
    raw = build_response(200, b"{}", keep_alive=False)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 2\r\n" in raw and b"Connection: close" in raw and raw.endswith(b"{}")


def test_deeply_nested_body_is_a_400():
    body = b"[" * 100000 + b"]" * 100000
    [r] = RequestParser(max_body_bytes=1 << 20).feed(
        b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    with pytest.raises(HttpError) as e:
        r.json()
    assert e.value.status == 400
