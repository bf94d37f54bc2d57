"""Images with Pillow: dimensions, thumbnails, metadata stripping. Blocking: run in a thread.

Decompression bombs are refused before decoding: the header's pixel count is checked against
`max_pixels` (Pillow's own process-wide MAX_IMAGE_PIXELS guard stays in place as well)."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/webp": "WEBP"}
ORIENTATION = 0x0112
# metadata Pillow keeps in `info` that can hold a location, a name or a serial number
_META_KEYS = ("exif", "xmp", "XML:com.adobe.xmp", "comment", "photoshop", "iptc")


class BadImage(Exception):
    """Not decodable, not the declared format, or too many pixels."""


@dataclass(slots=True)
class ImageResult:
    width: int
    height: int
    thumbnail: bytes  # JPEG (or PNG when the image has transparency)
    thumb_mime: str
    thumb_width: int
    thumb_height: int
    cleaned: bytes | None  # the original without metadata, when it had any (and stripping is on)


def _open(path: str, mime: str, max_pixels: int) -> Image.Image:
    try:
        im = Image.open(path, formats=[FORMATS[mime]])
    except Image.DecompressionBombError as e:
        raise BadImage(f"more pixels than the limit: {e}")
    except (UnidentifiedImageError, OSError, KeyError) as e:
        raise BadImage(f"not a decodable {mime}: {e}")
    w, h = im.size
    if w <= 0 or h <= 0 or w * h > max_pixels:
        im.close()
        raise BadImage(f"{w}x{h} pixels is more than the limit of {max_pixels}")
    return im


def has_metadata(im: Image.Image) -> bool:
    """EXIF, XMP, comments or PNG text chunks present."""
    return bool(any(k in im.info for k in _META_KEYS) or im.getexif() or getattr(im, "text", None))


def process(path: str, mime: str, *, max_pixels: int, thumb_px: int, strip: bool) -> ImageResult:
    """Decode the image once: displayed size (EXIF orientation applied), a thumbnail that fits
    in thumb_px x thumb_px, and (strip=True) a copy without EXIF/XMP/comments."""
    with _open(path, mime, max_pixels) as im:
        animated = getattr(im, "is_animated", False)
        try:
            meta = has_metadata(im)
            oriented = ImageOps.exif_transpose(im)  # a copy, orientation applied (or im itself)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise BadImage(f"cannot decode the image: {e}")
        if oriented is None:  # pragma: no cover - exif_transpose returns an image here
            oriented = im
        width, height = oriented.size
        cleaned = None
        if strip and meta and not animated:
            cleaned = _reencode(oriented, im, mime)
        thumb = oriented.copy()
        thumb.thumbnail((thumb_px, thumb_px))
        alpha = thumb.mode in ("RGBA", "LA", "PA") or (
            thumb.mode == "P" and "transparency" in thumb.info
        )
        buf = io.BytesIO()
        if alpha:
            thumb.save(buf, "PNG", optimize=True)
            tmime = "image/png"
        else:
            thumb.convert("RGB").save(buf, "JPEG", quality=80)
            tmime = "image/jpeg"
        return ImageResult(
            width, height, buf.getvalue(), tmime, thumb.size[0], thumb.size[1], cleaned
        )


def _reencode(oriented: Image.Image, src: Image.Image, mime: str) -> bytes:
    """The pixels again, with no metadata but the colour profile."""
    icc = src.info.get("icc_profile")
    out = oriented.copy()
    out.info = {}  # nothing of the source's info is written back (EXIF, XMP, comments, text)
    buf = io.BytesIO()
    fmt = FORMATS[mime]
    kw: dict = {}
    if icc:
        kw["icc_profile"] = icc
    if fmt == "JPEG":
        if out.mode not in ("RGB", "L", "CMYK"):
            out = out.convert("RGB")
        kw.update(quality=92, optimize=True)
    elif fmt == "WEBP":
        kw.update(quality=92)
    out.save(buf, fmt, **kw)
    return buf.getvalue()
