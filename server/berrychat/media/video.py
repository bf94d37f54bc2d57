"""Video poster frames with ffmpeg (Debian package `ffmpeg`), when it is installed.

ffmpeg is optional: without it video messages simply have no poster (`poster` absent). It runs
as a subprocess with a time limit and reads only the stored file (no client input reaches its
command line but the server-chosen path)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil

log = logging.getLogger(__name__)

POSTER_TIMEOUT = 20.0
MAX_POSTER_BYTES = 4 << 20


def find_ffmpeg(configured: str) -> str | None:
    """The ffmpeg binary to use, or None (then videos get no poster)."""
    return shutil.which(configured or "ffmpeg")


async def poster_jpeg(ffmpeg: str, path: str, box: int) -> bytes | None:
    """A JPEG of an early frame, scaled to fit box x box; None when ffmpeg fails."""
    scale = f"scale='min({box},iw)':'min({box},ih)':force_original_aspect_ratio=decrease"
    args = [
        ffmpeg, "-nostdin", "-v", "error", "-ss", "0", "-i", path,
        "-frames:v", "1", "-vf", scale, "-f", "image2", "-c:v", "mjpeg", "pipe:1",
    ]  # fmt: skip
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        log.warning("ffmpeg did not start: %s", e)
        return None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), POSTER_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        log.warning("ffmpeg poster timed out after %s s", POSTER_TIMEOUT)
        return None
    if proc.returncode != 0 or not out.startswith(b"\xff\xd8") or len(out) > MAX_POSTER_BYTES:
        log.info("no poster frame: %s", err.decode(errors="replace")[-300:].strip())
        return None
    return out
