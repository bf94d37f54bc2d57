"""Group commit: stream operations arriving within a few ms go to the database together.

One batch is in flight at a time; operations that arrive meanwhile form the next batch, so
under load batches grow by themselves. Each op's callback runs right after the commit (the
sender's ack), before anything is fanned out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from ..store import Op, OpResult, Store, StoreError

log = logging.getLogger(__name__)

Callback = Callable[[OpResult | None], None]  # None: the database failed (retryable)


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
        self._pending: list[tuple[Op, Callback]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = 0
        self.ops = 0
        # called with send-to-commit seconds of every op that carries its arrival time
        self.observe: Callable[[float], None] | None = None

    def submit(self, op: Op, cb: Callback) -> None:
        self._pending.append((op, cb))
        self._idle.clear()
        if self._task is not None:
            return  # the running batch picks these up when it finishes
        if len(self._pending) >= self.max_batch or self.delay <= 0:
            self._start()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._start)

    async def submit_wait(self, op: Op) -> OpResult | None:
        fut: asyncio.Future[OpResult | None] = asyncio.get_running_loop().create_future()

        def done(res: OpResult | None) -> None:
            if not fut.done():
                fut.set_result(res)

        self.submit(op, done)
        return await fut

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None and self._pending:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                ops = [b[0] for b in batch]
                try:
                    results = await self.store.apply_ops(ops, self.limits)
                except StoreError as e:
                    log.warning("group commit of %d ops failed: %s", len(ops), e)
                    for _, cb in batch:
                        _safe(cb, None)
                    continue
                except Exception:
                    log.exception("group commit crashed")
                    for _, cb in batch:
                        _safe(cb, None)
                    continue
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
        finally:
            self._task = None
            if self._pending:
                self._start()
            else:
                self._idle.set()

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed and acknowledged."""
        if self._pending and self._task is None:
            self._start()
        await self._idle.wait()


def _safe(cb: Callback, res: OpResult | None) -> None:
    try:
        cb(res)
    except Exception:
        log.exception("commit callback failed")
