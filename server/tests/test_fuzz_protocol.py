"""Fuzzing the sans-I/O protocol layer: the WebSocket frame parser (`protocol.websocket`) and the
JSON frame parser/validator (`protocol.frames`).

Properties: the only exception is the documented one (`WebSocketError` with a close code of
protocol.md §8, `FrameError` with an error code of §7); what is accepted is well-formed (sizes,
types, ranges of `SCHEMAS`); a valid stream parses to exactly what was sent whatever the chunking;
the parser never buffers more than one frame header plus `max_message`; no input takes long; a
batch of inputs leaves no memory behind (tracemalloc).

Sizes: `make test` runs a few hundred inputs per target (derandomized, ~5 s); `make fuzz` runs
the full count with a fixed seed (see harness_fuzz.py)."""

from __future__ import annotations

import json
import random
import struct

import pytest
from harness_fuzz import FULL, SEED, Counter, fuzz_settings, memory_growth, mutations
from hypothesis import given
from hypothesis import strategies as st

from berrychat.protocol import codes
from berrychat.protocol.frames import SCHEMAS, F, FrameError, encode, error, parse_client_frame
from berrychat.protocol.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    WebSocketError,
    apply_mask,
    encode_frame,
)

MAX = 1024  # a small max_message so that the size limits are reached often
WS_CLOSE_CODES = {1002, 1007, 1009}  # what the parser may ask the connection to close with

# ---- WebSocket framing ---------------------------------------------------------------------


def _check_ws(p: FrameParser, chunks: list[bytes]) -> list:
    """Feed chunks; every outcome must be documented and bounded."""
    out = []
    for c in chunks:
        try:
            msgs = p.feed(c)
        except WebSocketError as e:
            assert e.code in WS_CLOSE_CODES, e.code
            return out
        for m in msgs:
            if m.opcode == OP_TEXT:
                assert isinstance(m.data, str) and len(m.data.encode("utf-8")) <= MAX
            elif m.opcode == OP_BINARY:
                assert isinstance(m.data, bytes) and len(m.data) <= MAX
            elif m.opcode in (OP_PING, OP_PONG):
                assert isinstance(m.data, bytes) and len(m.data) <= 125
            else:
                assert m.opcode == OP_CLOSE and isinstance(m.close_code, int)
                assert m.close_code in codes.CLOSE_CODES or 1000 <= m.close_code <= 4999
            out.append(m)
        # bounded buffering: at most one frame (header + mask + payload) is ever held
        assert len(p._buf) <= MAX + 14, len(p._buf)
        assert p._frag_len <= MAX
    return out


@st.composite
def raw_frame(draw: st.DrawFn) -> bytes:
    """One frame, valid or not: any header bits, any length encoding, masked or not."""
    fin = draw(st.booleans())
    rsv = draw(st.sampled_from([0, 0, 0, 0x10, 0x20, 0x40]))
    opcode = draw(st.sampled_from([0, 1, 1, 1, 2, 8, 9, 10, 3, 0xB, 0xF]))
    masked = draw(st.booleans().map(lambda b: b or draw(st.booleans())))  # mostly masked
    payload = draw(
        st.one_of(
            st.binary(max_size=40),
            st.text(max_size=40).map(lambda t: t.encode("utf-8")),
            st.builds(
                lambda code, r: struct.pack("!H", code) + r,
                st.integers(0, 65535),
                st.binary(max_size=10),
            ),
            st.binary(min_size=120, max_size=MAX + 40),
        )
    )
    n = len(payload)
    enc = draw(st.sampled_from(["min", "16", "64", "lie"]))
    b0 = (0x80 if fin else 0) | rsv | opcode
    mbit = 0x80 if masked else 0
    if enc == "min" and n < 126:
        head = bytes([b0, mbit | n])
    elif enc in ("min", "16") and n < 65536:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    elif enc == "lie":  # a declared length unrelated to the payload (up to 2**64-1)
        declared = draw(st.integers(0, 2**64 - 1))
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", declared)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if masked:
        key = draw(st.binary(min_size=4, max_size=4))
        return head + key + apply_mask(payload, key)
    return head + payload


