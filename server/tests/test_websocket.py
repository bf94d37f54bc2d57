"""Sans-I/O WebSocket framing (RFC 6455)."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berrychat.protocol.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    FrameParser,
    WebSocketError,
    accept_key,
    apply_mask,
    encode_close,
    encode_frame,
)


def test_accept_key_rfc_example():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_masked_text_roundtrip():
    p = FrameParser(server=True)
    [m] = p.feed(encode_frame(OP_TEXT, "héllo 👋".encode(), mask=True))
    assert m.opcode == OP_TEXT and m.data == "héllo 👋"


def test_byte_by_byte_and_many_in_one_chunk():
    frames = b"".join(encode_frame(OP_TEXT, f"m{i}".encode() * 50, mask=True) for i in range(5))
    p = FrameParser(server=True)
    out = []
    for i in range(len(frames)):
        out += p.feed(frames[i : i + 1])
    assert [m.data for m in out] == [f"m{i}" * 50 for i in range(5)]
    assert [m.data for m in FrameParser(server=True).feed(frames)] == [m.data for m in out]


def test_extended_lengths():
    for n in (125, 126, 65535, 65536, 70000):
        p = FrameParser(server=True, max_message=1 << 20)
        [m] = p.feed(encode_frame(OP_BINARY, b"x" * n, mask=True))
        assert len(m.data) == n


def test_fragmentation_with_interleaved_ping():
    p = FrameParser(server=True)
    data = (
        encode_frame(OP_TEXT, b"hel", mask=True, fin=False)
        + encode_frame(OP_PING, b"p", mask=True)
        + encode_frame(OP_CONT, b"lo ", mask=True, fin=False)
        + encode_frame(OP_CONT, "😀".encode(), mask=True)
    )
    out = p.feed(data)
    assert [(m.opcode, m.data) for m in out] == [(OP_PING, b"p"), (OP_TEXT, "hello 😀")]


def test_utf8_split_across_fragments_is_valid():
    b = "😀".encode()
    p = FrameParser(server=True)
    out = p.feed(
        encode_frame(OP_TEXT, b[:2], mask=True, fin=False) + encode_frame(OP_CONT, b[2:], mask=True)
    )
    assert out[0].data == "😀"


@pytest.mark.parametrize(
    "data,code",
    [
        (encode_frame(OP_TEXT, b"\xff\xfe", mask=True), 1007),
        (encode_frame(OP_TEXT, b"hi", mask=False), 1002),  # unmasked client frame
        (bytes([0x80 | 0x40 | OP_TEXT, 0x80]) + b"\0\0\0\0", 1002),  # RSV1
        (bytes([0x80 | 0x3, 0x80]) + b"\0\0\0\0", 1002),  # reserved opcode
        (encode_frame(OP_PING, b"x" * 126, mask=True), 1002),
        (encode_frame(OP_PING, b"x", mask=True, fin=False), 1002),
        (encode_frame(OP_CONT, b"x", mask=True), 1002),
        (
            encode_frame(OP_TEXT, b"a", mask=True, fin=False)
            + encode_frame(OP_TEXT, b"b", mask=True),
            1002,
        ),
        (encode_frame(OP_TEXT, b"x" * 2000, mask=True), 1009),
        (encode_frame(OP_CLOSE, b"\x03", mask=True), 1002),
        (encode_frame(OP_CLOSE, struct.pack("!H", 1005), mask=True), 1002),
        (encode_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff", mask=True), 1007),
    ],
    ids=[
        "invalid-utf8",
        "unmasked",
        "rsv1",
        "reserved-opcode",
        "long-ping",
        "fragmented-ping",
        "orphan-continuation",
        "interleaved-data",
        "too-big",
        "close-1-byte",
        "close-1005",
        "close-bad-reason",
    ],
)
def test_violations(data, code):
    p = FrameParser(server=True, max_message=1024)
    with pytest.raises(WebSocketError) as e:
        p.feed(data)
    assert e.value.code == code


def test_too_big_is_detected_from_header_alone():
    p = FrameParser(server=True, max_message=1024)
    header = bytes([0x80 | OP_TEXT, 0x80 | 127]) + struct.pack("!Q", 10**9)
    with pytest.raises(WebSocketError) as e:
        p.feed(header)
    assert e.value.code == 1009


def test_fragments_summing_over_limit():
    p = FrameParser(server=True, max_message=100)
    p.feed(encode_frame(OP_TEXT, b"a" * 60, mask=True, fin=False))
    with pytest.raises(WebSocketError) as e:
        p.feed(encode_frame(OP_CONT, b"a" * 60, mask=True))
    assert e.value.code == 1009


def test_close_frame_parsed_and_parser_stops():
    p = FrameParser(server=False)
    out = p.feed(encode_close(4000, "slow consumer") + encode_frame(OP_TEXT, b"late"))
    assert len(out) == 1 and out[0].close_code == 4000 and out[0].data == "slow consumer"


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_mask_is_an_involution(data, key):
    assert apply_mask(apply_mask(data, key), key) == data


@given(st.lists(st.text(max_size=200), min_size=1, max_size=5), st.integers(1, 17))
def test_roundtrip_any_text_any_chunking(texts, chunk):
    data = b"".join(encode_frame(OP_TEXT, t.encode(), mask=True) for t in texts)
    p = FrameParser(server=True, max_message=1 << 16)
    out = []
    for i in range(0, len(data), chunk):
        out += p.feed(data[i : i + chunk])
    assert [m.data for m in out] == texts
