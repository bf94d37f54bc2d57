"""Signed download links (docs/protocol.md §17) over real HTTP on loopback, on SQLite and MariaDB:
a member's link downloads without any header (Range too); forged, tampered, expired,
other-user and other-file links are refused; a removed member's or a recalled file's link stops
working at once; `?token=` is refused for downloads; two servers sharing a configured key (or
one data directory) accept each other's links, servers with different keys do not."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from support import World, make_settings, start_world
from test_attachments import http, pair, png_bytes, upload

from berrychat import config
from berrychat.media.links import KEY_FILE
from berrychat.store.base import Q

KEY = "k" * 20 + "0123456789abcdefXYZ"  # 39 characters, as a fleet would render a generated one


async def links(w: World, token: str | None, ids: Any) -> tuple[int, dict[str, Any]]:
    st, _, body = await http(
        w,
        "POST",
        "/api/v1/files/links",
        json.dumps({"ids": ids}).encode(),
        {"Content-Type": "application/json"},
        token,
    )
    return st, json.loads(body or b"{}")


async def link_for(w: World, token: str, aid: str) -> str:
    st, r = await links(w, token, [aid])
    assert st == 200, r
    return r["links"][aid]


def code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


async def start(db: dict[str, Any], updir: Path, **media: Any) -> World:
    w = await start_world(make_settings(db, uploads={"dir": str(updir)}, media=media))
    w.updir = updir
    return w


@pytest.fixture
async def lworld(backend: dict[str, Any], tmp_path: Path):
    w = await start(backend, tmp_path / "up", url_signing_key=KEY)
    yield w
    await w.stop()


async def test_member_downloads_through_a_signed_link_without_any_header(lworld):
    w = lworld
    ta, tb, ca, cb, conv = await pair(w)
    data = png_bytes((400, 300))
    st, r = await upload(w, ta, data, "image/png", "p.png")
    att = r["attachment"]
    await ca.request("msg.send", conv=conv, cid="l1", attachment=att["id"])
    t0 = time.time()
    st, r = await links(w, tb, [att["id"], att["thumb"], att["id"]])
    assert st == 200, r
    assert set(r["links"]) == {att["id"], att["thumb"]}
    # lives between url_ttl_seconds (3600) and 1.5 times as long
    assert t0 + 3600 <= r["expires_at"] / 1000 <= time.time() + 5400
    assert (
        3600 <= r["expires_in"] <= 5400 and abs(r["expires_at"] / 1000 - t0 - r["expires_in"]) < 3
    )
    link = r["links"][att["id"]]
    assert link.startswith(f"/api/v1/files/{att['id']}?u=") and "token" not in link
    st, h, got = await http(w, "GET", link)
    assert st == 200 and got == data and h["content-type"] == "image/png"
    st, h, part = await http(w, "GET", link, headers={"Range": "bytes=4-11"})
    assert st == 206 and part == data[4:12]
    st, _, thumb = await http(w, "GET", r["links"][att["thumb"]])
    assert st == 200 and thumb[:3] == b"\xff\xd8\xff"
    # asked again within the same window: the same URL (browser caches keep working)
    assert await link_for(w, tb, att["id"]) == link


async def test_forged_tampered_other_user_and_other_file_links_are_refused(lworld):
    w = lworld
    ta, tb, ca, cb, conv = await pair(w)
    st, r1 = await upload(w, ta, png_bytes(color="blue"), "image/png")
    st, r2 = await upload(w, ta, b"PK\x05\x06" + bytes(18), "application/zip")
    a1, a2 = r1["attachment"]["id"], r2["attachment"]["id"]
    for aid in (a1, a2):
        await ca.request("msg.send", conv=conv, cid="s" + aid[:6], attachment=aid)
    bob_link = await link_for(w, tb, a1)
    path, query = bob_link.split("?")
    q = dict(kv.split("=") for kv in query.split("&"))
    ann = (await ca.request("conv.get", conv=conv))["conversation"]["members"]
    ann_id = next(m["user"] for m in ann if m["user"] != int(q["u"]))
    s = q["s"]
    flipped = ("A" if s[0] != "A" else "B") + s[1:]
    forged = [
        f"{path}?u={q['u']}&e={q['e']}&s={flipped}",  # a changed signature
        f"{path}?u={ann_id}&e={q['e']}&s={s}",  # bob's signature as another user
        f"{path}?u={q['u']}&e={int(q['e']) + 3600}&s={s}",  # a longer life
        f"/api/v1/files/{a2}?{query}",  # the signature of another file
        f"{path}?u={q['u']}&e={q['e']}",  # no signature
        f"{path}?u={q['u']}&e={q['e']}&s={s[:-1]}",  # malformed
        f"{path}?u=x{q['u']}&e={q['e']}&s={s}",
    ]
    for url in forged:
        st, h, body = await http(w, "GET", url)
        assert (st, code(body)) == (403, "link_invalid"), url
        assert "x-accel-redirect" not in h
    # a correctly signed link whose time is over (signed with the server's own key)
    signer = w.server.media.signer
    old = int(time.time()) - 1
    st, _, body = await http(w, "GET", f"{path}?{signer.query(a1, int(q['u']), old)}")
    assert (st, code(body)) == (403, "link_expired")
    # a link issued to someone who may not read the file is useless to them (404 as always)
    _, tc, _ = await w.user("cid")
    st, _, body = await http(w, "GET", await link_for(w, tc, a1))
    assert (st, code(body)) == (404, "not_found")
    # a forged signature that is also expired says "invalid", not "expired"
    st, _, body = await http(w, "GET", f"{path}?u={q['u']}&e={old}&s={s}")
    assert code(body) == "link_invalid"


async def test_removed_member_and_recalled_file_links_stop_working(lworld):
    w = lworld
    _, ta, ca = await w.user("ann")
    _, tb, _ = await w.user("bob")
    c, tc, _ = await w.user("cid")
    g = (await ca.request("conv.create", kind="group", members=["bob", "cid"], title="g"))["conv"]
    st, r = await upload(w, ta, b"%PDF-1.4\n" + os.urandom(3000), "application/pdf", "a.pdf")
    aid = r["attachment"]["id"]
    ack = await ca.request("msg.send", conv=g, cid="g1", attachment=aid)
    cid_link, bob_link = await link_for(w, tc, aid), await link_for(w, tb, aid)
    assert (await http(w, "GET", cid_link))[0] == 200
    await ca.request("conv.remove", conv=g, user=c["id"])
    st, _, body = await http(w, "GET", cid_link)
    assert (st, code(body)) == (404, "not_found")
    assert (await http(w, "GET", bob_link))[0] == 200
    # recalled: bob's still unexpired link no longer opens it; the uploader's still does
    await ca.request("msg.recall", conv=g, cid="g2", seq=ack["seq"])
    st, _, body = await http(w, "GET", bob_link)
    assert (st, code(body)) == (404, "not_found")
    assert (await http(w, "GET", await link_for(w, ta, aid)))[0] == 200


async def test_disabled_account_links_are_refused(lworld):
    w = lworld
    ann, ta, _ = await w.user("ann")
    st, r = await upload(w, ta, b"plain text file", "text/plain")
    link = await link_for(w, ta, r["attachment"]["id"])
    assert (await http(w, "GET", link))[0] == 200

    def disable(d):
        yield Q("UPDATE users SET disabled=1 WHERE id=?", (ann["id"],))

    await w.server.store.run(disable)
    st, _, body = await http(w, "GET", link)
    assert (st, code(body)) == (403, "account_disabled")


async def test_token_in_url_is_refused_for_downloads_and_links_need_a_session(lworld):
    w = lworld
    _, ta, _ = await w.user("ann")
    st, r = await upload(w, ta, b"plain text file", "text/plain")
    aid = r["attachment"]["id"]
    for url in (f"/api/v1/files/{aid}?token={ta}", f"/api/v1/files/{aid}?token=nope"):
        st, _, body = await http(w, "GET", url)
        assert (st, code(body)) == (400, "token_in_url"), url
        # refused even with a valid header: the token is already in a URL; fix the client
        st, _, body = await http(w, "GET", url, token=ta)
        assert (st, code(body)) == (400, "token_in_url"), url
    st, _, body = await http(w, "GET", f"/api/v1/files/{aid}")
    assert (st, code(body)) == (401, "not_authenticated")
    assert (await http(w, "GET", f"/api/v1/files/{aid}", token=ta))[0] == 200
    # POST /api/v1/files/links: a session, and a list of 1-200 well-formed ids
    assert (await links(w, None, [aid]))[0] == 401
    assert (await links(w, "nope", [aid]))[0] == 401
    for bad in ([], "x" * 22, [aid] * 201, ["../../etc"], [7], None):
        st, r = await links(w, ta, bad)
        assert (st, r["error"]["code"]) == (400, "bad_field"), bad
    # the WebSocket keeps its ?token= (browsers cannot set headers on WebSockets)
    from berrychat.client import Client

    c = await Client.connect_url_token(w.host, w.port, ta)
    c.abort()


async def test_links_work_across_servers_sharing_the_key_and_not_otherwise(backend, tmp_path):
    """Two servers (as two processes or Pis) on one database and one uploads directory: with
    the same configured key, a link issued by one opens on the other; with another key, not."""
    up = tmp_path / "shared-up"
    w1 = await start(backend, up, url_signing_key=KEY)
    w2 = await start(backend, up, url_signing_key=KEY)
    w3 = await start(backend, up, url_signing_key=KEY[::-1])
    try:
        _, ta, _ = await w1.user("ann")
        st, r = await upload(w1, ta, b"shared across processes", "text/plain")
        aid = r["attachment"]["id"]
        link = await link_for(w1, ta, aid)
        assert (await http(w2, "GET", link))[0] == 200
        st, _, body = await http(w3, "GET", link)
        assert (st, code(body)) == (403, "link_invalid")
        assert (await http(w3, "GET", await link_for(w3, ta, aid)))[0] == 200
        assert not (up.parent / KEY_FILE).exists()  # configured: no local key file
    finally:
        for w in (w1, w2, w3):
            await w.stop()


async def test_without_a_configured_key_servers_of_one_host_share_a_generated_one(
    sqlite_db, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    up = tmp_path / "data" / "uploads"
    w1 = await start(sqlite_db, up)
    w2 = await start(sqlite_db, up)
    try:
        keyfile = up.parent / KEY_FILE
        assert not keyfile.exists()  # made on first use (tests and tools leave no litter)
        warnings = [r for r in caplog.records if "media.url_signing_key is not set" in r.message]
        assert warnings and warnings[0].levelno == logging.WARNING
        _, ta, _ = await w1.user("ann")
        st, r = await upload(w1, ta, b"one host, two processes", "text/plain")
        link = await link_for(w2, ta, r["attachment"]["id"])
        assert (await http(w1, "GET", link))[0] == 200
        assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
        key = keyfile.read_text().strip()
        assert len(key) == 64
        assert all(key not in r.getMessage() for r in caplog.records)  # never logged
    finally:
        await w1.stop()
        await w2.stop()
    # a restart keeps the key: links handed out before still work
    w3 = await start(sqlite_db, up)
    try:
        assert (await http(w3, "GET", link))[0] == 200
    finally:
        await w3.stop()


def test_signing_key_config_is_checked_and_redacted():
    with pytest.raises(config.ConfigError, match="media.url_signing_key"):
        config.from_dict({"media": {"url_signing_key": "short"}}, env={})
    s = config.from_dict({"media": {"url_signing_key": KEY}}, env={})
    assert config.redacted(s)["media"]["url_signing_key"] == "***"
    assert KEY not in json.dumps(config.redacted(s))
    env = {"BERRYCHAT_MEDIA__URL_SIGNING_KEY": KEY, "BERRYCHAT_MEDIA__USER_QUOTA_MB": "0"}
    s = config.from_dict({}, env=env)
    assert s.media.url_signing_key == KEY and s.media.user_quota_mb == 0
    assert s.media.orphan_ttl_hours == 24.0
