#!/usr/bin/env python3
"""Stand-in for a BerryChat instance until the berrychat role lands (test fixture only).

Speaks just enough HTTP/1.1 (keep-alive) and WebSocket for the nginx_lb scenario:
  GET /api/v1/files/<name>  -> empty 200 with "X-Accel-Redirect: /_protected/uploads/<name>"
                               (with ?whoami in the query: the JSON answer below instead)
  /ws (Upgrade)         -> 101, then echoes one text frame and closes
  anything else         -> 200 JSON: instance port, host name, path, forwarded headers
Usage: berrychat-standin PORT
"""

import asyncio
import base64
import hashlib
import json
import socket
import sys

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PORT = int(sys.argv[1])


async def read_frame(reader):
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = await reader.readexactly(length)
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    assert len(payload) < 126
    return bytes([0x80 | opcode, len(payload)]) + payload


async def handle(reader, writer):
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                return
            method, path, _ = request_line.decode().split(" ", 2)
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if headers.get("upgrade", "").lower() == "websocket":
                accept = base64.b64encode(
                    hashlib.sha1((headers["sec-websocket-key"] + WS_GUID).encode()).digest()
                ).decode()
                writer.write(
                    "HTTP/1.1 101 Switching Protocols\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
                )
                message = await read_frame(reader)
                writer.write(frame(b"echo from %d: " % PORT + message))
                writer.write(frame(b"", 0x8))
                await writer.drain()
                return
            extra = ""
            if method == "GET" and path.startswith("/api/v1/files/") and "whoami" not in path:
                extra = "X-Accel-Redirect: /_protected/uploads/" + path.rsplit("/", 1)[1] + "\r\n"
                payload = b""
            else:
                payload = json.dumps(
                    {
                        "instance": PORT,
                        "host": socket.gethostname(),
                        "method": method,
                        "path": path,
                        "body_bytes": len(body),
                        "forwarded_proto": headers.get("x-forwarded-proto"),
                        "real_ip": headers.get("x-real-ip"),
                    }
                ).encode()
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
                f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", PORT)
    async with server:
        await server.serve_forever()


asyncio.run(main())
