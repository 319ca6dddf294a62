"""The shared server snapshot: max age, single-flight refresh, no caching of failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ccm.servercache import ServerCache
from cloudsigma.client import ServerList
from cloudsigma.errors import ServerError
from tests.unit.factories import server


class FakeClient:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def list_servers(self, **_: Any) -> ServerList:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise ServerError("boom", status=503)
        return ServerList(servers=(server(),), total_count=1, request_ids=("r",), fetched_at=0.0)


async def test_coalesced_refresh_and_max_age() -> None:
    now = [100.0]
    client = FakeClient()
    cache = ServerCache(client, max_age=10, clock=lambda: now[0])  # type: ignore[arg-type]
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
    cache = ServerCache(client)  # type: ignore[arg-type]
    with pytest.raises(ServerError):
        await cache.get()
    client.fail = False
    assert (await cache.get()).servers
