"""Sans-I/O WebSocket framing (RFC 6455) without extensions.

`FrameParser` turns received bytes into complete messages (reassembling fragments, validating
masking, control frames, sizes and UTF-8); `encode_frame` builds frames. Both the server
(expects masked frames, sends unmasked) and the client (the reverse) use them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_DATA_OPS = (OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)

# Close codes from RFC 6455 section 7.4.1 that a peer may send.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011

_VALID_PEER_CLOSE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WebSocketError(Exception):
    """A violation of RFC 6455 by the peer; `code` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class Message:
    """A complete message: text (str), binary (bytes), or a control frame."""

    opcode: int
    data: bytes | str
    close_code: int | None = None


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def valid_client_key(key: str | None) -> bool:
    if not key:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def new_client_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR `data` with the 4-byte masking key (fast path via big integers)."""
    n = len(data)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def encode_frame(
    opcode: int, payload: bytes = b"", *, mask: bool = False, fin: bool = True
) -> bytes:
    """One complete frame. Servers send unmasked frames, clients masked ones."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = os.urandom(4)
        return head + key + apply_mask(payload, key)
    return head + payload


def encode_text(text: str, *, mask: bool = False) -> bytes:
    return encode_frame(OP_TEXT, text.encode("utf-8"), mask=mask)


def encode_close(code: int = CLOSE_NORMAL, reason: str = "", *, mask: bool = False) -> bytes:
    payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
    return encode_frame(OP_CLOSE, payload, mask=mask)


class FrameParser:
    """Incremental frame parser.

    `server=True` requires every received frame to be masked (client-to-server), `False` requires
    unmasked frames. `max_message` bounds a single frame and a reassembled message in bytes.
    """

    __slots__ = ("_buf", "_server", "_max", "_frag_op", "_frag", "_frag_len", "closed")

    def __init__(self, *, server: bool, max_message: int = 65536) -> None:
        self._buf = bytearray()
        self._server = server
        self._max = max_message
        self._frag_op: int | None = None
        self._frag: list[bytes] = []
        self._frag_len = 0
        self.closed = False

    def feed(self, data: bytes) -> list[Message]:
        """Consume bytes; return the complete messages they finish. Raises WebSocketError."""
        if self.closed:
            return []
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        end = len(buf)
        while True:
            if end - pos < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            fin = b0 & 0x80
            if b0 & 0x70:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            opcode = b0 & 0x0F
            masked = b1 & 0x80
            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                hlen = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                if length >> 63:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "bad length")
                hlen = 10
            if bool(masked) != self._server:
                raise WebSocketError(
                    CLOSE_PROTOCOL_ERROR,
                    "client frames must be masked"
                    if self._server
                    else "server frames are unmasked",
                )
            if opcode in _CONTROL_OPS:
                if not fin:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
                if length > 125:
                    raise WebSocketError(CLOSE_PROTOCOL_ERROR, "control frame too long")
            elif opcode in _DATA_OPS or opcode == OP_CONT:
                if length > self._max or self._frag_len + length > self._max:
                    raise WebSocketError(CLOSE_TOO_BIG, "message too big")
            else:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "unknown opcode")
            if masked:
                hlen += 4
            if end - pos < hlen + length:
                break
            payload = bytes(buf[pos + hlen : pos + hlen + length])
            if masked:
                payload = apply_mask(payload, bytes(buf[pos + hlen - 4 : pos + hlen]))
            pos += hlen + length
            msg = self._frame(fin, opcode, payload)
            if msg is not None:
                out.append(msg)
                if msg.opcode == OP_CLOSE:
                    self.closed = True
                    break
        del buf[:pos]
        return out

    def _frame(self, fin: int, opcode: int, payload: bytes) -> Message | None:
        if opcode == OP_CLOSE:
            return _close_message(payload)
        if opcode in (OP_PING, OP_PONG):
            return Message(opcode, payload)
        if opcode == OP_CONT:
            if self._frag_op is None:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "continuation without start")
            self._frag.append(payload)
            self._frag_len += len(payload)
            if not fin:
                return None
            opcode = self._frag_op
            payload = b"".join(self._frag)
            self._frag_op = None
            self._frag = []
            self._frag_len = 0
        else:
            if self._frag_op is not None:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if not fin:
                self._frag_op = opcode
                self._frag = [payload]
                self._frag_len = len(payload)
                return None
        if opcode == OP_TEXT:
            try:
                return Message(OP_TEXT, payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise WebSocketError(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in text message")
        return Message(OP_BINARY, payload)


def _close_message(payload: bytes) -> Message:
    if not payload:
        return Message(OP_CLOSE, "", CLOSE_NO_STATUS)
    if len(payload) == 1:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, "close payload of one byte")
    code = struct.unpack_from("!H", payload)[0]
    if code not in _VALID_PEER_CLOSE and not 3000 <= code <= 4999:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, "invalid close code")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError(CLOSE_INVALID_PAYLOAD, "invalid UTF-8 in close reason")
    return Message(OP_CLOSE, reason, code)
