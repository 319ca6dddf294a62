"""A de-duplicating work queue keyed by node name, with per-item exponential backoff (client-go semantics).

- A key is queued at most once; a key re-added while a worker processes it runs again after ``done``.
- ``add_rate_limited`` delays by ``base * 2**failures`` (capped) with jitter; ``forget`` resets the count.
- ``add_after`` schedules (periodic resync); an earlier schedule wins over a later one.

:func:`run_worker` is the loop every controller's workers run (get → handle → retry/forget → done).
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)


class ShutDown(Exception):
    """The queue was shut down: workers stop."""


class WorkQueue:
    def __init__(self, *, base_delay: float = 0.05, max_delay: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._delayed: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._seq = 0
        self._base = base_delay
        self._max = max_delay
        self._clock = clock
        # Set whenever a key is queued or the queue shuts down; add() is synchronous (watch handlers call it),
        # so waking workers must not need a lock or a task per key.
        self._ready = asyncio.Event()
        self._shutdown = False
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def delayed(self) -> int:
        return len(self._due)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    def add(self, key: str) -> None:
        if self._shutdown:
            return
        self._due.pop(key, None)
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.append(key)
        self._ready.set()

    def add_after(self, key: str, delay: float) -> None:
        if self._shutdown:
            return
        if delay <= 0:
            self.add(key)
            return
        due = self._clock() + delay
        current = self._due.get(key)
        if current is not None and current <= due:
            return
        self._due[key] = due
        self._seq += 1
        heapq.heappush(self._delayed, (due, self._seq, key))
        self._arm()

    def add_rate_limited(self, key: str) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self._base * float(2 ** min(failures, 62)), self._max)
        delay *= 0.8 + 0.4 * random.random()
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def remove(self, key: str) -> None:
        """Drop a key entirely (the node was deleted)."""
        self._failures.pop(key, None)
        self._due.pop(key, None)
        self._dirty.discard(key)

    def _arm(self) -> None:
        if not self._delayed:
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        wait = max(0.0, self._delayed[0][0] - self._clock())
        self._timer = loop.call_later(wait, self._promote)

    def _promote(self) -> None:
        self._timer = None
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) == due:
                del self._due[key]
                self.add(key)
        self._arm()

    async def get(self) -> str:
        while True:
            if self._shutdown:
                raise ShutDown  # even with keys waiting: shutting down means taking no new work
            if self._queue:
                key = self._queue.popleft()
                self._queued.discard(key)
                self._processing.add(key)
                return key
            self._ready.clear()
            await self._ready.wait()

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    async def shutdown(self) -> None:
        self._shutdown = True
        if self._timer is not None:
            self._timer.cancel()
        self._ready.set()


@dataclass(frozen=True)
class Next:
    """What a worker does with a key once it has been handled (see :func:`run_worker`)."""

    #: Again after the key's backoff (``add_rate_limited``).
    retry: bool = False
    #: Forget the key entirely (its object is gone).
    remove: bool = False
    #: Otherwise: forget its failures, and queue it again after this many seconds (periodic resync), if set.
    after: float | None = None


async def run_worker(queue: WorkQueue, handle: Callable[[str], Awaitable[Next]], *, crashed: str, key_field: str,
                     index: int = 0, done: Callable[[str], None] | None = None) -> None:
    """One worker: take a key, ``handle`` it, queue it again as the answer says, until the queue shuts down.

    A handler that raises (a bug, bad data) is logged as ``crashed`` and its key retried with backoff: one bad
    object never stops a worker. ``done(key)`` runs after every key, whatever happened."""
    while True:
        try:
            key = await queue.get()
        except ShutDown:
            return
        try:
            step = await handle(key)
            if step.remove:
                queue.remove(key)
            elif step.retry:
                queue.add_rate_limited(key)
            else:
                queue.forget(key)
                if step.after is not None:
                    queue.add_after(key, step.after)
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad object must never stop a worker
            log.exception(crashed, worker=index, **{key_field: key})
            queue.add_rate_limited(key)
        finally:
            queue.done(key)
            if done is not None:
                done(key)
