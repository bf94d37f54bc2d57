"""Production mode end to end: Debian's nginx on loopback in front of a real server with
`uploads.accel_prefix`, configured like the nginx_lb role (an unbuffered upload location and an
`internal` alias location). The upload streams through nginx; authorised downloads are answered
by BerryChat with X-Accel-Redirect and the bytes come from nginx, with BerryChat's headers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import World, make_settings, start_world
from test_attachments import http, pair, png_bytes, upload

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
PREFIX = "/_protected/uploads/"


class Nginx:
    def __init__(self, root: Path, upstream: int, uploads: Path, port: int) -> None:
        self.dir = root
        self.port = port
        self.conf = root / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf.write_text(f"""{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    client_max_body_size 1m;
    upstream berrychat {{ server 127.0.0.1:{upstream}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        location /api/ {{
            proxy_pass http://berrychat;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location = /api/v1/uploads {{
            client_max_body_size 20m;
            proxy_request_buffering off;
            proxy_pass http://berrychat;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location ^~ {PREFIX} {{
            internal;
            alias {uploads}/;
            default_type application/octet-stream;
            add_header X-Content-Type-Options "nosniff" always;
            add_header Content-Security-Policy "sandbox; default-src 'none'" always;
        }}
    }}
}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert NGINX
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(self.conf), "-p", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        log = (self.dir / "error.log").read_text(errors="replace")[-800:]
        raise RuntimeError(f"nginx did not start: {log}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def nginx_root(tmp_path: Path) -> Iterator[Path]:
    if not NGINX:
        pytest.skip("nginx not installed (Debian package nginx)")
    d = tmp_path / "nginx"
    d.mkdir()
    yield d


async def test_downloads_through_nginx_x_accel_redirect(sqlite_db, tmp_path, nginx_root):
    uploads = tmp_path / "up"
    w = await start_world(
        make_settings(sqlite_db, uploads={"dir": str(uploads), "accel_prefix": PREFIX})
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ngx = Nginx(nginx_root, w.port, uploads, port)
    try:
        ngx.start()
        front = World(w.server)  # the same users and server, reached through nginx
        front.port = port
        ta, tb, ca, cb, conv = await pair(w)
        data = png_bytes((1200, 900))
        assert len(data) > 1000
        # a 3 MB file passes the upload location although other API bodies are capped at 1 MB
        big = b"PK\x03\x04" + os.urandom(3 << 20)
        st, r = await upload(front, ta, big, "application/zip", "big.zip")
        assert st == 201, r
        zip_id = r["attachment"]["id"]
        st, r = await upload(front, ta, data, "image/png", "photo.png")
        assert st == 201, r
        att = r["attachment"]
        await ca.request("msg.send", conv=conv, cid="n1", attachment=att["id"])
        await ca.request("msg.send", conv=conv, cid="n2", attachment=zip_id)
        # the member downloads through nginx: bytes from nginx, headers from BerryChat
        st, h, got = await http(front, "GET", f"/api/v1/files/{att['id']}", token=tb)
        assert st == 200 and got == data
        assert h["content-type"] == "image/png"
        assert h["content-disposition"].startswith('inline; filename="photo.png"')
        assert "sandbox" in h["content-security-policy"] and h["x-content-type-options"]
        assert "x-accel-redirect" not in h
        st, h, got = await http(front, "GET", f"/api/v1/files/{zip_id}", token=tb)
        assert st == 200 and got == big and h["content-disposition"].startswith("attachment")
        # ranges are served by nginx too, here through a signed link (as <audio> seeks)
        st, _, links = await http(
            front,
            "POST",
            "/api/v1/files/links",
            json.dumps({"ids": [att["id"]]}).encode(),
            {"Content-Type": "application/json"},
            tb,
        )
        assert st == 200, links
        link = json.loads(links)["links"][att["id"]]
        st, h, part = await http(front, "GET", link, headers={"Range": "bytes=0-9"})
        assert st == 206 and part == data[:10]
        # refusals come from BerryChat; the internal location is not reachable from outside
        _, tc, _ = await w.user("cid")
        assert (await http(front, "GET", f"/api/v1/files/{att['id']}", token=tc))[0] == 404
        assert (await http(front, "GET", f"/api/v1/files/{att['id']}"))[0] == 401
        sha = att["sha256"]
        st, _, body = await http(front, "GET", f"{PREFIX}{sha[:2]}/{sha[2:4]}/{sha}")
        assert st == 404 and body != data
    finally:
        ngx.stop()
        await w.close()
        await w.server.stop(drain_seconds=0.5)
