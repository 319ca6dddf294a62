"""The per-region CloudSigma request budget: a token bucket at the documented rate, shared fairly by tenants."""

from __future__ import annotations

import asyncio
import time

import pytest

from ccm.fleet.budget import FairBudget


async def test_a_tenants_burst_does_not_delay_another_tenants_request() -> None:
    budget = FairBudget(6000)  # 100 per second, one second's worth (100) in the bucket
    order: list[str] = []

    async def request(tenant: str) -> None:
        await budget.acquire("zrh", tenant)
        order.append(tenant)

    burst = [asyncio.create_task(request("big")) for _ in range(300)]
    await asyncio.sleep(0.05)  # the bucket is empty, 200+ of big's requests wait
    served_before = len(order)
    started = time.monotonic()
    await request("small")
    waited = time.monotonic() - started
    await asyncio.gather(*burst)
    # Served round-robin: small's request is the next or the one after (not behind big's ~200 waiting requests).
    position = order.index("small")
    assert position <= served_before + 2, (position, served_before)
    assert waited < 0.1, waited


async def test_the_rate_holds_over_time_and_regions_are_separate() -> None:
    budget = FairBudget(600)  # 10 per second, 10 in the bucket
    started = time.monotonic()
    waits = await asyncio.gather(*(budget.acquire("zrh", f"t{i % 3}") for i in range(25)))
    elapsed = time.monotonic() - started
    assert waits.count(False) == 10  # the bucket's content, at once
    assert 1.3 < elapsed < 2.5, elapsed  # the other 15 at 10 per second
    started = time.monotonic()
    assert await budget.acquire("fra", "t0") is False  # another region: its own bucket
    assert time.monotonic() - started < 0.05


async def test_a_cancelled_waiter_leaves_its_turn_to_the_others() -> None:
    budget = FairBudget(60)  # 1 per second
    assert await budget.acquire("zrh", "a") is False
    gone = asyncio.create_task(budget.acquire("zrh", "a"))
    await asyncio.sleep(0.01)
    gone.cancel()
    started = time.monotonic()
    assert await budget.acquire("zrh", "b") is True
    assert time.monotonic() - started < 1.2
    assert budget.waiting("zrh") == {}


def test_a_budget_needs_a_rate() -> None:
    with pytest.raises(ValueError, match="per_minute must be positive"):
        FairBudget(0)
