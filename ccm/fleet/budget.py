"""One CloudSigma request budget per region, shared fairly by the tenants of the fleet.

CloudSigma documents 10,000 GET/POST/PUT requests per minute (per account it says nothing finer), and every tenant
of one region reaches the same endpoint, so the fleet keeps to one budget per region: a token bucket refilled at
``per_minute / 60`` per second, holding at most one second's worth. When it is empty, requests wait — in one
queue per tenant, served round-robin: a tenant with a burst of 1,000 nodes waits behind itself, while a tenant
asking for one listing gets the next free token after at most one request of each other waiting tenant. (An
ordinary limiter such as aiolimiter serves waiters in arrival order, which lets one tenant's burst delay every
other tenant by its whole length.)

No task runs in the background: the first waiter arms one timer for the moment the next token is due, and each
grant re-arms it while somebody waits. A waiter that is cancelled simply leaves its queue.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FairBudget"]


@dataclass
class _Bucket:
    tokens: float
    updated: float
    queues: OrderedDict[str, deque[asyncio.Future[None]]] = field(default_factory=OrderedDict)
    timer: asyncio.TimerHandle | None = None


class FairBudget:
    """``await budget.acquire(region, tenant)`` before each request; True when it had to wait its turn."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] | None = None) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)  # one second's worth
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _bucket(self, region: str) -> _Bucket:
        bucket = self._buckets.get(region)
        if bucket is None:
            bucket = self._buckets[region] = _Bucket(tokens=self.capacity, updated=self._now())
        return bucket

    def _refill(self, bucket: _Bucket) -> None:
        now = self._now()
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now

    def waiting(self, region: str) -> dict[str, int]:
        """Requests waiting per tenant (diagnostics)."""
        bucket = self._buckets.get(region)
        if bucket is None:
            return {}
        return {tenant: sum(1 for f in queue if not f.done()) for tenant, queue in bucket.queues.items()}

    async def acquire(self, region: str, tenant: str) -> bool:
        bucket = self._bucket(region)
        self._refill(bucket)
        if not bucket.queues and bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        bucket.queues.setdefault(tenant, deque()).append(future)
        self._arm(region, bucket)
        await future  # cancelled: the future is cancelled too and skipped when its turn comes
        return True

    def _arm(self, region: str, bucket: _Bucket) -> None:
        if bucket.timer is not None:
            return
        delay = max(0.0, (1.0 - bucket.tokens) / self.rate)
        bucket.timer = asyncio.get_running_loop().call_later(delay, self._grant, region)

    def _grant(self, region: str) -> None:
        bucket = self._buckets[region]
        bucket.timer = None
        self._refill(bucket)
        while bucket.tokens >= 1.0 and bucket.queues:
            tenant, queue = bucket.queues.popitem(last=False)  # the tenant whose turn it is
            while queue and queue[0].done():
                queue.popleft()  # cancelled while waiting
            if not queue:
                continue
            queue.popleft().set_result(None)
            bucket.tokens -= 1.0
            while queue and queue[0].done():
                queue.popleft()
            if queue:
                bucket.queues[tenant] = queue  # back of the line
        if bucket.queues:
            self._arm(region, bucket)
