"""The work queue: de-duplication, dirty re-queue, backoff and delayed adds."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from ccm.workqueue import Next, ShutDown, WorkQueue, run_worker


async def test_dedup_and_dirty_requeue() -> None:
    q = WorkQueue()
    q.add("a")
    q.add("a")
    assert len(q) == 1
    key = await q.get()
    q.add("a")  # while processing: marked dirty, not queued twice
    assert len(q) == 0
    q.done(key)
    assert len(q) == 1


async def test_backoff_grows_and_forget_resets() -> None:
    q = WorkQueue(base_delay=0.01, max_delay=1.0)
    d1 = q.add_rate_limited("a")
    d2 = q.add_rate_limited("a")
    d3 = q.add_rate_limited("a")
    assert d1 < d2 < d3
    q.forget("a")
    assert q.failures("a") == 0
    assert await asyncio.wait_for(q.get(), 1) == "a"


async def test_add_after_earliest_wins_and_shutdown() -> None:
    q = WorkQueue()
    q.add_after("a", 5)
    q.add_after("a", 0.01)
    assert await asyncio.wait_for(q.get(), 1) == "a"
    await q.shutdown()
    with pytest.raises(ShutDown):
        await q.get()


async def test_a_worker_queues_each_key_again_as_its_handler_says() -> None:
    """The one worker loop of the node controller and the CSR approver: retry with backoff, forget and resync
    later, drop — and a handler that raises is logged and retried, the worker going on with the next key."""
    q = WorkQueue(base_delay=30.0, max_delay=60.0)
    answers = {"retry": Next(retry=True), "resync": Next(after=30.0), "gone": Next(remove=True), "once": Next()}
    q.add_rate_limited("resync")  # a failure before: a success forgets it
    await asyncio.sleep(0)
    for key in ("retry", "resync", "gone", "once", "bug"):
        q.add(key)
    handled: list[str] = []
    done: list[str] = []

    async def handle(key: str) -> Next:
        handled.append(key)
        if key == "bug":
            raise ValueError("a bad object")
        return answers[key]

    with structlog.testing.capture_logs() as logs:
        worker = asyncio.create_task(run_worker(q, handle, crashed="thing_crashed", key_field="thing", index=3,
                                                done=done.append))
        while len(done) < 5:
            await asyncio.sleep(0.01)
        await q.shutdown()
        await asyncio.wait_for(worker, 1)  # a shut-down queue ends the worker
    assert handled == done == ["retry", "resync", "gone", "once", "bug"]
    assert q.failures("retry") == 1 and q.failures("bug") == 1, "retried with backoff"
    assert q.failures("resync") == 0 and q.failures("once") == 0, "forgotten after success"
    assert q.delayed == 3, "retry, bug (backoff) and resync (period) wait; gone and once do not"
    assert [(e["event"], e["thing"], e["worker"]) for e in logs if e["log_level"] == "error"] == [
        ("thing_crashed", "bug", 3)]
