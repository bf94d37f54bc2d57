"""Media processing through the real server: EXIF/GPS stripping and orientation (images made
with Pillow here), the pixel cap, voice durations (WAV via mutagen, a WebM as MediaRecorder
writes it), "played" receipts to the right devices, and video with or without ffmpeg."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import wave
from pathlib import Path

import pytest
from PIL import Image
from support import PASSWORD, pair, start_upload_world
from test_attachments import http, png_bytes, upload

from berrychat.client import ClientError, login
from berrychat.media import audio

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def jpeg_with_gps(size: tuple[int, int] = (400, 200), orientation: int = 6) -> bytes:
    """A JPEG whose EXIF holds a GPS position, a camera serial and an orientation."""
    im = Image.new("RGB", size, "white")
    im.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))  # left half red: shows the rotation
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0xA431] = "SERIAL-1234"  # BodySerialNumber
    exif[0x010F] = "BerryCam"  # Make
    exif.get_ifd(GPS_IFD).update(
        {1: "N", 2: (59.0, 20.0, 1.5), 3: "E", 4: (18.0, 3.0, 52.0)}  # Stockholm
    )
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


# ---- images ----------------------------------------------------------------------------------
async def test_gps_exif_is_stripped_and_orientation_applied(sqlite_db, tmp_path):
    src = jpeg_with_gps()
    assert Image.open(io.BytesIO(src)).getexif().get_ifd(GPS_IFD)  # the test input has GPS
    w = await start_upload_world(sqlite_db, tmp_path / "up")
    try:
        ta, tb, ca, cb, conv = await pair(w)
        st, r = await upload(w, ta, src, "image/jpeg", "IMG_0001.JPG")
        assert st == 201, r
        att = r["attachment"]
        # orientation 6 = rotate 90° clockwise for display: 400x200 is shown as 200x400
        assert (att["width"], att["height"]) == (200, 400)
        assert att["size"] != len(src)
        await ca.request("msg.send", conv=conv, cid="p", attachment=att["id"])
        st, _, got = await http(w, "GET", f"/api/v1/files/{att['id']}", token=tb)
        assert st == 200
        im = Image.open(io.BytesIO(got))
        exif = im.getexif()
        assert not exif.get_ifd(GPS_IFD) and GPS_IFD not in exif
        assert 0xA431 not in exif and 0x010F not in exif and ORIENTATION not in exif
        assert b"SERIAL-1234" not in got and b"BerryCam" not in got
        assert im.size == (200, 400)
        # red was the left half; after rotating clockwise it is the top half
        assert im.convert("RGB").getpixel((100, 50))[0] > 200
        assert im.convert("RGB").getpixel((100, 350))[1] > 200  # bottom stays white
        st, _, thumb = await http(w, "GET", f"/api/v1/files/{att['thumb']}", token=tb)
        t = Image.open(io.BytesIO(thumb))
        assert t.size == (160, 320) and not t.getexif().get_ifd(GPS_IFD)
    finally:
        await w.stop()


async def test_metadata_is_kept_when_stripping_is_off(sqlite_db, tmp_path):
    src = jpeg_with_gps(orientation=1)
    w = await start_upload_world(sqlite_db, tmp_path / "up", strip_metadata=False)
    try:
        _, ta, _ = await w.user("ann")
        st, r = await upload(w, ta, src, "image/jpeg")
        att = r["attachment"]
        assert st == 201 and att["size"] == len(src)
        st, _, got = await http(w, "GET", f"/api/v1/files/{att['id']}", token=ta)
        assert got == src and Image.open(io.BytesIO(got)).getexif().get_ifd(GPS_IFD)
    finally:
        await w.stop()


async def test_pixel_cap_and_undecodable_images_are_refused(sqlite_db, tmp_path):
    w = await start_upload_world(sqlite_db, tmp_path / "up", max_image_pixels=10_000)
    try:
        _, ta, _ = await w.user("ann")
        st, r = await upload(w, ta, png_bytes((200, 200)), "image/png")  # 40,000 pixels
        assert st == 422 and r["error"]["code"] == "bad_media" and "10000" in r["error"]["message"]
        broken = png_bytes((50, 50))[:60] + b"\0" * 100  # a PNG signature, then garbage
        st, r = await upload(w, ta, broken, "image/png")
        assert st == 422 and r["error"]["code"] == "bad_media"
        st, r = await upload(w, ta, png_bytes((50, 50)), "image/png")
        assert st == 201 and r["attachment"]["width"] == 50
        root = w.server.media.files.root
        assert [p for p in (root / "tmp").iterdir()] == []
    finally:
        await w.stop()


# ---- voice -------------------------------------------------------------------------------------
def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(rate)
        wf.writeframes(b"\0\0" * int(seconds * rate))
    return buf.getvalue()


def _ebml(eid: bytes, payload: bytes | None) -> bytes:
    if payload is None:  # unknown size, as live recorders write Segment and Cluster
        return eid + b"\x01\xff\xff\xff\xff\xff\xff\xff"
    n = len(payload)
    return eid + bytes([0x40 | (n >> 8), n & 0xFF]) + payload


def webm_like_mediarecorder(cluster_ms: list[int], block_ms: int = 20) -> bytes:
    """EBML header, a Segment of unknown size with Info (timecode scale, no Duration) and
    Clusters of unknown size with SimpleBlocks every block_ms — Chromium's recording shape."""
    out = _ebml(b"\x1a\x45\xdf\xa3", _ebml(b"\x42\x82", b"webm"))
    out += _ebml(b"\x18\x53\x80\x67", None)
    out += _ebml(b"\x15\x49\xa9\x66", _ebml(b"\x2a\xd7\xb1", (1_000_000).to_bytes(3, "big")))
    for start in cluster_ms:
        out += _ebml(b"\x1f\x43\xb6\x75", None)
        out += _ebml(b"\xe7", start.to_bytes(4, "big"))
        for rel in range(0, 1000, block_ms):
            out += _ebml(b"\xa3", b"\x81" + struct.pack(">h", rel) + b"\x80" + b"\xaa" * 30)
    return out


