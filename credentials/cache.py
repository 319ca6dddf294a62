"""Token cache: bounded, refresh-ahead, single-flight, with per-key failure backoff.

One entry per :class:`CacheKey` ``(lower-cased email, region, provider)``. For each key:

* a valid token is served from memory (``hit``);
* when less than ``min(refresh_margin, refresh_fraction * lifetime)`` is left the current token is still
  served, and one background acquisition replaces it (``refresh``) — so a 5-minute token is refreshed
  75 s before it expires, a 1-hour token 120 s before;
* when there is no usable token, the first caller starts one acquisition (``miss``) and every concurrent
  caller awaits that same task (``coalesced``): one request to the identity provider, however many callers;
* a failure is never stored as a result. It puts the key in exponential backoff with jitter
  (``backoff_initial`` doubling to ``backoff_max``); during the backoff callers without a valid token get
  the last error at once (``backoff``) instead of hammering the identity provider. A success clears it.

Events go to the optional ``on_event(event, provider)`` hook: ``hit``, ``miss``, ``refresh``,
``coalesced``, ``expired``, ``backoff``, ``error``, ``stored``, ``invalidated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, Protocol, runtime_checkable

from cachetools import LRUCache

from credentials.base import Credential

EventHook = Callable[[str, str], None]
Acquire = Callable[[], Awaitable[Credential]]

__all__ = ["Acquire", "CacheAware", "CacheKey", "EventHook", "TokenCache"]


class CacheKey(NamedTuple):
    email: str
    region: str
    provider: str

    @classmethod
    def of(cls, email: str | None, region: str, provider: str) -> CacheKey:
        return cls((email or "").strip().lower(), region, provider)


@runtime_checkable
class CacheAware(Protocol):
    """A provider that caches intermediate tokens (service-account token, RPT) in the chain's cache."""

    def attach_cache(self, cache: TokenCache) -> None: ...


@dataclass
class _Entry:
    credential: Credential
    stored_at: float


@dataclass
class _Backoff:
    failures: int
    until: float
    error: BaseException


