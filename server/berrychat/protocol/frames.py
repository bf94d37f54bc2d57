"""BerryChat JSON frames: the catalogue of client frames, their validation and encoding.

A client frame is a JSON object `{"type": "<name>", "id": <optional echo id>, ...fields}`.
`parse_client_frame` returns `(type, id, fields)` with fields checked against `SCHEMAS`, or
raises `FrameError` with an error code from `codes.ERRORS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import strict_json
from .websocket import OP_TEXT, encode_frame

MAX_ID = 2**53 - 1  # JSON-safe integer range


class FrameError(Exception):
    def __init__(
        self, code: str, message: str, frame_id: Any = None, frame_type: str | None = None
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id
        self.frame_type = frame_type


@dataclass(frozen=True, slots=True)
class F:
    """A field spec. kind: int, str, text, bool, enum, ids, refs (ids or user names), cursors."""

    kind: str
    required: bool = True
    lo: int = 0
    hi: int = MAX_ID
    choices: tuple[str, ...] = ()


CONV = F("int", lo=1)
SEQ = F("int", lo=1)
CID = F("str", lo=1, hi=64)
TEXT = F("text", lo=1)
CALL = F("str", lo=3, hi=64)

SCHEMAS: dict[str, dict[str, F]] = {
    "hello": {"v": F("int", lo=1, hi=1000), "token": F("str", lo=1, hi=512)},
    "ping": {},
    "conv.create": {
        "kind": F("enum", choices=("direct", "group")),
        "members": F("refs", required=False, hi=1000),
        "title": F("str", required=False, hi=200),
    },
    "conv.list": {},
    "conv.get": {"conv": CONV},
    "conv.rename": {"conv": CONV, "title": F("str", lo=1, hi=200)},
    "conv.add": {"conv": CONV, "users": F("refs", lo=1, hi=1000)},
    "conv.remove": {"conv": CONV, "user": F("int", lo=1)},
    "conv.leave": {"conv": CONV},
    "conv.role": {
        "conv": CONV,
        "user": F("int", lo=1),
        "role": F("enum", choices=("admin", "member")),
    },
    "msg.send": {
        "conv": CONV,
        "cid": CID,
        "text": F("text", required=False, lo=1),  # required unless an attachment is sent
        "attachment": F("str", required=False, lo=8, hi=32),
        "reply_to": F("int", required=False, lo=1),
        "mentions": F("ids", required=False, hi=100),
    },
    "msg.edit": {"conv": CONV, "cid": CID, "seq": SEQ, "text": TEXT},
    "msg.recall": {"conv": CONV, "cid": CID, "seq": SEQ},
    "msg.react": {
        "conv": CONV,
        "cid": CID,
        "seq": SEQ,
        "emoji": F("str", lo=1, hi=32),
        "remove": F("bool", required=False),
    },
    "history": {
        "conv": CONV,
        "before": F("int", required=False, lo=1),
        "after": F("int", required=False, lo=0),
        "limit": F("int", required=False, lo=1, hi=500),
    },
    "sync": {"cursors": F("cursors", hi=100000)},
    "receipt": {
        "conv": CONV,
        "kind": F("enum", choices=("delivered", "read")),
        "seq": F("int", lo=0),
    },
    "typing": {"conv": CONV, "on": F("bool", required=False)},
    "presence": {"status": F("enum", choices=("online", "away"))},
    "presence.get": {"users": F("ids", lo=1, hi=1000)},
    # a voice (or video) message was played (protocol.md, "Attachments")
    "media.played": {"conv": CONV, "seq": SEQ},
    # calls (protocol.md, "Calls")
    "call.invite": {"conv": CONV, "media": F("enum", required=False, choices=("audio", "video"))},
    "call.ringing": {"call": CALL},
    "call.accept": {"call": CALL},
    "call.reject": {"call": CALL},
    "call.hangup": {"call": CALL},
    "call.sdp": {
        "call": CALL,
        "sdp_type": F("enum", choices=("offer", "answer")),
        "sdp": F("str", lo=1, hi=60000),
    },
    "call.ice": {
        "call": CALL,
        "candidate": F("str", lo=0, hi=2000),  # "" = end of candidates
        "sdp_mid": F("str", required=False, lo=0, hi=64),
        "sdp_mline_index": F("int", required=False, lo=0, hi=1000),
    },
    "call.ice_servers": {},
}

# Frames that need no authentication.
PRE_AUTH = frozenset({"hello", "ping"})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(name: str, spec: F, v: Any, max_text: int) -> Any:
    k = spec.kind
    if k == "int":
        if not _is_int(v):
            raise FrameError("bad_field", f"{name}: expected integer")
        if not spec.lo <= v <= spec.hi:
            raise FrameError("bad_field", f"{name}: out of range {spec.lo}..{spec.hi}")
        return v
    if k == "bool":
        if not isinstance(v, bool):
            raise FrameError("bad_field", f"{name}: expected true or false")
        return v
    if k in ("str", "text"):
        if not isinstance(v, str):
            raise FrameError("bad_field", f"{name}: expected string")
        hi = max_text if k == "text" else spec.hi
        if len(v) > hi:
            raise FrameError(
                "too_large" if k == "text" else "bad_field", f"{name}: longer than {hi}"
            )
        if len(v) < spec.lo or (k == "text" and not v.strip()):
            raise FrameError("bad_field", f"{name}: too short")
        return v
    if k == "enum":
        if v not in spec.choices:
            raise FrameError("bad_field", f"{name}: expected one of {', '.join(spec.choices)}")
        return v
    if k in ("ids", "refs"):
        if not isinstance(v, list):
            raise FrameError("bad_field", f"{name}: expected list")
        if not spec.lo <= len(v) <= spec.hi:
            raise FrameError("bad_field", f"{name}: expected {spec.lo}..{spec.hi} items")
        for item in v:
            if _is_int(item) and 1 <= item <= MAX_ID:
                continue
            if k == "refs" and isinstance(item, str) and 1 <= len(item) <= 64:
                continue
            what = "user ids or user names" if k == "refs" else "positive integers"
            raise FrameError("bad_field", f"{name}: expected a list of {what}")
        return v
    if k == "cursors":
        if not isinstance(v, dict):
            raise FrameError("bad_field", f"{name}: expected object")
        if len(v) > spec.hi:
            raise FrameError("bad_field", f"{name}: too many entries")
        out: dict[int, tuple[int, int | None]] = {}
        for key, val in v.items():
            if not (isinstance(key, str) and key.isdigit() and len(key) < 17 and int(key) > 0):
                raise FrameError("bad_field", f"{name}: keys must be conversation ids")
            if _is_int(val) and val >= 0:
                out[int(key)] = (val, None)
            elif (
                isinstance(val, dict)
                and _is_int(val.get("seq"))
                and val["seq"] >= 0
                and (val.get("read") is None or (_is_int(val["read"]) and val["read"] >= 0))
            ):
                out[int(key)] = (val["seq"], val.get("read"))
            else:
                raise FrameError("bad_field", f"{name}.{key}: expected seq or {{seq, read}}")
        return out
    raise AssertionError(k)  # pragma: no cover


def validate(ftype: str, obj: dict[str, Any], *, max_text: int) -> dict[str, Any]:
    schema = SCHEMAS.get(ftype)
    if schema is None:
        raise FrameError("bad_frame", f"unknown frame type {ftype!r}")
    out: dict[str, Any] = {}
    for name, spec in schema.items():
        if name in obj and obj[name] is not None:
            out[name] = _check(name, spec, obj[name], max_text)
        elif spec.required:
            raise FrameError("bad_field", f"{name}: required")
    if ftype == "msg.send" and "text" not in out and "attachment" not in out:
        raise FrameError("bad_field", "text: required (or an attachment)")
    return out


def parse_client_frame(text: str, *, max_text: int = 4000) -> tuple[str, Any, dict[str, Any]]:
    try:
        obj = strict_json.loads(text)
    except (ValueError, RecursionError):
        raise FrameError("bad_json", "frame is not valid JSON")
    if not isinstance(obj, dict):
        raise FrameError("bad_json", "frame must be a JSON object")
    fid = obj.get("id")
    if fid is not None and not (
        (isinstance(fid, str) and len(fid) <= 64) or (_is_int(fid) and abs(fid) <= MAX_ID)
    ):
        raise FrameError("bad_field", "id: expected string (<= 64 chars) or integer")
    ftype = obj.get("type")
    if not isinstance(ftype, str):
        raise FrameError("bad_frame", "type: required string", fid)
    try:
        return ftype, fid, validate(ftype, obj, max_text=max_text)
    except FrameError as e:
        e.frame_id = fid
        e.frame_type = ftype
        raise


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> str:
    return _ENCODER.encode(obj)


def encode(obj: Any) -> bytes:
    """A server frame as a complete, unmasked WebSocket text frame (encode once, send many)."""
    return encode_frame(OP_TEXT, dumps(obj).encode("utf-8"))


def ack(frame_id: Any, re: str, **fields: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "ack", "re": re}
    if frame_id is not None:
        d["id"] = frame_id
    d.update(fields)
    return d


def error(
    frame_id: Any, re: str | None, code: str, message: str, retryable: bool
) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "error"}
    if frame_id is not None:
        d["id"] = frame_id
    if re is not None:
        d["re"] = re
    d.update(code=code, message=message, retryable=retryable)
    return d
