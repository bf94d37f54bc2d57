"""A small OpenAI-compatible chat-completions server for tests (loopback only).

It speaks the same API as llama.cpp's and Ollama's servers: `POST /v1/chat/completions`,
with `"stream": true` answered as server-sent events (`data: {json}` lines, then
`data: [DONE]`) in chunked transfer coding. `mode` picks a behaviour: "stream" (the normal
case), "slow" (no answer for `slow_seconds`), "error" (HTTP 500 with an OpenAI error body),
"drop" (two tokens, then the connection is cut mid-stream), "json" (one JSON body, as a server
that ignores `stream` would send), "eof" / "eof_drop" (no chunking, the body ends when the
connection closes: after `[DONE]`, or before it). Every request is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any


class FakeModel:
    def __init__(self, tokens: list[str] | None = None, *, delay: float = 0.05) -> None:
        self.tokens = tokens or ["Hello", " there", ",", " Ann", "!"]
        self.delay = delay
        self.mode = "stream"
        self.slow_seconds = 10.0
        self.requests: list[dict[str, Any]] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._conns: set[asyncio.StreamWriter] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeModel:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for w in list(self._conns):
            w.close()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._conns.add(w)
        try:
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                if k:
                    headers[k.strip().lower()] = v.strip()
            body = await r.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(
                {"method": method, "path": path, "headers": headers, "json": json.loads(body)}
            )
            if self.mode == "slow":
                await asyncio.sleep(self.slow_seconds)
                return
            if self.mode == "error":
                err = json.dumps({"error": {"message": "model not loaded", "code": 500}})
                w.write(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(err)}\r\n\r\n{err}".encode()
                )
                await w.drain()
                return
            if self.mode == "json":
                ans = json.dumps(
                    {
                        "choices": [
                            {"message": {"role": "assistant", "content": "".join(self.tokens)}}
                        ]
                    }
                )
                w.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(ans)}\r\n\r\n{ans}".encode()
                )
                await w.drain()
                return
            if self.mode.startswith("eof"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
                tokens = self.tokens[:2] if self.mode == "eof_drop" else self.tokens
                for tok in tokens:
                    ev = {"choices": [{"index": 0, "delta": {"content": tok}}]}
                    w.write(f"data: {json.dumps(ev)}\n\n".encode())
                    await w.drain()
                if self.mode == "eof":
                    w.write(b"data: [DONE]\n\n")
                await w.drain()
                return
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
            )
            tokens = self.tokens[:2] if self.mode == "drop" else self.tokens
            for tok in tokens:
                ev = {"choices": [{"index": 0, "delta": {"content": tok}}]}
                self._chunk(w, f"data: {json.dumps(ev)}\n\n".encode())
                await w.drain()
                await asyncio.sleep(self.delay)
            if self.mode == "drop":
                w.transport.abort()
                return
            self._chunk(w, b"data: [DONE]\n\n")
            w.write(b"0\r\n\r\n")
            await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._conns.discard(w)
            w.close()

    @staticmethod
    def _chunk(w: asyncio.StreamWriter, data: bytes) -> None:
        w.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
