"""The work queue: de-duplication, dirty re-queue, backoff and delayed adds."""

from __future__ import annotations

import asyncio

import pytest

from ccm.workqueue import ShutDown, WorkQueue


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
