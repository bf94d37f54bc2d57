"""Durations of audio and video files. Blocking: run in a thread.

Ogg/Opus, MP3, MP4/M4A and WAV through mutagen (pure Python). WebM/Matroska (what browsers'
MediaRecorder writes) through a small EBML walk: the Segment's Duration when present, else the
timestamp of the last block (Chromium writes recordings without a Duration)."""

from __future__ import annotations

import struct
from typing import BinaryIO

import mutagen

_SEGMENT, _CLUSTER, _INFO, _BLOCKGROUP = 0x18538067, 0x1F43B675, 0x1549A966, 0xA0
_TIMECODE_SCALE, _DURATION, _TIMECODE = 0x2AD7B1, 0x4489, 0xE7
_SIMPLEBLOCK, _BLOCK = 0xA3, 0xA1
_CONTAINERS = {_SEGMENT, _CLUSTER, _INFO, _BLOCKGROUP}
_MAX_ELEMENTS = 2_000_000  # bound the walk over a hostile file


def duration_seconds(path: str, family: str) -> float | None:
    """The playing time in seconds, or None when it cannot be determined."""
    try:
        if family == "webm":
            with open(path, "rb") as f:
                return _ebml_duration(f)
        m = mutagen.File(path)
        if m is None or m.info is None:
            return None
        length = float(getattr(m.info, "length", 0) or 0)
        return length if length > 0 else None
    except (mutagen.MutagenError, OSError, ValueError, struct.error, EOFError):
        return None


def _vint(f: BinaryIO, keep_marker: bool) -> tuple[int, int] | None:
    """(value, length) of an EBML variable-size integer; value -1 for 'unknown size'."""
    b = f.read(1)
    if not b:
        return None
    first = b[0]
    length = 1
    mask = 0x80
    while length <= 8 and not first & mask:
        mask >>= 1
        length += 1
    if length > 8:
        raise ValueError("bad EBML integer")
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = first if keep_marker else first & (mask - 1)
    for x in rest:
        value = (value << 8) | x
    if not keep_marker and value == (1 << (7 * length)) - 1:
        value = -1
    return value, length


def _ebml_duration(f: BinaryIO) -> float | None:
    scale = 1_000_000  # ns per timecode unit (Matroska default)
    declared: float | None = None
    cluster_tc = 0
    last_tc = 0
    for _ in range(_MAX_ELEMENTS):
        idv = _vint(f, True)
        if idv is None:
            break
        sz = _vint(f, False)
        if sz is None:
            break
        eid, size = idv[0], sz[0]
        if eid in _CONTAINERS:
            continue  # walk into it (sizes may be unknown in live recordings)
        if size < 0:
            break
        if eid == _TIMECODE_SCALE:
            scale = int.from_bytes(f.read(size), "big") or scale
        elif eid == _DURATION:
            raw = f.read(size)
            declared = struct.unpack(">f" if size == 4 else ">d", raw)[0]
        elif eid == _TIMECODE:
            cluster_tc = int.from_bytes(f.read(size), "big")
            last_tc = max(last_tc, cluster_tc)
        elif eid in (_SIMPLEBLOCK, _BLOCK):
            start = f.tell()
            if _vint(f, False) is None:  # track number
                break
            rel = struct.unpack(">h", f.read(2))[0]
            last_tc = max(last_tc, cluster_tc + rel)
            f.seek(start + size)
        else:
            f.seek(size, 1)
    best = declared if declared and declared > 0 else float(last_tc)
    seconds = best * scale / 1e9
    return seconds if seconds > 0 else None