class TokenCache:
    def __init__(
        self,
        *,
        maxsize: int = 1024,
        refresh_margin: float = 120.0,
        refresh_fraction: float = 0.25,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        backoff_jitter: float = 0.5,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        on_event: EventHook | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if not 0 <= refresh_fraction < 1:
            raise ValueError("refresh_fraction must be in [0, 1)")
        if not 0 <= backoff_jitter <= 1:
            raise ValueError("backoff_jitter must be in [0, 1]")
        self.maxsize = maxsize
        self.refresh_margin = max(0.0, refresh_margin)
        self.refresh_fraction = refresh_fraction
        self.backoff_initial = max(0.0, backoff_initial)
        self.backoff_max = max(self.backoff_initial, backoff_max)
        self.backoff_jitter = backoff_jitter
        self.on_event = on_event
        self._clock = clock
        self._rng = rng
        self._entries: LRUCache[CacheKey, _Entry] = LRUCache(maxsize)
        self._backoff: LRUCache[CacheKey, _Backoff] = LRUCache(maxsize)
        self._inflight: dict[CacheKey, asyncio.Task[Credential]] = {}

    # -- reading ---------------------------------------------------------------------------------------

    async def get(self, key: CacheKey, acquire: Acquire) -> Credential:
        """A valid credential for ``key``, calling ``acquire`` at most once however many callers wait."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None:
            left = entry.credential.seconds_left(now)
            if left is None or left > self._refresh_threshold(entry):
                self._emit("hit", key)
                return entry.credential
            if left > 0:
                # Refresh ahead: serve the still-valid token, replace it in the background.
                if key not in self._inflight and self._backoff_left(key, now) is None:
                    self._emit("refresh", key)
                    self._start(key, acquire)
                else:
                    self._emit("hit", key)
                return entry.credential
            self._entries.pop(key, None)
            self._emit("expired", key)
        task = self._inflight.get(key)
        if task is not None:
            self._emit("coalesced", key)
            return await asyncio.shield(task)
        if self._backoff_left(key, now) is not None:
            self._emit("backoff", key)
            raise self._backoff[key].error.with_traceback(None)
        self._emit("miss", key)
        return await asyncio.shield(self._start(key, acquire))

    def peek(self, key: CacheKey) -> Credential | None:
        """The stored credential (valid or not), without touching the counters."""
        entry = self._entries.get(key)
        return entry.credential if entry is not None else None

    def backoff_remaining(self, key: CacheKey) -> float | None:
        """Seconds until ``key`` may try to acquire again, or ``None`` when it is not backing off."""
        return self._backoff_left(key, self._clock())

    def last_error(self, key: CacheKey) -> BaseException | None:
        """The error of ``key``'s last acquisition when it failed (cleared by a success)."""
        state = self._backoff.get(key)
        return state.error if state is not None else None

    def failures(self, key: CacheKey) -> int:
        state = self._backoff.get(key)
        return state.failures if state is not None else 0

    def in_flight(self, key: CacheKey) -> bool:
        return key in self._inflight

    def refresh_at(self, key: CacheKey) -> float | None:
        """When (clock seconds) the stored token of ``key`` enters its refresh window, so a caller asking then gets
        it replaced; ``None`` when nothing expiring is stored."""
        entry = self._entries.get(key)
        if entry is None or entry.credential.expires_at is None:
            return None
        return entry.credential.expires_at - self._refresh_threshold(entry)

    async def settle(self, key: CacheKey) -> None:
        """Wait until the acquisition in flight for ``key`` (a background refresh) has finished, however it ended."""
        task = self._inflight.get(key)
        if task is not None:
            await asyncio.wait({task})

    def __len__(self) -> int:
        return len(self._entries)

    def snapshot(self) -> list[dict[str, Any]]:
        """What is cached, for diagnostics. Never includes the token."""
        now = self._clock()
        out: list[dict[str, Any]] = []
        for key, entry in list(self._entries.items()):
            left = entry.credential.seconds_left(now)
            out.append({
                "email": key.email, "region": key.region, "provider": key.provider,
                "expires_in": None if left is None else round(left, 1),
                "impersonated": entry.credential.impersonated,
            })
        return out

    # -- invalidation ----------------------------------------------------------------------------------

    def invalidate(self, key: CacheKey) -> bool:
        """Drop ``key``'s token so the next call acquires a new one. ``True`` if one was dropped."""
        if self._entries.pop(key, None) is None:
            return False
        self._emit("invalidated", key)
        return True

    def invalidate_credential(self, credential: Credential) -> bool:
        """Drop the entry holding exactly this credential (not a newer one that replaced it)."""
        for key, entry in list(self._entries.items()):
            if entry.credential is credential:
                return self.invalidate(key)
        return False

    def clear(self) -> None:
        self._entries.clear()
        self._backoff.clear()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait for every acquisition in flight (background refreshes included) to finish."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    async def aclose(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()

    # -- internals -------------------------------------------------------------------------------------

    def _refresh_threshold(self, entry: _Entry) -> float:
        expires_at = entry.credential.expires_at
        if expires_at is None:
            return 0.0
        lifetime = max(0.0, expires_at - entry.stored_at)
        return min(self.refresh_margin, self.refresh_fraction * lifetime)

    def _backoff_left(self, key: CacheKey, now: float) -> float | None:
        state = self._backoff.get(key)
        if state is None:
            return None
        left = state.until - now
        # A wall clock stepping backwards must not stretch the backoff beyond its maximum.
        if left <= 0 or left > self.backoff_max:
            return None
        return left

    def _start(self, key: CacheKey, acquire: Acquire) -> asyncio.Task[Credential]:
        task = asyncio.ensure_future(self._run(key, acquire))
        self._inflight[key] = task
        task.add_done_callback(partial(self._finished, key))
        return task

    async def _run(self, key: CacheKey, acquire: Acquire) -> Credential:
        try:
            credential = await acquire()
        except Exception as exc:
            self._record_failure(key, exc)
            raise
        self._entries[key] = _Entry(credential, self._clock())
        self._backoff.pop(key, None)
        self._emit("stored", key)
        return credential

    def _finished(self, key: CacheKey, task: asyncio.Task[Credential]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # a background refresh nobody awaited must not warn "never retrieved"

    def _record_failure(self, key: CacheKey, exc: BaseException) -> None:
        previous = self._backoff.get(key)
        failures = (previous.failures if previous is not None else 0) + 1
        delay = min(self.backoff_max, self.backoff_initial * 2.0 ** min(failures - 1, 30))
        delay *= 1.0 - self.backoff_jitter * self._rng()
        self._backoff[key] = _Backoff(failures, self._clock() + delay, exc)
        self._emit("error", key)

    def _emit(self, event: str, key: CacheKey) -> None:
        if self.on_event is None:
            return
        with contextlib.suppress(Exception):  # metrics must never break authentication
            self.on_event(event, key.provider)
