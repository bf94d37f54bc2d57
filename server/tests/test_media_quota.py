"""Per-user storage quotas (media.user_quota_mb; docs/protocol.md §17), on SQLite and MariaDB:
an upload that would go over the quota is refused with 413 quota_exceeded from the request head,
before any byte is read, and leaves no file, no temporary file and no row; identical bytes count
once; quotas are per user; usage goes down when the orphan sweep removes uploads; 0 = no quota."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from support import World, make_settings, start_world
from test_attachments import read_response, stored_files, temp_files, upload

from berrychat.media.housekeeping import usage_bytes
from berrychat.store.base import Q

KIB = 1024


async def start(db: dict[str, Any], updir: Path, quota_mb: int) -> World:
    s = make_settings(
        db,
        uploads={"dir": str(updir)},
        media={"user_quota_mb": quota_mb, "url_signing_key": "quota-test-key-0123456789abcdefgh"},
    )
    w = await start_world(s)
    w.updir = updir
    return w


def zip_bytes(n: int) -> bytes:
    return b"PK\x03\x04" + os.urandom(n - 4)


async def row_count(w: World) -> int:
    def tx(d):
        return (yield Q("SELECT COUNT(*) FROM attachments", (), "one"))

    return int((await w.server.store.run(tx))[0])


@pytest.fixture
async def qworld(backend: dict[str, Any], tmp_path: Path):
    w = await start(backend, tmp_path / "up", 1)
    yield w
    await w.stop()


def upload_head(token: str, name: str, length: int) -> bytes:
    """The head of a zip upload whose body the test sends (or withholds) itself."""
    return (
        f"POST /api/v1/uploads?name={name} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/zip\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_quota_refuses_from_the_head_and_leaves_nothing(qworld):
    w = qworld
    ann, ta, _ = await w.user("ann")
    bob, tb, _ = await w.user("bob")
    a = zip_bytes(400 * KIB)
    for _ in range(2):  # the same bytes twice: counted once
        st, r = await upload(w, ta, a, "application/zip", "a.zip")
        assert st == 201, r
    assert await usage_bytes(w.server.store, ann["id"]) == len(a)
    st, r = await upload(w, ta, zip_bytes(500 * KIB), "application/zip", "b.zip")
    assert st == 201, r
    used = await usage_bytes(w.server.store, ann["id"])
    assert used == 900 * KIB
    files, rows = stored_files(w.updir), await row_count(w)

    # 200 KiB more would pass 1 MiB: refused from the head, the body is never sent
    r_, w_ = await asyncio.open_connection(w.host, w.port)
    try:
        w_.write(upload_head(ta, "c.zip", 200 * KIB))
        await w_.drain()
        st, _, body = await asyncio.wait_for(read_response(r_), 10)
    finally:
        w_.close()
    err = json.loads(body)["error"]
    assert st == 413 and err["code"] == "quota_exceeded" and err["retryable"] is False
    assert err["message"] == (
        "this upload (0.2 MiB) would exceed your storage quota (0.9 MiB of 1 MiB used)"
    )
    # and with the body sent along: the same, nothing kept anywhere
    st, r = await upload(w, ta, zip_bytes(200 * KIB), "application/zip", "c.zip")
    assert st == 413 and r["error"]["code"] == "quota_exceeded"
    assert stored_files(w.updir) == files and temp_files(w.updir) == []
    assert await row_count(w) == rows and await usage_bytes(w.server.store, ann["id"]) == used
    # a smaller one still fits; bob has his own quota
    st, r = await upload(w, ta, zip_bytes(100 * KIB), "application/zip", "d.zip")
    assert st == 201, r
    st, r = await upload(w, tb, zip_bytes(1000 * KIB), "application/zip", "e.zip")
    assert st == 201, r

    # the orphan sweep removes ann's unsent uploads: her usage goes down, uploads fit again
    await w.server.media.sweep()  # finds them unreferenced
    res = await w.server.media.sweep(now=time.time() + 2 * 86400)
    assert res.rows == 5
    assert await usage_bytes(w.server.store, ann["id"]) == 0
    st, r = await upload(w, ta, zip_bytes(200 * KIB), "application/zip", "c.zip")
    assert st == 201, r


async def test_zero_means_no_quota(sqlite_db, tmp_path):
    w = await start(sqlite_db, tmp_path / "up", 0)
    try:
        _, ta, _ = await w.user("ann")
        for i in range(3):
            st, r = await upload(w, ta, zip_bytes(600 * KIB), "application/zip", f"{i}.zip")
            assert st == 201, r
    finally:
        await w.stop()


async def test_uploads_in_progress_count_against_the_quota(sqlite_db, tmp_path):
    """While one upload of a user is still arriving, a second one that would not fit beside it
    is refused at once; when the first is stored, what is left of the quota is usable."""
    w = await start(sqlite_db, tmp_path / "up", 1)
    try:
        _, ta, _ = await w.user("ann")
        first = zip_bytes(700 * KIB)
        r_, w_ = await asyncio.open_connection(w.host, w.port)
        try:
            w_.write(upload_head(ta, "first.zip", len(first)) + first[: 300 * KIB])
            await w_.drain()
            for _ in range(200):  # at most 10 s: the first upload is being received
                if temp_files(w.updir) and temp_files(w.updir)[0].stat().st_size > 0:
                    break
                await asyncio.sleep(0.05)
            assert temp_files(w.updir), "the first upload never started"
            st, r = await upload(w, ta, zip_bytes(400 * KIB), "application/zip", "second.zip")
            assert st == 413 and r["error"]["code"] == "quota_exceeded"
            assert "(0.0 MiB of 1 MiB used, 0.7 MiB more being uploaded)" in r["error"]["message"]
            w_.write(first[300 * KIB :])
            await w_.drain()
            st, _, body = await asyncio.wait_for(read_response(r_), 10)
            assert st == 201, body
        finally:
            w_.close()
        st, r = await upload(w, ta, zip_bytes(300 * KIB), "application/zip", "third.zip")
        assert st == 201, r
    finally:
        await w.stop()