def _chunk(data: bytes, cuts: list[int]) -> list[bytes]:
    pts = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(pts, pts[1:], strict=False)] or [b""]


WS_RAW = Counter("websocket frames (structured)")


@fuzz_settings(full=5_000, ci=150)
@given(st.lists(raw_frame(), min_size=1, max_size=6), st.lists(st.integers(0, 10**6), max_size=5))
def _ws_structured(frames: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frames)
    WS_RAW.timed(lambda: _check_ws(FrameParser(server=True, max_message=MAX), _chunk(data, cuts)))


def test_fuzz_websocket_structured_frames() -> None:
    _ws_structured()
    WS_RAW.report()


WS_BYTES = Counter("websocket raw bytes")


@fuzz_settings(full=5_000, ci=200)
@given(st.binary(max_size=300), st.integers(1, 64))
def _ws_bytes(data: bytes, step: int) -> None:
    chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    WS_BYTES.timed(lambda: _check_ws(FrameParser(server=True, max_message=MAX), chunks))


def test_fuzz_websocket_raw_bytes() -> None:
    _ws_bytes()
    WS_BYTES.report()


@st.composite
def valid_message(draw: st.DrawFn) -> tuple[int, bytes, list[bytes]]:
    """A valid message as frames: text or binary, maybe fragmented with control frames in
    between; returns (opcode, payload, encoded frames)."""
    opcode = draw(st.sampled_from([OP_TEXT, OP_TEXT, OP_BINARY]))
    if opcode == OP_TEXT:
        payload = draw(st.text(max_size=200)).encode("utf-8")[:MAX]
        while payload:  # cut at a character boundary after truncation
            try:
                payload.decode("utf-8")
                break
            except UnicodeDecodeError:
                payload = payload[:-1]
    else:
        payload = draw(st.binary(max_size=MAX))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    frames = []
    for i, part in enumerate(parts):
        op = opcode if i == 0 else OP_CONT
        frames.append(encode_frame(op, part, mask=True, fin=i == len(parts) - 1))
        if i < len(parts) - 1 and draw(st.booleans()):
            frames.append(encode_frame(OP_PING, draw(st.binary(max_size=20)), mask=True))
    return opcode, payload, frames


WS_VALID = Counter("websocket valid streams (differential)")


@fuzz_settings(full=3_000, ci=100)
@given(st.lists(valid_message(), min_size=1, max_size=4), st.lists(st.integers(0, 10**6)))
def _ws_valid(msgs: list[tuple[int, bytes, list[bytes]]], cuts: list[int]) -> None:
    data = b"".join(f for _, _, frames in msgs for f in frames)

    def run() -> None:
        out = _check_ws(FrameParser(server=True, max_message=MAX), _chunk(data, cuts))
        got = [(m.opcode, m.data) for m in out if m.opcode in (OP_TEXT, OP_BINARY)]
        want = [(op, p.decode("utf-8") if op == OP_TEXT else p) for op, p, _ in msgs]
        assert got == want

    WS_VALID.timed(run)


def test_fuzz_websocket_valid_streams_parse_exactly() -> None:
    _ws_valid()
    WS_VALID.report()


def _ws_samples() -> list[bytes]:
    return [
        encode_frame(OP_TEXT, b'{"type":"ping","id":"p"}', mask=True),
        encode_frame(OP_TEXT, "h\u00e9llo 😀".encode(), mask=True, fin=False)
        + encode_frame(OP_PING, b"x", mask=True)
        + encode_frame(OP_CONT, b"...", mask=True),
        encode_frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye", mask=True),
        encode_frame(OP_BINARY, bytes(range(200)), mask=True),
        encode_frame(OP_TEXT, b"x" * 300, mask=True),
    ]


def test_fuzz_websocket_mutations_and_memory() -> None:
    """A byte-mutation fuzzer over valid frames, in batches under tracemalloc: the parser keeps
    nothing once a parser object is dropped, and its own buffer stays bounded."""
    count = Counter("websocket mutations")
    rng = random.Random(SEED)
    per_batch = 5_000 if FULL else 400

    def batch(_: int) -> None:
        for data in mutations(_ws_samples(), rng, per_batch):
            p = FrameParser(server=True, max_message=MAX)
            count.timed(lambda p=p, data=data: _check_ws(p, [data[:7], data[7:]]))

    grown = memory_growth(batch)
    count.report()
    assert grown < 64 * 1024, f"{grown} bytes kept after {count.n} inputs"


