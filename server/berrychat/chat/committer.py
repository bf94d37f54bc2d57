"""Group commit: stream operations arriving within a few ms go to the database together.

The first operation of a batch waits up to `delay_ms` for company (less if a full batch of
`max_batch` is waiting), then the batch is applied in one transaction. Pipelined: as soon as a
batch's COMMIT returns, the next batch is taken and sent to the database, and only then is the
committed one acknowledged and fanned out, so the database thread (statements, fsync) works
while the event loop encodes acks and pushes. At most one transaction is in flight, and batches
are acknowledged and fanned out in commit order. Each op's callback runs after its batch's
commit (the sender's ack), before anything of that batch is fanned out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from ..store import Op, OpResult, Store, StoreError

log = logging.getLogger(__name__)

Callback = Callable[[OpResult | None], None]  # None: the database failed (retryable)
Batch = list[tuple[Op, Callback]]


class Committer:
    def __init__(
        self,
        store: Store,
        limits: dict[str, int],
        after_commit: Callable[[Sequence[Op], Sequence[OpResult]], Awaitable[None]],
        *,
        delay_ms: float = 2.0,
        max_batch: int = 256,
    ) -> None:
        self.store = store
        self.limits = limits
        self.after_commit = after_commit
        self.delay = delay_ms / 1000.0
        self.max_batch = max_batch
        self._pending: Batch = []
        self._first_at = 0.0  # time.monotonic() when the oldest pending op arrived
        self._full: asyncio.Future[None] | None = None  # set when max_batch ops are pending
        self._task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = 0
        self.ops = 0
        # called with send-to-commit seconds of every op that carries its arrival time
        self.observe: Callable[[float], None] | None = None

    def submit(self, op: Op, cb: Callback) -> None:
        if not self._pending:
            self._first_at = time.monotonic()
        self._pending.append((op, cb))
        self._idle.clear()
        if len(self._pending) >= self.max_batch and self._full is not None:
            _wake(self._full)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit_wait(self, op: Op) -> OpResult | None:
        fut: asyncio.Future[OpResult | None] = asyncio.get_running_loop().create_future()

        def done(res: OpResult | None) -> None:
            if not fut.done():
                fut.set_result(res)

        self.submit(op, done)
        return await fut

    async def _take(self) -> Batch:
        """The next batch, once its oldest op has waited `delay` or a full batch is pending."""
        wait = self._first_at + self.delay - time.monotonic()
        if wait > 0 and len(self._pending) < self.max_batch:
            loop = asyncio.get_running_loop()
            self._full = fut = loop.create_future()
            timer = loop.call_later(wait, _wake, fut)
            try:
                await fut
            finally:
                timer.cancel()
                self._full = None
        batch = self._pending[: self.max_batch]
        del self._pending[: self.max_batch]
        self._first_at = 0.0  # what is left over has waited long enough already
        return batch

    async def _commit(self) -> tuple[Batch, list[OpResult] | None]:
        batch = await self._take()
        try:
            return batch, await self.store.apply_ops([b[0] for b in batch], self.limits)
        except StoreError as e:
            log.warning("group commit of %d ops failed: %s", len(batch), e)
        except Exception:
            log.exception("group commit crashed")
        return batch, None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        nxt: asyncio.Task | None = loop.create_task(self._commit())
        try:
            while nxt is not None:
                batch, results = await nxt
                # The next transaction runs while this batch is acknowledged and fanned out.
                nxt = loop.create_task(self._commit()) if self._pending else None
                if results is None:
                    for _, cb in batch:
                        _safe(cb, None)
                else:
                    await self._acknowledge(batch, results)
                if nxt is None and self._pending:
                    nxt = loop.create_task(self._commit())
        except BaseException:
            if nxt is not None:
                nxt.cancel()
            raise
        finally:
            self._task = None
            if self._pending:
                self._task = loop.create_task(self._run())
            else:
                self._idle.set()

    async def _acknowledge(self, batch: Batch, results: list[OpResult]) -> None:
        ops = [b[0] for b in batch]
        self.batches += 1
        self.ops += len(ops)
        if self.observe is not None:
            now = time.perf_counter()
            for op in ops:
                if op.t0:
                    self.observe(now - op.t0)
        for (_, cb), res in zip(batch, results, strict=True):
            _safe(cb, res)
        try:
            await self.after_commit(ops, results)
        except Exception:
            log.exception("fan-out after commit failed")

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed and acknowledged."""
        if self._pending and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        await self._idle.wait()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _safe(cb: Callback, res: OpResult | None) -> None:
    try:
        cb(res)
    except Exception:
        log.exception("commit callback failed")