def test_webm_duration_without_a_duration_element(tmp_path):
    p = tmp_path / "rec.webm"
    p.write_bytes(webm_like_mediarecorder([0, 1000, 2000]))
    d = audio.duration_seconds(str(p), "webm")
    assert d is not None and abs(d - 2.98) < 0.01
    p.write_bytes(b"\x1a\x45\xdf\xa3" + b"\xff" * 50)  # hostile garbage: no crash, no duration
    assert audio.duration_seconds(str(p), "webm") is None


async def test_voice_message_duration_and_played_receipt(backend, tmp_path):
    w = await start_upload_world(backend, tmp_path / "up")
    try:
        ta, tb, ca, cb, conv = await pair(w)
        ca2 = await w.connect((await login(w.host, w.port, "ann", PASSWORD, "d2"))["token"])
        cb2 = await w.connect((await login(w.host, w.port, "bob", PASSWORD, "d2"))["token"])
        st, r = await upload(w, ta, wav_bytes(1.5), "audio/wav", "voice.wav")
        att = r["attachment"]
        assert st == 201 and att["kind"] == "voice" and abs(att["duration"] - 1.5) < 0.01
        st, r = await upload(w, ta, webm_like_mediarecorder([0, 1000]), "audio/webm")
        assert st == 201 and abs(r["attachment"]["duration"] - 1.98) < 0.01
        ack = await ca.request("msg.send", conv=conv, cid="v", attachment=att["id"])
        ev = await cb.next_event("msg", pred=lambda e: e["kind"] == "voice")
        assert ev["attachment"]["duration"] == att["duration"]
        # bob plays it on his first device
        pa = await cb.request("media.played", conv=conv, seq=ack["seq"])
        assert pa["seq"] == ack["seq"]
        bob_id = next(
            m["user"]
            for m in (await cb.request("conv.get", conv=conv))["conversation"]["members"]
            if m["username"] == "bob"
        )
        for c in (ca, ca2, cb2):  # the sender's devices and the listener's other device
            p = await c.next_event("media.played", timeout=5)
            assert (p["conv"], p["seq"], p["user"]) == (conv, ack["seq"], bob_id)
        # only voice/video messages, only members
        text = await ca.send_text(conv, "hello")
        with pytest.raises(ClientError) as e:
            await cb.request("media.played", conv=conv, seq=text["seq"])
        assert e.value.code == "not_found"
        _, _, cc = await w.user("cid")
        with pytest.raises(ClientError) as e:
            await cc.request("media.played", conv=conv, seq=ack["seq"])
        assert e.value.code == "not_found"
    finally:
        await w.stop()