# ---- JSON frames -------------------------------------------------------------------------

_ints = st.one_of(
    st.integers(-3, 3),
    st.integers(-(2**63), 2**63),
    st.sampled_from([0, 1, 2**53 - 1, 2**53, 2**64, -1]),
)
_any_json = st.recursive(
    st.none()
    | st.booleans()
    | _ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _value_for(spec: F) -> st.SearchStrategy:
    """Mostly values near the spec's edges, sometimes anything."""
    k = spec.kind
    edge_len = st.sampled_from(sorted({0, 1, max(spec.lo - 1, 0), spec.lo, min(spec.hi, 70)}))
    if k == "int":
        hi = min(spec.hi, 2**60)
        good = st.sampled_from(sorted({spec.lo - 1, spec.lo, spec.lo + 1, hi, hi + 1}))
        return st.one_of(good, st.integers(spec.lo - 2, min(hi, spec.lo + 100)), _any_json)
    if k == "bool":
        return st.one_of(st.booleans(), st.sampled_from([0, 1, "true", None]))
    if k in ("str", "text"):
        return st.one_of(
            edge_len.flatmap(lambda n: st.text(min_size=n, max_size=n)),
            st.text(max_size=80),
            st.sampled_from([" ", "\n\t", "\u200b", "😀" * 3, "a" * 4001]),
            _any_json,
        )
    if k == "enum":
        return st.one_of(st.sampled_from(spec.choices), st.text(max_size=8), _any_json)
    if k in ("ids", "refs"):
        item = st.one_of(_ints, st.text(max_size=70), _any_json)
        return st.one_of(
            st.lists(item, max_size=5), st.lists(st.integers(1, 10), max_size=3), _any_json
        )
    if k == "cursors":
        key = st.one_of(st.integers(-1, 10**17).map(str), st.text(max_size=5))
        val = st.one_of(
            _ints,
            st.fixed_dictionaries({"seq": _ints}, optional={"read": _ints | st.none()}),
            _any_json,
        )
        return st.one_of(st.dictionaries(key, val, max_size=4), _any_json)
    return _any_json


@st.composite
def client_frame(draw: st.DrawFn) -> tuple[str, dict]:
    ftype = draw(st.sampled_from([*sorted(SCHEMAS), "nope", "", "HELLO"]))
    schema = SCHEMAS.get(ftype, {})
    obj: dict = {"type": ftype}
    for name, spec in schema.items():
        if draw(st.integers(0, 9)) < (9 if spec.required else 5):
            obj[name] = draw(_value_for(spec))
    if draw(st.booleans()):
        obj["id"] = draw(st.one_of(st.text(max_size=70), _ints, _any_json))
    if draw(st.integers(0, 4)) == 0:
        obj[draw(st.text(max_size=6))] = draw(_any_json)  # unknown fields are ignored
    if draw(st.integers(0, 9)) == 0:
        obj["type"] = draw(_any_json)
    return ftype, obj


def _conforms(ftype: str, out: dict) -> None:
    for name, spec in SCHEMAS[ftype].items():
        if name not in out:
            continue
        v = out[name]
        if spec.kind == "int":
            assert type(v) is int and spec.lo <= v <= spec.hi, (name, v)
        elif spec.kind == "bool":
            assert type(v) is bool
        elif spec.kind == "str":
            assert type(v) is str and spec.lo <= len(v) <= spec.hi, (name, v)
        elif spec.kind == "text":
            assert type(v) is str and 1 <= len(v) <= 100 and v.strip()
        elif spec.kind == "enum":
            assert v in spec.choices
        elif spec.kind in ("ids", "refs"):
            assert isinstance(v, list) and spec.lo <= len(v) <= spec.hi
            for x in v:
                assert (type(x) is int and x >= 1) or (spec.kind == "refs" and type(x) is str)
        elif spec.kind == "cursors":
            for c, (seq, read) in v.items():
                assert c >= 1 and seq >= 0 and (read is None or read >= 0)
        # everything accepted can be stored and echoed: it encodes as UTF-8
        json.dumps(v, ensure_ascii=False).encode("utf-8")


FRAMES = Counter("json frames (schema-guided)")


@fuzz_settings(full=8_000, ci=250)
@given(client_frame())
def _frames(frame: tuple[str, dict]) -> None:
    ftype, obj = frame
    raw = json.dumps(obj, ensure_ascii=False)

    def run() -> None:
        try:
            t, fid, out = parse_client_frame(raw, max_text=100)
        except FrameError as e:
            assert e.code in ("bad_json", "bad_frame", "bad_field", "too_large"), e.code
            # the error frame answering it can always be encoded
            encode(error(e.frame_id, e.frame_type, e.code, e.message, False))
            return
        assert t in SCHEMAS and t == obj["type"]
        for name, spec in SCHEMAS[t].items():
            if spec.required:
                assert name in out, name
        _conforms(t, out)
        encode({"type": "ack", "re": t, "id": fid})  # the echo of the id always encodes

    FRAMES.timed(run)


def test_fuzz_json_frames() -> None:
    _frames()
    FRAMES.report()


TEXTS = Counter("json frames (raw text)")


@fuzz_settings(full=4_000, ci=200)
@given(
    st.one_of(
        st.text(max_size=80),
        st.text(alphabet='{}[]":,\\u0123456789abcdefnrtl- ', max_size=60),
        st.builds(
            lambda a, b: '{"type":"' + a + '","id":"' + b + '"}',
            st.text(max_size=8),
            st.text(max_size=8),
        ),
    )
)
def _texts(text: str) -> None:
    def run() -> None:
        try:
            parse_client_frame(text)
        except FrameError as e:
            assert e.code in codes.ERRORS and e.code != "internal"

    TEXTS.timed(run)


def test_fuzz_json_raw_text() -> None:
    _texts()
    TEXTS.report()


def test_fuzz_json_mutations_and_memory() -> None:
    count = Counter("json frames (mutations)")
    rng = random.Random(SEED + 1)
    samples = [
        json.dumps(
            {
                "type": t,
                "id": "x",
                "conv": 1,
                "cid": "c",
                "text": "hi \\ud83d\\ude00",
                "seq": 2,
                "users": [1, "bob"],
                "cursors": {"1": {"seq": 1, "read": 0}},
                "kind": "read",
                "v": 1,
                "token": "t" * 20,
            }
        ).encode()
        for t in sorted(SCHEMAS)
    ]
    per_batch = 5_000 if FULL else 400

    def batch(_: int) -> None:
        for data in mutations(samples, rng, per_batch):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue  # the WebSocket layer closes with 1007 before JSON is looked at

            def run(text: str = text) -> None:
                try:
                    parse_client_frame(text, max_text=100)
                except FrameError as e:
                    assert e.code in codes.ERRORS

            count.timed(run)

    grown = memory_growth(batch)
    count.report()
    assert grown < 64 * 1024, f"{grown} bytes kept after {count.n} inputs"


@pytest.mark.parametrize("ftype", sorted(SCHEMAS))
def test_every_frame_type_has_an_accepted_example(ftype: str) -> None:
    """The fuzzer's generator can reach acceptance for every frame type (else it would only
    ever test rejections): a minimal valid frame built from the schema parses."""
    obj: dict = {"type": ftype}
    for name, spec in SCHEMAS[ftype].items():
        if not spec.required:
            continue
        obj[name] = {
            "int": max(spec.lo, 1) if spec.lo <= 1 <= spec.hi else spec.lo,
            "str": "x" * max(spec.lo, 1),
            "text": "hello",
            "enum": spec.choices[0] if spec.choices else "",
            "bool": True,
            "ids": [1] * max(spec.lo, 1),
            "refs": [1] * max(spec.lo, 1),
            "cursors": {"1": 0},
        }[spec.kind]
    try:
        parse_client_frame(json.dumps(obj))
    except FrameError as e:  # a cross-field rule (e.g. text or attachment) may need more
        assert e.code == "bad_field", (ftype, e.message)
