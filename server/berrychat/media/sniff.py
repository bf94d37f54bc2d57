"""Content sniffing: what the first bytes of an upload say it is, and whether that agrees with
the type the client declared (`Content-Type`). Pure functions, no I/O."""

from __future__ import annotations

SNIFF_BYTES = 64  # enough for every signature below

# Declared types accepted per attachment kind, with aliases browsers and tools send.
ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
    "audio/opus": "audio/ogg",
    "application/ogg": "audio/ogg",
    "application/x-zip-compressed": "application/zip",
}
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
AUDIO_TYPES = frozenset({"audio/ogg", "audio/webm", "audio/mp4", "audio/mpeg", "audio/wav"})
VIDEO_TYPES = frozenset({"video/mp4", "video/webm", "video/quicktime", "video/ogg"})
# Ordinary files whose signature we know: declared as one of these, the bytes must match.
FILE_TYPES = frozenset({"application/pdf", "application/zip", "application/gzip"})

# sniffed family -> the declared types it may be uploaded as
COMPATIBLE: dict[str, frozenset[str]] = {
    "image/jpeg": frozenset({"image/jpeg"}),
    "image/png": frozenset({"image/png"}),
    "image/gif": frozenset({"image/gif"}),
    "image/webp": frozenset({"image/webp"}),
    "ogg": frozenset({"audio/ogg", "video/ogg"}),
    "webm": frozenset({"audio/webm", "video/webm"}),
    "isobmff": frozenset({"audio/mp4", "video/mp4", "video/quicktime"}),
    "audio/mpeg": frozenset({"audio/mpeg"}),
    "audio/wav": frozenset({"audio/wav"}),
    "application/pdf": frozenset({"application/pdf"}),
    "application/zip": frozenset({"application/zip"}),
    "application/gzip": frozenset({"application/gzip"}),
}


def normalize(declared: str | None) -> str:
    """`image/JPG; charset=x` -> `image/jpeg`; missing -> application/octet-stream."""
    t = (declared or "").split(";", 1)[0].strip().lower()
    if not t or "/" not in t or len(t) > 100:
        return "application/octet-stream"
    return ALIASES.get(t, t)


def sniff(head: bytes) -> str | None:
    """The family the leading bytes belong to (a key of COMPATIBLE), or None if unknown."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"  # EBML: WebM (and Matroska)
    if head[4:8] == b"ftyp":
        return "isobmff"  # MP4, M4A, QuickTime
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "application/zip"
    if head.startswith(b"\x1f\x8b"):
        return "application/gzip"
    return None


def kind_of(declared: str) -> str:
    """The attachment kind a (normalized) declared type asks for."""
    if declared in IMAGE_TYPES:
        return "image"
    if declared in AUDIO_TYPES:
        return "voice"
    if declared in VIDEO_TYPES:
        return "video"
    return "file"


def check(declared: str, head: bytes) -> str | None:
    """None when the bytes agree with the declared type, else the reason (type_mismatch).

    Media and known document types must match their signature. Other declared types are
    stored as plain files; they are refused only when the bytes are recognisably an image,
    audio or video of a different type (a spoofed type)."""
    fam = sniff(head)
    if declared in IMAGE_TYPES | AUDIO_TYPES | VIDEO_TYPES | FILE_TYPES:
        if fam is None or declared not in COMPATIBLE[fam]:
            what = fam or "unrecognised bytes"
            return f"declared {declared} but the content is {what}"
        return None
    if declared.startswith(("image/", "audio/", "video/")):
        return f"{declared} is not an accepted media type"
    return None
