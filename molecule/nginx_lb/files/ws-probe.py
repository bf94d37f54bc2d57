#!/usr/bin/env python3
"""WebSocket probe for the nginx_lb scenario (test fixture only): opens a WebSocket through
nginx over TLS (certificate not checked: the role's self-signed fallback), prints the status
line of the handshake and the first message the upstream sends back.
Usage: ws-probe HOST PORT PATH MESSAGE
"""

import base64
import os
import socket
import ssl
import sys

host, port, path, message = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
with (
    socket.create_connection((host, port), timeout=10) as raw,
    ctx.wrap_socket(raw, server_hostname=host) as s,
):
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    f = s.makefile("rb")
    status = f.readline().decode().strip()
    while f.readline() not in (b"\r\n", b""):
        pass
    print(status)
    mask = os.urandom(4)
    s.sendall(
        bytes([0x81, 0x80 | len(message)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(message))
    )
    head = f.read(2)
    print(f.read(head[1] & 0x7F).decode())
