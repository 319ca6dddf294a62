"""Supervisor and fence: the decisions, without the network (the real thing: tests/integration/test_fencing.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from ccm.fencing import Fence, Fenced
from ccm.supervisor import Supervisor, cancel_and_wait


async def _forever() -> None:
    await asyncio.Event().wait()


async def _raise_soon() -> None:
    await asyncio.sleep(0.01)
    raise RuntimeError("boom")


async def test_a_task_that_raises_is_reported_by_name() -> None:
    supervisor = Supervisor()
    supervisor.start("watcher", _raise_soon())
    supervisor.start("workers", _forever())
    ended = await asyncio.wait_for(supervisor.failure(), 1)
    assert ended.name == "watcher" and isinstance(ended.cause, RuntimeError)
    assert "watcher raised RuntimeError: boom" in str(ended)
    await supervisor.stop()


async def test_a_task_that_returns_is_a_failure_unless_it_may_finish() -> None:
    supervisor = Supervisor()
    supervisor.start("one-shot", asyncio.sleep(0), may_finish=True)
    supervisor.start("lifecycle", asyncio.sleep(0.02))
    ended = await asyncio.wait_for(supervisor.failure(), 1)
    assert ended.name == "lifecycle" and ended.cause is None
    await supervisor.stop()


async def test_a_nested_supervisor_names_the_innermost_task() -> None:
    async def inner() -> None:
        nested = Supervisor()
        nested.start("node-watcher", _raise_soon())
        try:
            raise await nested.failure()
        finally:
            await nested.stop()

    supervisor = Supervisor()
    supervisor.start("controllers", inner())
    ended = await asyncio.wait_for(supervisor.failure(), 1)
    assert ended.name == "node-watcher"
    await supervisor.stop()


async def test_nothing_is_a_failure_while_stopping() -> None:
    supervisor = Supervisor()
    supervisor.start("workers", _forever())
    supervisor.stopping = True
    await supervisor.stop()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(supervisor.failure(), 0.05)


async def test_the_fence_closes_itself_at_the_end_of_the_grant() -> None:
    fence = Fence("t")
    with pytest.raises(Fenced, match="not sent"):
        fence.check("PATCH", "/api/v1/nodes/n")
    fence.grant(time.monotonic() + 0.05)
    fence.check("PATCH", "/api/v1/nodes/n")

    async def write() -> None:
        async with fence.writing("PATCH", "/api/v1/nodes/n"):
            await asyncio.sleep(10)  # a request the API server does not answer

    started = time.monotonic()
    with pytest.raises(Fenced, match="cancelled in flight"):
        await asyncio.wait_for(write(), 1)
    assert time.monotonic() - started < 0.2
    assert not fence.is_open and fence.cancelled == 1


async def test_a_completed_write_is_not_disturbed_and_errors_pass_through() -> None:
    fence = Fence("t")
    fence.grant(time.monotonic() + 10)
    async with fence.writing("POST", "/x"):
        await asyncio.sleep(0)
    with pytest.raises(ValueError, match="not a fence matter"):
        async with fence.writing("POST", "/x"):
            raise ValueError("not a fence matter")
    assert fence.in_flight == 0 and fence.is_open


async def test_cancel_and_wait_ends_every_task_and_swallows_what_they_raise() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def fails() -> None:
        raise RuntimeError("boom")

    async def cleans_up_slowly() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # still running when cancel() returns: cancel_and_wait must wait for it

    failed = asyncio.create_task(fails())
    await asyncio.sleep(0)
    running = [asyncio.create_task(forever()), asyncio.create_task(cleans_up_slowly())]
    await asyncio.sleep(0)
    await cancel_and_wait(*running, failed, None)
    assert all(task.done() for task in running) and all(task.cancelled() for task in running)
