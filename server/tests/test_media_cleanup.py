"""The orphaned-upload sweep (docs/server.md, "Download links, orphans and quotas"), on SQLite
and MariaDB with real files: uploads unreferenced (never sent, or every message recalled) for
longer than media.orphan_ttl_hours go, row, thumbnail and file, the time counted from when they
stopped being referenced; sent uploads, recent ones and files another upload shares (dedupe)
stay; sweeping twice, or from two servers at once, deletes each row exactly once; a file an
upload of the same bytes refreshed meanwhile is put back."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from support import World, make_settings, start_world
from test_attachments import http, pair, png_bytes, stored_files, temp_files, upload

from berrychat.media.storage import FileStore
from berrychat.store.base import Q

KEY = "cleanup-test-key-0123456789abcdef"
DAY = 86400.0


async def start(db: dict[str, Any], updir: Path) -> World:
    s = make_settings(db, uploads={"dir": str(updir)}, media={"url_signing_key": KEY})
    w = await start_world(s)
    w.updir = updir
    return w


async def row_ids(w: World) -> set[str]:
    def tx(d):
        return (yield Q("SELECT id FROM attachments", (), "all"))

    return {r[0] for r in await w.server.store.run(tx)}


def on_disk(w: World, sha: str) -> bool:
    return w.server.media.files.exists(sha)


@pytest.fixture
async def cworld(backend: dict[str, Any], tmp_path: Path):
    w = await start(backend, tmp_path / "up")
    yield w
    await w.stop()


async def test_sweep_removes_only_orphans_and_keeps_shared_content(cworld):
    w = cworld
    ta, tb, ca, cb, conv = await pair(w)
    shared = b"%PDF-1.4\n" + os.urandom(4000)
    # ann: an image never sent (row + thumbnail + two files), a PDF never sent whose bytes bob
    # also uploads and sends, a file sent and kept, a file sent then recalled
    _, img = await upload(w, ta, png_bytes((500, 400), "green"), "image/png", "never.png")
    _, pdf_a = await upload(w, ta, shared, "application/pdf", "a.pdf")
    _, pdf_b = await upload(w, tb, shared, "application/pdf", "b.pdf")
    _, kept = await upload(w, ta, b"kept: sent in a message", "text/plain")
    _, gone = await upload(w, ta, b"recalled soon after", "text/plain")
    img, pdf_a, pdf_b = img["attachment"], pdf_a["attachment"], pdf_b["attachment"]
    kept, gone = kept["attachment"], gone["attachment"]
    assert pdf_a["sha256"] == pdf_b["sha256"]
    await cb.request("msg.send", conv=conv, cid="b1", attachment=pdf_b["id"])
    await ca.request("msg.send", conv=conv, cid="a1", attachment=kept["id"])
    ack = await ca.request("msg.send", conv=conv, cid="a2", attachment=gone["id"])
    await ca.request("msg.recall", conv=conv, cid="a3", seq=ack["seq"])
    before = await row_ids(w)
    assert len(before) == 6  # five uploads and one thumbnail

    # now: nothing is old enough
    res = await w.server.media.sweep()
    assert res.rows == 0 and await row_ids(w) == before

    # a day and an hour later
    res = await w.server.media.sweep(now=time.time() + DAY + 3600)
    assert res.rows == 4  # the image and its thumbnail, ann's PDF, the recalled file
    assert await row_ids(w) == {pdf_b["id"], kept["id"]}
    assert not on_disk(w, img["sha256"]) and not on_disk(w, gone["sha256"])
    assert on_disk(w, pdf_b["sha256"]) and on_disk(w, kept["sha256"])
    assert res.files == 3 and res.kept_files == [pdf_a["sha256"]]
    assert len(stored_files(w.updir)) == 2 and temp_files(w.updir) == []
    # the shared file still downloads for bob's conversation; ann's orphan is gone for ann too
    assert (await http(w, "GET", f"/api/v1/files/{pdf_b['id']}", token=ta))[0] == 200
    assert (await http(w, "GET", f"/api/v1/files/{pdf_a['id']}", token=ta))[0] == 404
    assert (await http(w, "GET", f"/api/v1/files/{img['thumb']}", token=ta))[0] == 404
    # and a deleted upload cannot be sent any more
    with pytest.raises(Exception, match="attachment"):
        await ca.request("msg.send", conv=conv, cid="a4", attachment=img["id"])

    # idempotent: a second sweep finds nothing
    res = await w.server.media.sweep(now=time.time() + DAY + 3600)
    assert (res.rows, res.files) == (0, 0) and len(await row_ids(w)) == 2


async def test_two_servers_sweeping_at_once_delete_each_orphan_once(backend, tmp_path):
    up = tmp_path / "up"
    w1, w2 = await start(backend, up), await start(backend, up)
    try:
        _, ta, _ = await w1.user("ann")
        ids = set()
        for i in range(12):
            st, r = await upload(w1, ta, f"orphan {i}".encode() * 50, "text/plain")
            assert st == 201, r
            ids.add(r["attachment"]["id"])
        # both find the twelve unreferenced uploads: each is recorded once
        r1, r2 = await asyncio.gather(w1.server.media.sweep(), w2.server.media.sweep())
        assert r1.marked + r2.marked == 12 and r1.rows + r2.rows == 0
        later = time.time() + DAY + 60
        r1, r2 = await asyncio.gather(
            w1.server.media.sweep(now=later), w2.server.media.sweep(now=later)
        )
        assert r1.rows + r2.rows == 12 and r1.files + r2.files == 12
        assert await row_ids(w1) == set() and stored_files(up) == []
    finally:
        await w1.stop()
        await w2.stop()


async def test_the_ttl_counts_from_when_an_upload_stopped_being_referenced(cworld):
    """An old upload whose message is recalled gets the whole TTL from the recall, not from its
    upload time; an upload sent after it was found unreferenced is forgotten and kept."""
    w = cworld
    ta, tb, ca, cb, conv = await pair(w)
    _, old = await upload(w, ta, b"three days old, sent, then recalled", "text/plain")
    _, late = await upload(w, ta, b"sent only after the first sweep", "text/plain")
    old, late = old["attachment"], late["attachment"]

    def age(d):
        yield Q("UPDATE attachments SET created_at=? WHERE id=?", (0, old["id"]))

    await w.server.store.run(age)
    ack = await ca.request("msg.send", conv=conv, cid="o1", attachment=old["id"])
    t0 = time.time()
    res = await w.server.media.sweep(now=t0)
    assert res.marked == 1 and res.rows == 0  # `late` is unreferenced; `old` is in a message
    await ca.request("msg.send", conv=conv, cid="o2", attachment=late["id"])
    await ca.request("msg.recall", conv=conv, cid="o3", seq=ack["seq"])
    # the next sweep finds `old` unreferenced: its clock starts now, whatever its upload time
    res = await w.server.media.sweep(now=t0 + 3600)
    assert (res.marked, res.rows) == (1, 0)
    res = await w.server.media.sweep(now=t0 + 3600 + DAY - 60)
    assert res.rows == 0
    # a day after that: `old` goes; `late`, referenced again, stays
    res = await w.server.media.sweep(now=t0 + 3600 + DAY + 60)
    assert res.rows == 1 and await row_ids(w) == {late["id"]}
    assert not on_disk(w, old["sha256"]) and on_disk(w, late["sha256"])


def test_a_file_refreshed_by_a_new_upload_of_the_same_bytes_is_put_back(tmp_path):
    fs = FileStore(tmp_path / "up")
    sha = fs.store_bytes(b"same bytes")
    old = time.time() - 3 * DAY
    os.utime(fs.path(sha), (old, old))
    # a concurrent upload of these bytes finishes: commit() finds the file and refreshes it
    assert fs.store_bytes(b"same bytes") == sha
    assert fs.path(sha).stat().st_mtime > old + DAY
    # the sweep (which saw no row for the digest a moment earlier) must not remove it
    assert fs.remove_unused(sha, written_before=time.time() - 600) is False
    assert fs.path(sha).read_bytes() == b"same bytes"
    assert list((tmp_path / "up" / "tmp").iterdir()) == []
    # an old file nobody refreshed goes; removing it again is harmless
    os.utime(fs.path(sha), (old, old))
    assert fs.remove_unused(sha, written_before=time.time() - 600) is True
    assert not fs.exists(sha) and fs.remove_unused(sha, written_before=time.time()) is False
    # stored again after removal: commit() puts the bytes back in place
    assert fs.store_bytes(b"same bytes") == sha and fs.exists(sha)


async def test_the_server_runs_the_sweep_in_the_background(sworld):
    task = sworld.server.media._sweeper
    assert task is not None and not task.done()
    await sworld.server.media.stop()
    assert task.cancelled()
