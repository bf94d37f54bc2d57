"""Fire-and-forget tasks that cannot vanish mid-run.

The event loop keeps only weak references to tasks. A task that nothing else references (a
WebSocket hello, a request handler, a presence update) and that waits on something referenced
only by itself, such as a database connection still being opened, can be garbage-collected
before it finishes: "Task was destroyed but it is pending", and the client's request is never
answered. This was seen with MariaDB under load (a hello never answered, the pool one
connection short). `spawn` keeps a strong reference until the task is done and logs a
failure that nobody else would have retrieved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run `coro` as a task of the running loop, held until it is done."""
    task = asyncio.get_running_loop().create_task(coro)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def running() -> int:
    """How many spawned tasks are not done yet."""
    return len(_running)


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task %s failed", task.get_coro(), exc_info=exc)