# ---- video -------------------------------------------------------------------------------------
FFMPEG = shutil.which("ffmpeg")


def _mp4(tmp_path: Path) -> bytes:
    out = tmp_path / "clip.mp4"
    subprocess.run(
        [FFMPEG or "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10",
         "-t", "1", "-pix_fmt", "yuv420p", str(out)],
        check=True, timeout=60,
    )  # fmt: skip
    return out.read_bytes()


async def test_video_without_ffmpeg_has_no_poster(sqlite_db, tmp_path):
    w = await start_upload_world(sqlite_db, tmp_path / "up", ffmpeg="/nonexistent/ffmpeg")
    try:
        _, ta, _ = await w.user("ann")
        # a minimal ISO-BMFF file (ftyp box): accepted as video, no poster can be made
        data = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64
        st, r = await upload(w, ta, data, "video/mp4", "clip.mp4")
        assert st == 201 and r["attachment"]["kind"] == "video"
        assert "poster" not in r["attachment"]
    finally:
        await w.stop()


@pytest.mark.skipif(not FFMPEG, reason="ffmpeg not installed (Debian package ffmpeg): no posters")
async def test_video_poster_with_ffmpeg(sqlite_db, tmp_path):
    w = await start_upload_world(sqlite_db, tmp_path / "up")
    try:
        ta, tb, ca, cb, conv = await pair(w)
        st, r = await upload(w, ta, _mp4(tmp_path), "video/mp4", "clip.mp4")
        att = r["attachment"]
        assert st == 201 and att["poster"] and abs(att["duration"] - 1.0) < 0.2
        await ca.request("msg.send", conv=conv, cid="vid", attachment=att["id"])
        st, h, poster = await http(w, "GET", f"/api/v1/files/{att['poster']}", token=tb)
        assert st == 200 and h["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(poster)).size == (320, 240)
    finally:
        await w.stop()


@pytest.mark.skipif(not FFMPEG, reason="ffmpeg not installed (Debian package ffmpeg)")
async def test_voice_formats_made_by_ffmpeg(sqlite_db, tmp_path):
    """Ogg/Opus, MP3 and M4A (AAC) recordings of 1.2 s: accepted as voice, duration read."""
    w = await start_upload_world(sqlite_db, tmp_path / "up")
    try:
        _, ta, _ = await w.user("ann")
        for ext, codec, mime in (
            ("ogg", "libopus", "audio/ogg"),
            ("mp3", "libmp3lame", "audio/mpeg"),
            ("m4a", "aac", "audio/mp4"),
        ):
            out = tmp_path / f"v.{ext}"
            subprocess.run(
                [FFMPEG or "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1.2",
                 "-c:a", codec, str(out)],
                check=True, timeout=60,
            )  # fmt: skip
            st, r = await upload(w, ta, out.read_bytes(), mime, out.name)
            assert st == 201, (ext, r)
            att = r["attachment"]
            assert att["kind"] == "voice" and abs(att["duration"] - 1.2) < 0.1, (ext, att)
    finally:
        await w.stop()
