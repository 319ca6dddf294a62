"""The shared server snapshot: max age, single-flight refresh, no caching of failures, Retry-After windows and
recovery (the prober finds it and tells the listeners)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ccm.servercache import ServerCache
from cloudsigma.client import ServerList
from cloudsigma.errors import RateLimited, ServerError
from tests.unit.factories import server


class FakeClient:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.retry_after: float | None = None

    async def list_servers(self, **_: Any) -> ServerList:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.retry_after is not None:
            raise RateLimited("rate limited", retry_after=self.retry_after, status=429)
        if self.fail:
            raise ServerError("boom", status=503)
        return ServerList(servers=(server(),), total_count=1, request_ids=("r",), fetched_at=0.0)


async def test_coalesced_refresh_and_max_age() -> None:
    now = [100.0]
    client = FakeClient()
    cache = ServerCache(client, max_age=10, clock=lambda: now[0], probe_interval=None)  # type: ignore[arg-type]
    snaps = await asyncio.gather(*(cache.get() for _ in range(500)))
    assert client.calls == 1 and all(s is snaps[0] for s in snaps)
    now[0] += 5
    await cache.get()
    assert client.calls == 1
    now[0] += 6  # stale: served at once while one refresh runs in the background
    stale = await cache.get()
    assert stale is snaps[0]
    await asyncio.sleep(0.05)
    assert client.calls == 2
    now[0] += 31  # too old even for hits: blocks on a fresh listing
    assert await cache.get() is not stale
    assert client.calls == 3
    # a burst of misses that all saw the same snapshot → one refresh
    seen = cache.current
    assert seen is not None
    await asyncio.gather(*(cache.refresh(newer_than=seen.fetched_at) for _ in range(100)))
    assert client.calls == 4


async def test_failures_are_not_cached() -> None:
    client = FakeClient()
    client.fail = True
    cache = ServerCache(client, probe_interval=None)  # type: ignore[arg-type]
    with pytest.raises(ServerError):
        await cache.get()
    client.fail = False
    assert (await cache.get()).servers


async def test_a_long_retry_after_closes_the_cache_until_then() -> None:
    now = [100.0]
    client = FakeClient()
    client.retry_after = 40.0  # longer than the client waits inside a call: it gave up at once
    cache = ServerCache(client, clock=lambda: now[0], probe_interval=None)  # type: ignore[arg-type]
    with pytest.raises(RateLimited):
        await cache.get()
    client.retry_after = None
    for _ in range(5):  # callers retrying on their own backoff: no listing inside the window
        now[0] += 5
        with pytest.raises(RateLimited) as closed:
            await cache.refresh()
    assert client.calls == 1
    assert closed.value.retry_after == pytest.approx(15.0)
    assert "Retry-After" in closed.value.message  # the same words every time (no seconds left in it)
    now[0] += 16
    assert (await cache.get()).servers and client.calls == 2


async def test_recovery_is_reported_once_and_found_by_the_prober() -> None:
    client = FakeClient()
    client.fail = True
    told: list[float] = []
    cache = ServerCache(client, probe_interval=0.05, max_probe_interval=0.1)  # type: ignore[arg-type]
    cache.add_recovery_listener(lambda: told.append(1.0))
    try:
        with pytest.raises(ServerError):
            await cache.get()
        assert cache.failing and not told
        client.fail = False
        for _ in range(50):  # nobody asks the cache: its prober notices the recovery by itself
            await asyncio.sleep(0.02)
            if told:
                break
        assert told == [1.0] and not cache.failing
        await cache.refresh()
        assert told == [1.0]  # healthy refreshes are no recovery
    finally:
        await cache.close()
