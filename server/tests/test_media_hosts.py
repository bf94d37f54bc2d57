"""Uploads on several chat hosts (docs/server.md, "Several chat hosts"): every host keeps its own
`uploads.dir`, rows are shared in one database, and any process's sweep may delete a row. Two
servers with different upload directories share one database (SQLite and MariaDB): the rows the
sweep of server B deletes still lead to their files leaving server A's directory (A's sweep
collects its own directory), and nothing a row names is removed, on either disk. The collection
removes nothing early: not a file written within the grace window, not one refreshed by an upload
of the same bytes meanwhile, not files that merely look old while the database has no
attachment at all."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from support import World
from test_attachments import http, pair, png_bytes, stored_files, temp_files, upload
from test_media_cleanup import DAY, row_ids, start

from berrychat.media import housekeeping
from berrychat.store.base import Q


def names_on_disk(root: Path) -> set[str]:
    return {p.name for p in stored_files(root)}


async def named_shas(w: World) -> set[str]:
    def tx(d):
        return (yield Q("SELECT sha256 FROM attachments", (), "all"))

    return {r[0] for r in await w.server.store.run(tx)}


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


async def test_rows_deleted_by_another_hosts_sweep_leave_this_hosts_disk(backend, tmp_path):
    # A: the edge's instance, which received every upload of ann's; B: an instance on another
    # Pi with its own (different) directory, which received one upload of bob's.
    a_dir, b_dir = tmp_path / "pi-1", tmp_path / "pi-2"
    a, b = await start(backend, a_dir), await start(backend, b_dir)
    try:
        ta, tb, ca, cb, conv = await pair(a)
        shared = b"%PDF-1.4\n" + os.urandom(3000)
        ups: dict[str, dict[str, Any]] = {}
        for key, data, mime, token, via in (
            ("img_unsent", png_bytes((300, 200), "green"), "image/png", ta, a),
            ("img_sent", png_bytes((300, 200), "blue"), "image/png", ta, a),
            ("unsent", b"never sent " + os.urandom(64), "text/plain", ta, a),
            ("recalled", b"sent, then recalled " + os.urandom(64), "text/plain", ta, a),
            ("kept", b"sent and kept " + os.urandom(64), "text/plain", ta, a),
            ("pdf_ann", shared, "application/pdf", ta, a),
            ("pdf_bob", shared, "application/pdf", tb, a),
            ("on_b", b"received by the other Pi " + os.urandom(64), "text/plain", tb, b),
        ):
            st, r = await upload(via, token, data, mime, f"{key}.bin")
            assert st == 201, r
            ups[key] = r["attachment"]
        assert ups["pdf_ann"]["sha256"] == ups["pdf_bob"]["sha256"]
        for i, key in enumerate(("img_sent", "recalled", "kept")):
            ack = await ca.request("msg.send", conv=conv, cid=f"a{i}", attachment=ups[key]["id"])
            if key == "recalled":
                await ca.request("msg.recall", conv=conv, cid="a-recall", seq=ack["seq"])
        for i, key in enumerate(("pdf_bob", "on_b")):
            await cb.request("msg.send", conv=conv, cid=f"b{i}", attachment=ups[key]["id"])

        def sha(key: str) -> str:
            return ups[key]["sha256"]

        def thumb_sha(key: str) -> str:
            return stored_thumbs[ups[key]["thumb"]]

        rows = await row_ids(a)
        assert len(rows) == 10  # eight uploads and two thumbnails

        def tx(d):
            return (yield Q("SELECT id, sha256 FROM attachments WHERE kind='thumbnail'", (), "all"))

        stored_thumbs = {r[0]: r[1] for r in await a.server.store.run(tx)}
        on_a_before = names_on_disk(a_dir)
        assert on_a_before == {
            sha("img_unsent"),
            thumb_sha("img_unsent"),
            sha("img_sent"),
            thumb_sha("img_sent"),
            sha("unsent"),
            sha("recalled"),
            sha("kept"),
            sha("pdf_ann"),
        }
        assert names_on_disk(b_dir) == {sha("on_b")}

        # both record the unreferenced uploads now (nothing is old enough to go)
        for w in (a, b):
            res = await w.server.media.sweep()
            assert (res.rows, res.files) == (0, 0)

        # a day and an hour later, B's sweep deletes the rows; the files are not on its disk
        later = time.time() + DAY + 3600
        res_b = await b.server.media.sweep(now=later)
        assert res_b.rows == 5  # img_unsent and its thumbnail, unsent, recalled, pdf_ann
        assert (res_b.files, res_b.collected) == (0, 0)
        assert res_b.kept_files == [sha("pdf_ann")]  # bob's sent upload shares its bytes
        assert names_on_disk(a_dir) == on_a_before  # what used to stay on pi-1 forever
        assert names_on_disk(b_dir) == {sha("on_b")}

        # A's next sweep deletes no row but collects its own directory
        res_a = await a.server.media.sweep(now=later)
        assert res_a.rows == 0
        assert res_a.collected == res_a.files == 4
        assert names_on_disk(a_dir) == {
            sha("img_sent"),
            thumb_sha("img_sent"),
            sha("kept"),
            sha("pdf_bob"),
        }
        assert names_on_disk(b_dir) == {sha("on_b")}
        assert temp_files(a_dir) == [] and temp_files(b_dir) == []

        # nothing a row names was removed from the disk that held it
        named = await named_shas(a)
        assert named == names_on_disk(a_dir) | names_on_disk(b_dir)
        assert on_a_before - names_on_disk(a_dir) == on_a_before - named
        for key, via in (("kept", a), ("pdf_bob", a), ("img_sent", a), ("on_b", b)):
            st, _, body = await http(via, "GET", f"/api/v1/files/{ups[key]['id']}", token=tb)
            assert st == 200, key
            assert body == (via.updir / via.server.media.files.relpath(sha(key))).read_bytes()

        # sweeping again, anywhere, changes nothing
        for w in (a, b):
            res = await w.server.media.sweep(now=later)
            assert (res.rows, res.files) == (0, 0)
        assert names_on_disk(a_dir) | names_on_disk(b_dir) == named
    finally:
        await a.stop()
        await b.stop()


async def test_the_directory_collection_removes_nothing_early(backend, tmp_path):
    w = await start(backend, tmp_path / "up")
    try:
        _, ta, _ = await w.user("ann")
        st, r = await upload(w, ta, b"a row names this " + os.urandom(32), "text/plain")
        assert st == 201, r
        files = w.server.media.files
        named = r["attachment"]["sha256"]
        # files no row names (rows deleted by a process elsewhere, or an upload whose row
        # was never written): old, inside the grace window, just written
        old = files.store_bytes(b"unnamed for three days")
        inside = files.store_bytes(b"unnamed for 23 hours")
        fresh = files.store_bytes(b"unnamed, just written")
        age(files.path(old), 3 * DAY)
        age(files.path(inside), 23 * 3600)  # media.orphan_ttl_hours is 24
        age(files.path(named), 3 * DAY)  # old, but named by a row
        # entries outside the layout are never touched, however old
        stray = files.path(old).parent / "notes.txt"
        stray.write_text("an operator's file")
        misplaced = files.root / "00" / "00" / old.replace(old[:4], "ffff", 1)
        misplaced.parent.mkdir(parents=True)
        misplaced.write_text("not where its name says")
        for p in (stray, misplaced):
            age(p, 3 * DAY)

        res = await w.server.media.sweep()
        assert (res.rows, res.collected, res.files) == (0, 1, 1)
        assert not files.exists(old)
        assert files.exists(inside) and files.exists(fresh) and files.exists(named)
        assert stray.exists() and misplaced.exists()

        # an upload of the same bytes refreshes an old unnamed file between the scan and the
        # removal (its row is not written yet): the file is put back
        again = files.store_bytes(b"re-uploaded at the last moment")
        age(files.path(again), 3 * DAY)
        cutoff = time.time() - DAY
        seen = files.stored_before(cutoff)
        assert again in seen and inside not in seen and fresh not in seen
        assert files.store_bytes(b"re-uploaded at the last moment") == again  # commit()
        files.stored_before = lambda _t: seen  # the scan ran before that upload
        try:
            removed = await housekeeping.collect_unnamed_files(w.server.store, files, cutoff)
        finally:
            del files.stored_before
        assert removed == 0
        assert files.path(again).read_bytes() == b"re-uploaded at the last moment"
        assert temp_files(files.root) == []
    finally:
        await w.stop()


async def test_nothing_is_collected_while_the_database_has_no_attachment(backend, tmp_path, caplog):
    """A process started against a fresh or wrong database must not empty a directory full of
    other people's files: with an empty attachments table the collection removes nothing."""
    w = await start(backend, tmp_path / "up")
    try:
        files = w.server.media.files
        shas = [files.store_bytes(f"someone's file {i}".encode()) for i in range(3)]
        for s in shas:
            age(files.path(s), 3 * DAY)
        assert await row_ids(w) == set()
        with caplog.at_level(logging.WARNING, logger="berrychat.media.housekeeping"):
            res = await w.server.media.sweep(now=time.time() + DAY)
        assert (res.collected, res.files) == (0, 0)
        assert all(files.exists(s) for s in shas)
        assert "the database has no attachments at all" in caplog.text
    finally:
        await w.stop()


@pytest.mark.parametrize("n", [0, 1, housekeeping.CHECK_BATCH + 5])
def test_stored_before_lists_only_layout_files_older_than_the_cutoff(tmp_path, n):
    from berrychat.media.storage import FileStore

    fs = FileStore(tmp_path / "up")
    shas = [fs.store_bytes(f"file {i}".encode()) for i in range(n)]
    for s in shas[: n // 2]:
        age(fs.path(s), 2 * DAY)
    t = fs.new_temp()  # an upload being received: never listed
    t.write(b"partial")
    age(t.path, 2 * DAY)
    assert sorted(fs.stored_before(time.time() - DAY)) == sorted(shas[: n // 2])
    assert sorted(fs.stored_before(time.time() + 60)) == sorted(shas)
    t.discard()
