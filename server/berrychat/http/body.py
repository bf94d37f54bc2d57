"""A streamed request body on the asyncio side: the connection pushes pieces as they arrive, the
handler reads them. Bounded: above `high` buffered bytes the connection stops reading the socket
(TCP backpressure reaches the client) until the handler has consumed down to `low`."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from ..protocol.http11 import HttpError

HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024


class BodyReader:
    __slots__ = (
        "_parts",
        "_buffered",
        "_eof",
        "_lost",
        "_waiter",
        "_pause",
        "_resume",
        "_continue",
        "_paused",
        "received",
        "length",
        "_discard",
    )

    def __init__(
        self,
        length: int,
        pause: Callable[[], None],
        resume: Callable[[], None],
        send_continue: Callable[[], None] | None = None,
    ) -> None:
        self.length = length
        self.received = 0
        self._parts: deque[bytes] = deque()
        self._buffered = 0
        self._eof = length == 0
        self._lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._pause = pause
        self._resume = resume
        self._continue = send_continue
        self._paused = False
        self._discard: Callable[[], None] | None = None

    # ---- the connection's side -----------------------------------------------------------
    def push(self, data: bytes, end: bool) -> None:
        if self._discard is not None:  # answered already: drop the rest, then close
            self.received += len(data)
            if end:
                self._eof = True
                cb, self._discard = self._discard, None
                cb()
            return
        if data:
            self._parts.append(data)
            self._buffered += len(data)
            self.received += len(data)
        if end:
            self._eof = True
        if self._buffered > HIGH_WATER and not self._paused and not self._eof:
            self._paused = True
            self._pause()
        self._wake()

    def connection_lost(self) -> None:
        self._lost = True
        self._wake()

    def discard(self, on_end: Callable[[], None]) -> None:
        """The handler answered before the body ended: drop what is left of it as it arrives
        and call `on_end` at its end (so the client reads the answer instead of a reset)."""
        self._parts.clear()
        self._buffered = 0
        if self._eof:
            on_end()
            return
        self._discard = on_end
        if self._paused:
            self._paused = False
            self._resume()

    @property
    def complete(self) -> bool:
        """Every byte of the body arrived (so the connection can serve the next request)."""
        return self._eof

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ---- the handler's side --------------------------------------------------------------
    async def read(self, timeout: float) -> bytes:
        """The next piece of the body; b"" at its end. Raises HttpError(408) when nothing
        arrives for `timeout` seconds and HttpError(400) when the client went away."""
        if self._continue is not None:  # the client waits for "100 Continue" before sending
            cont, self._continue = self._continue, None
            if not self._eof:
                cont()
        while not self._parts:
            if self._eof:
                return b""
            if self._lost:
                raise HttpError(400, "the client closed the connection before the body ended")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError:
                raise HttpError(408, f"no body bytes received for {timeout:g} s")
            finally:
                self._waiter = None
        data = self._parts.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered <= LOW_WATER:
            self._paused = False
            self._resume()
        return data
