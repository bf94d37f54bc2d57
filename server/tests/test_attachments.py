"""Attachments over real HTTP on loopback: streamed upload, sniffing, limits, dedupe, storage
paths, downloads and every refusal, X-Accel-Redirect, a full disk (SQLite and MariaDB where the
database is involved)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import World, pair, start_upload_world


# ---- a tiny HTTP client (the server's own parser is under test; this side stays simple) -------
async def http(
    world: World,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    token: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    r, w = await asyncio.open_connection(world.host, world.port)
    try:
        h = {"Host": "t", "Connection": "close", **(headers or {})}
        if token:
            h["Authorization"] = f"Bearer {token}"
        if body or method == "POST":
            h.setdefault("Content-Length", str(len(body)))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
        w.write(head.encode("latin-1") + b"\r\n" + body)
        await w.drain()
        return await asyncio.wait_for(read_response(r), 20)
    finally:
        w.close()


async def read_response(r: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    hdrs = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", "0"))
    data = await r.readexactly(n) if n else b""
    return status, hdrs, data


async def upload(
    world: World, token: str, data: bytes, mime: str, name: str = "f.bin"
) -> tuple[int, dict[str, Any]]:
    from urllib.parse import quote

    st, _, body = await http(
        world,
        "POST",
        f"/api/v1/uploads?name={quote(name)}",
        data,
        {"Content-Type": mime},
        token,
    )
    return st, json.loads(body or b"{}")


def png_bytes(size: tuple[int, int] = (64, 48), color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp")


def temp_files(root: Path) -> list[Path]:
    t = root / "tmp"
    return sorted(t.iterdir()) if t.is_dir() else []


@pytest.fixture
async def mworld(backend: dict[str, Any], tmp_path: Path):
    w = await start_upload_world(backend, tmp_path / "up", max_image_bytes=300_000)
    yield w
    await w.stop()


# ---- the main path ---------------------------------------------------------------------------
async def test_image_message_reaches_member_who_downloads_original_and_thumbnail(mworld):
    ta, tb, ca, cb, conv = await pair(mworld)
    data = png_bytes((640, 480))
    st, r = await upload(mworld, ta, data, "image/png", "holiday.png")
    assert st == 201, r
    att = r["attachment"]
    assert att["kind"] == "image" and att["mime"] == "image/png" and att["name"] == "holiday.png"
    assert (att["width"], att["height"]) == (640, 480)
    assert att["size"] == len(data) and len(att["sha256"]) == 64 and att["thumb"]
    assert max(att["thumb_width"], att["thumb_height"]) == 320
    ack = await ca.request("msg.send", conv=conv, cid="img1", attachment=att["id"], text="look")
    ev = await cb.next_event("msg", pred=lambda e: e["kind"] == "image")
    assert ev["seq"] == ack["seq"] and ev["text"] == "look"
    assert ev["attachment"]["id"] == att["id"] and ev["attachment"]["width"] == 640
    hist = (await cb.history(conv))["messages"][-1]
    assert hist["kind"] == "image" and hist["attachment"]["sha256"] == att["sha256"]
    st, h, got = await http(mworld, "GET", f"/api/v1/files/{att['id']}", token=tb)
    assert st == 200 and got == data and h["content-type"] == "image/png"
    assert h["x-content-type-options"] == "nosniff" and h["content-disposition"].startswith(
        "inline"
    )
    st, h, thumb = await http(mworld, "GET", f"/api/v1/files/{att['thumb']}", token=tb)
    assert st == 200 and h["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb)).size == (320, 240)
    # a range (audio/video seeking in the embedded mode)
    st, h, part = await http(
        mworld, "GET", f"/api/v1/files/{att['id']}", headers={"Range": "bytes=8-15"}, token=tb
    )
    assert st == 206 and part == data[8:16] and h["content-range"] == f"bytes 8-15/{len(data)}"


async def test_file_message_is_a_download_and_text_may_be_omitted(mworld):
    ta, tb, ca, cb, conv = await pair(mworld)
    data = b"%PDF-1.4\n" + os.urandom(5000)
    st, r = await upload(mworld, ta, data, "application/pdf", "r\u00e9sum\u00e9.pdf")
    assert st == 201 and r["attachment"]["kind"] == "file"
    aid = r["attachment"]["id"]
    await ca.request("msg.send", conv=conv, cid="f1", attachment=aid)
    ev = await cb.next_event("msg", pred=lambda e: e["kind"] == "file")
    assert ev["text"] == "" and ev["attachment"]["name"] == "résumé.pdf"
    st, h, got = await http(mworld, "GET", f"/api/v1/files/{aid}", token=tb)
    assert st == 200 and got == data
    assert h["content-disposition"].startswith("attachment;")
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.pdf" in h["content-disposition"]
    # neither text nor attachment: refused
    with pytest.raises(Exception, match="text: required"):
        await ca.request("msg.send", conv=conv, cid="f2")


async def test_same_bytes_are_stored_once(mworld):
    ta, tb, *_ = await pair(mworld)
    data = png_bytes((32, 32), "blue")
    st1, r1 = await upload(mworld, ta, data, "image/png")
    st2, r2 = await upload(mworld, tb, data, "image/png")
    assert st1 == st2 == 201
    a1, a2 = r1["attachment"], r2["attachment"]
    assert a1["id"] != a2["id"] and a1["sha256"] == a2["sha256"]
    # one original + one thumbnail on disk, both named by their digest
    files = stored_files(mworld.updir)
    assert len(files) == 2
    assert {p.name for p in files} >= {a1["sha256"]}
    orig = next(p for p in files if p.name == a1["sha256"])
    assert orig.relative_to(mworld.updir).as_posix() == (
        f"{a1['sha256'][:2]}/{a1['sha256'][2:4]}/{a1['sha256']}"
    )
    assert temp_files(mworld.updir) == []


# ---- refusals ----------------------------------------------------------------------------------
async def test_download_refusals(mworld):
    ta, tb, ca, cb, conv = await pair(mworld)
    _, tc, cc = await mworld.user("cid")
    st, r = await upload(mworld, ta, png_bytes(), "image/png")
    aid = r["attachment"]["id"]
    path = f"/api/v1/files/{aid}"
    # before it is sent, only the uploader can read it
    assert (await http(mworld, "GET", path, token=ta))[0] == 200
    assert (await http(mworld, "GET", path, token=tb))[0] == 404
    # in a group with ann, bob and cid
    g = (await ca.request("conv.create", kind="group", members=["bob", "cid"], title="g"))["conv"]
    await ca.request("msg.send", conv=g, cid="g1", attachment=aid)
    for t in (ta, tb, tc):
        assert (await http(mworld, "GET", path, token=t))[0] == 200
    # removed member
    cid_id = (await cc.request("conv.get", conv=g))["conversation"]["members"][2]["user"]
    await ca.request("conv.remove", conv=g, user=cid_id)
    st, _, body = await http(mworld, "GET", path, token=tc)
    assert st == 404 and json.loads(body)["error"]["code"] == "not_found"
    # the thumbnail follows its attachment
    thumb = r["attachment"]["thumb"]
    assert (await http(mworld, "GET", f"/api/v1/files/{thumb}", token=tb))[0] == 200
    assert (await http(mworld, "GET", f"/api/v1/files/{thumb}", token=tc))[0] == 404
    # a non-member of every conversation
    _, td, _ = await mworld.user("dora")
    assert (await http(mworld, "GET", path, token=td))[0] == 404
    # unknown id, no token, a bad token
    st, _, body = await http(mworld, "GET", "/api/v1/files/AAAAAAAAAAAAAAAAAAAAAA", token=tb)
    assert st == 404
    st, _, body = await http(mworld, "GET", path)
    assert st == 401 and json.loads(body)["error"]["code"] == "not_authenticated"
    assert (await http(mworld, "GET", path, token="nope"))[0] == 401
    # uploads need a session too
    st, _, body = await http(
        mworld, "POST", "/api/v1/uploads", png_bytes(), {"Content-Type": "image/png"}
    )
    assert st == 401
    # bob cannot send ann's upload as his own message
    with pytest.raises(Exception, match="attachment"):
        await cb.request("msg.send", conv=conv, cid="steal", attachment=aid)


async def test_paths_never_come_from_the_client(sworld, tmp_path):
    w = sworld
    updir = w.server.media.files.root
    _, ta, _ = await w.user("ann")
    st, r = await upload(w, ta, b"hello world, plain text", "text/plain", "../../../etc/passwd")
    assert st == 201
    att = r["attachment"]
    assert att["name"] == "passwd" and att["kind"] == "file"
    assert [p.name for p in stored_files(updir)] == [att["sha256"]]
    for evil in (
        "/api/v1/files/../../../etc/passwd",
        "/api/v1/files/..%2f..%2f..%2fetc%2fpasswd",
        "/api/v1/files/%2e%2e%2f%2e%2e%2fchat.db",
        f"/api/v1/files/{att['id']}/../../chat.db",
        "/api/v1/files/" + "a" * 40,
    ):
        st, _, body = await http(w, "GET", evil, token=ta)
        assert st == 404, evil
        assert b"root:" not in body and b"SQLite" not in body


async def test_spoofed_type_is_refused_and_leaves_nothing(mworld):
    ta, *_ = await pair(mworld)
    cases = [
        (png_bytes(), "image/jpeg"),  # a PNG declared as JPEG
        (b"<html><script>alert(1)</script></html>" * 3, "image/png"),  # HTML as an image
        (png_bytes(), "audio/ogg"),  # an image as a voice message
        (b"MZ\x90\x00" + os.urandom(200), "application/pdf"),  # not a PDF
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>" * 3, "image/svg+xml"),  # scripts inside
    ]
    for data, mime in cases:
        st, r = await upload(mworld, ta, data, mime)
        assert st == 415, (mime, r)
        assert r["error"]["code"] == "type_mismatch" and not r["error"]["retryable"]
    assert stored_files(mworld.updir) == [] and temp_files(mworld.updir) == []


async def test_size_limit_is_enforced_before_the_body_is_read(mworld):
    _, ta, _ = await mworld.user("ann")
    # per kind (images are capped at 300 kB in this world), answered from the head alone
    r, w = await asyncio.open_connection(mworld.host, mworld.port)
    w.write(
        b"POST /api/v1/uploads HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
        b"Content-Length: 300001\r\nAuthorization: Bearer " + ta.encode() + b"\r\n\r\n"
    )
    await w.drain()
    st, h, body = await asyncio.wait_for(read_response(r), 10)
    w.close()
    err = json.loads(body)["error"]
    assert st == 413 and err["code"] == "too_large" and "300000" in err["message"]
    # above every kind's limit: refused by the HTTP parser itself
    big = mworld.server.media.max_upload() + 1
    st, _, body = await http(
        mworld,
        "POST",
        "/api/v1/uploads",
        headers={"Content-Length": str(big), "Content-Type": "application/zip"},
        token=ta,
    )
    assert st == 413 and json.loads(body)["error"]["code"] == "too_large"
    assert temp_files(mworld.updir) == []
    st, _, body = await http(mworld, "GET", "/api/v1/uploads/limits")
    assert json.loads(body)["limits"]["image"] == 300_000


async def test_upload_is_streamed_to_disk_and_an_aborted_one_leaves_nothing(sworld):
    w = sworld
    updir = w.server.media.files.root
    _, ta, _ = await w.user("ann")
    total = 4 << 20
    r, wr = await asyncio.open_connection(w.host, w.port)
    wr.write(
        b"POST /api/v1/uploads?name=big.zip HTTP/1.1\r\nHost: t\r\n"
        b"Content-Type: application/zip\r\nContent-Length: "
        + str(total).encode()
        + b"\r\nAuthorization: Bearer "
        + ta.encode()
        + b"\r\n\r\nPK\x03\x04"
        + b"\0" * (2 << 20)
    )
    await wr.drain()
    # half the body sent: it is already on disk in the temporary file, growing
    size = 0
    for _ in range(100):
        files = temp_files(updir)
        size = files[0].stat().st_size if files else 0
        if size >= 2 << 20:
            break
        await asyncio.sleep(0.05)
    assert size >= 2 << 20
    wr.close()  # the client goes away mid-body
    for _ in range(100):
        if not temp_files(updir):
            break
        await asyncio.sleep(0.05)
    assert temp_files(updir) == [] and stored_files(updir) == []


async def test_accel_redirect_in_production_mode(backend, tmp_path):
    w = await start_upload_world(backend, tmp_path / "up", accel_prefix="/_berrychat_uploads/")
    try:
        ta, tb, ca, cb, conv = await pair(w)
        st, r = await upload(w, ta, b"PK\x05\x06" + b"\0" * 18, "application/zip", "a.zip")
        att = r["attachment"]
        await ca.request("msg.send", conv=conv, cid="z", attachment=att["id"])
        st, h, body = await http(w, "GET", f"/api/v1/files/{att['id']}", token=tb)
        sha = att["sha256"]
        assert st == 200 and body == b""
        assert h["x-accel-redirect"] == f"/_berrychat_uploads/{sha[:2]}/{sha[2:4]}/{sha}"
        assert h["content-type"] == "application/zip" and "a.zip" in h["content-disposition"]
        _, tc, _ = await w.user("cid")
        st, h, _ = await http(w, "GET", f"/api/v1/files/{att['id']}", token=tc)
        assert st == 404 and "x-accel-redirect" not in h
    finally:
        await w.stop()


async def test_full_disk_gives_a_retryable_error_and_no_partial_file(sqlite_db, tmp_path):
    updir = tmp_path / "small"
    updir.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(updir)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.decode()[:200]}")
    w: World | None = None
    try:
        w = await start_upload_world(sqlite_db, updir)
        _, ta, _ = await w.user("ann")
        st, body = await upload(w, ta, b"PK\x03\x04" + os.urandom(600_000), "application/zip")
        assert st == 507, body
        assert body["error"]["code"] == "storage_full" and body["error"]["retryable"] is True
        assert temp_files(updir) == [] and stored_files(updir) == []
        # space again: the same server takes the next upload
        st, body = await upload(w, ta, b"PK\x03\x04" + os.urandom(1000), "application/zip")
        assert st == 201
    finally:
        if w is not None:
            await w.stop()
        subprocess.run(["umount", str(updir)], check=False)


async def test_unusable_uploads_dir_gives_a_clear_error(sqlite_db, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    w = await start_upload_world(sqlite_db, blocker / "up")
    try:
        _, ta, _ = await w.user("ann")
        st, body = await upload(w, ta, b"PK\x03\x04", "application/zip")
        assert st == 503 and body["error"]["code"] == "unavailable"
        assert body["error"]["retryable"] is True
    finally:
        await w.stop()


# ---- the sans-I/O parser's streamed bodies -------------------------------------------------------
def test_parser_streams_bodies_piecewise_and_caps_before_reading():
    from berrychat.protocol.http11 import Body, HttpError, Request, RequestParser

    p = RequestParser(max_body_bytes=10, stream=lambda r: 100 if r.path == "/up" else None)
    head = b"POST /up HTTP/1.1\r\nContent-Length: 12\r\n\r\n"
    ev = p.events(head + b"hello")
    assert isinstance(ev[0], Request) and ev[0].streaming and ev[0].content_length == 12
    assert ev[1] == Body(b"hello", False)
    # the rest of the body, then a pipelined ordinary request in the same read
    ev = p.events(b" world!GET /x HTTP/1.1\r\n\r\n")
    assert ev[0] == Body(b" world!", True)
    assert isinstance(ev[1], Request) and ev[1].path == "/x" and not ev[1].streaming
    # an empty streamed body still ends
    ev = p.events(b"POST /up HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert ev[1] == Body(b"", True)
    # above the cap: refused from the head alone (no body byte read)
    with pytest.raises(HttpError) as e:
        p.events(b"POST /up HTTP/1.1\r\nContent-Length: 101\r\n\r\n")
    assert e.value.status == 413
    # not streamed: the ordinary limit applies
    with pytest.raises(HttpError) as e:
        RequestParser(max_body_bytes=10).feed(b"POST /a HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
    assert e.value.status == 413


async def test_an_early_refusal_is_read_by_a_client_still_sending(sworld):
    """Refused after the first bytes, the rest of a large body is read and dropped, so a client
    that sends the whole body (a browser) gets the 415 instead of a connection reset."""
    _, ta, _ = await sworld.user("ann")
    st, r = await upload(sworld, ta, b"<html>" + b"x" * (6 << 20), "image/png")
    assert st == 415 and r["error"]["code"] == "type_mismatch"
    root = sworld.server.media.files.root
    assert temp_files(root) == [] and stored_files(root) == []


async def test_a_recalled_attachment_is_no_longer_shared(mworld):
    ta, tb, ca, cb, conv = await pair(mworld)
    st, r = await upload(mworld, ta, png_bytes(), "image/png")
    att = r["attachment"]
    ack = await ca.request("msg.send", conv=conv, cid="r1", attachment=att["id"])
    for aid in (att["id"], att["thumb"]):
        assert (await http(mworld, "GET", f"/api/v1/files/{aid}", token=tb))[0] == 200
    await ca.request("msg.recall", conv=conv, cid="r2", seq=ack["seq"])
    hist = [m for m in (await cb.history(conv))["messages"] if m["seq"] == ack["seq"]][0]
    assert hist["recalled"] and "attachment" not in hist
    for aid in (att["id"], att["thumb"]):
        assert (await http(mworld, "GET", f"/api/v1/files/{aid}", token=tb))[0] == 404
    # the uploader keeps access to their own upload
    assert (await http(mworld, "GET", f"/api/v1/files/{att['id']}", token=ta))[0] == 200
