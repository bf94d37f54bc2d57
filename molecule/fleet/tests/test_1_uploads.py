"""Attachments on a fleet whose Pis each keep their own uploads directory: Ann, connected to an
instance on fleet-pi-2, uploads an image through the edge; Bob, on another Pi, downloads it and
its thumbnail through a signed link, byte for byte. The edge's Nginx sends uploads only to the
edge's own instances, so the file is stored on fleet-pi-1 (the disk Nginx sends it from) and on
no other Pi (docs/server.md, "Several chat hosts")."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import ssl
import struct
import subprocess
import zlib
from typing import Any

from berrychat.client import Client
from fleet import DOMAIN, Edge, connections_per_instance, names, podman

UPLOADS = "/var/lib/berrychat/uploads"


def png(width: int = 96, height: int = 64) -> bytes:
    """A plain RGB PNG (no metadata: stored as it is) with random pixels, unique per run."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + os.urandom(3 * width) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


async def raw(
    edge: Edge, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request through the edge over TLS with a binary body; the answer's status,
    headers (lower-case names) and body (read to the end: Connection: close)."""
    head = [f"{method} {path} HTTP/1.1", f"Host: {DOMAIN}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    head.append(f"Content-Length: {len(body)}")
    reader, writer = await edge.open()
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        data = b""
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):
            while chunk := await asyncio.wait_for(reader.read(65536), 30):
                data += chunk
    finally:
        writer.close()
    header, _, payload = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert "chunked" not in fields.get("transfer-encoding", ""), fields
    return int(lines[0].split(" ", 2)[1]), fields, payload


async def connect_on(
    edge: Edge, token: str, want: Any, spare: list[Client]
) -> tuple[Client, tuple[str, int]]:
    """Connect through the edge until the connection lands on an instance whose Pi satisfies
    `want` (Nginx balances by least connections, so connections kept open in `spare` push the
    next one elsewhere; each Nginx worker counts on its own, so the spread is not exact).
    Bounded: 24 connections (even at random, a third of the instances missed 24 times in a row
    is a 1 in 17,000 chance)."""
    for _ in range(24):
        before = connections_per_instance()
        c = await edge.ws(token)
        at = None
        for _ in range(20):  # the gauge is read when /metrics is scraped: bounded wait
            now = connections_per_instance()
            up = [k for k in now if now[k] > before.get(k, 0)]
            if len(up) == 1:
                at = up[0]
                break
            await asyncio.sleep(0.5)
        assert at is not None, f"cannot tell which instance took the connection: {now}"
        if want(at[0]):
            return c, at
        spare.append(c)
    raise AssertionError("no connection landed on the wanted Pi in 24 attempts")


def stored_on(host: str, sha: str) -> bool:
    path = f"{UPLOADS}/{sha[:2]}/{sha[2:4]}/{sha}"
    try:
        podman("exec", host, "test", "-f", path)
    except subprocess.CalledProcessError:
        return False
    return True


def test_an_image_uploaded_by_a_user_on_pi_2_downloads_for_a_user_on_another_pi(world) -> None:
    edge = world.edge
    edge_host = names("edge")[0]
    pis = names("chat_servers")
    pi_2 = next(h for h in pis if h.endswith("pi-2"))
    image = png()
    digest = hashlib.sha256(image).hexdigest()

    async def scenario() -> None:
        spare: list[Client] = []
        try:
            ann, ann_at = await connect_on(edge, world.tokens["ann"], lambda h: h == pi_2, spare)
            bob, bob_at = await connect_on(edge, world.tokens["bob"], lambda h: h != pi_2, spare)
            print(f"uploads: Ann on {ann_at[0]}:{ann_at[1]}, Bob on {bob_at[0]}:{bob_at[1]}")
            conv = await ann.request(
                "conv.create", kind="group", members=[bob.welcome["user"]["id"]], title="media"
            )
            conv_id = conv["conv"]["id"] if isinstance(conv["conv"], dict) else conv["conv"]

            st, _, body = await raw(
                edge,
                "POST",
                "/api/v1/uploads?name=berries.png",
                image,
                {"Content-Type": "image/png", "Authorization": f"Bearer {world.tokens['ann']}"},
            )
            assert st == 201, (st, body[:500])
            att = json.loads(body)["attachment"]
            assert att["sha256"] == digest and att["size"] == len(image), att
            assert att.get("thumb"), att

            ack = await ann.request(
                "msg.send", conv=conv_id, cid="uploads-ann-1", attachment=att["id"], text="look"
            )
            ev = await bob.next_event(
                "msg", timeout=10, pred=lambda e: e.get("cid") == "uploads-ann-1"
            )
            assert ev["seq"] == ack["seq"] and ev["attachment"]["id"] == att["id"], ev

            st, links = await edge.http(
                "POST",
                "/api/v1/files/links",
                {"ids": [att["id"], att["thumb"]]},
                token=world.tokens["bob"],
            )
            assert st == 200, (st, links)
            st, hdrs, got = await raw(edge, "GET", links["links"][att["id"]])
            assert st == 200, (st, hdrs, got[:300])
            assert got == image, f"{len(got)} bytes, sha256 {hashlib.sha256(got).hexdigest()}"
            assert hdrs.get("content-type") == "image/png", hdrs
            st, hdrs, thumb = await raw(edge, "GET", links["links"][att["thumb"]])
            assert st == 200 and thumb.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")), hdrs
            await ann.close()
            await bob.close()
        finally:
            for c in spare:
                with contextlib.suppress(Exception):
                    await c.close()

    asyncio.run(scenario())
    # stored on the edge (whose Nginx sent it), on no other Pi
    assert stored_on(edge_host, digest)
    assert [h for h in pis if h != edge_host and stored_on(h, digest)] == []
