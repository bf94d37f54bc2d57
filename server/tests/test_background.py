"""spawn() keeps fire-and-forget tasks alive until they finish (berrychat/background.py).

A task waiting on a future that only its own frame references is a garbage cycle: the loop
holds tasks weakly, so gc.collect() destroys it mid-run. The control shows that this really
happens with a bare create_task (so the first test can fail); with spawn the task survives,
finishes, and is forgotten.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from berrychat import background


def _orphan_waiter(refs: list[weakref.ref[asyncio.Future[int]]], done: list[int]) -> Any:
    async def wait() -> None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        refs.append(weakref.ref(fut))  # weak: nothing outside this frame holds the future
        done.append(await fut)

    return wait()


async def _start_and_collect(start: Callable[[Any], object]) -> tuple[list, list[int]]:
    refs: list[weakref.ref[asyncio.Future[int]]] = []
    done: list[int] = []
    start(_orphan_waiter(refs, done))
    await asyncio.sleep(0)  # the task runs up to its await
    assert len(refs) == 1
    gc.collect()
    return refs, done


async def test_a_spawned_task_survives_garbage_collection_and_finishes() -> None:
    before = background.running()
    refs, done = await _start_and_collect(background.spawn)
    fut = refs[0]()
    assert fut is not None, "the spawned task (and the future it waits on) was collected"
    assert background.running() == before + 1
    fut.set_result(7)
    for _ in range(3):  # the task resumes, then its done callback runs
        await asyncio.sleep(0)
    assert done == [7]
    assert background.running() == before


async def test_control_a_bare_task_is_collected_mid_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    refs, done = await _start_and_collect(lambda c: asyncio.get_running_loop().create_task(c))
    assert refs[0]() is None, "expected the unreferenced task to be garbage-collected"
    assert done == []


async def test_a_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def boom() -> None:
        raise RuntimeError("no database")

    with caplog.at_level(logging.ERROR, logger="berrychat.background"):
        task = background.spawn(boom())
        with pytest.raises(RuntimeError):
            await task
        await asyncio.sleep(0)
    assert any("background task" in r.message and r.exc_info for r in caplog.records)
