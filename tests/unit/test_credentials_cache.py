"""TokenCache: expiry, refresh-ahead, single-flight, failures and backoff, isolation, events."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from pydantic import SecretStr

from credentials.base import Credential, CredentialUnavailable, Identity
from credentials.cache import CacheKey, TokenCache


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Source:
    """An acquisition function that counts calls and mints tokens with a given lifetime."""

    def __init__(self, clock: Clock, lifetime: float | None = 300.0, provider: str = "p") -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.provider = provider
        self.calls = 0
        self.fail_with: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> Credential:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        expires = None if self.lifetime is None else self.clock() + self.lifetime
        return Credential(scheme="bearer", secret=SecretStr(f"tok-{self.provider}-{self.calls}"),
                          api_url_template="https://direct.{region}.example/api/2.0/",
                          identity=Identity(provider=self.provider, user="u@example.com"), expires_at=expires)


KEY = CacheKey.of("User@Example.com", "zrh", "p")


def make_cache(clock: Clock, **kw: object) -> TokenCache:
    kw.setdefault("rng", lambda: 0.0)  # no jitter unless a test asks for it
    return TokenCache(clock=clock, **kw)  # type: ignore[arg-type]


def test_key_lowercases_email() -> None:
    assert CacheKey.of("  User@Example.COM ", "zrh", "p") == ("user@example.com", "zrh", "p")


async def test_hit_then_expiry_reacquires() -> None:
    clock = Clock()
    src = Source(clock, lifetime=300)
    cache = make_cache(clock)
    first = await cache.get(KEY, src)
    assert await cache.get(KEY, src) is first
    assert src.calls == 1
    clock.advance(301)  # expired: must not be served
    second = await cache.get(KEY, src)
    assert second is not first
    assert second.secret.get_secret_value() == "tok-p-2"
    assert src.calls == 2


async def test_never_expiring_credential_is_not_refreshed() -> None:
    clock = Clock()
    src = Source(clock, lifetime=None)
    cache = make_cache(clock)
    cred = await cache.get(KEY, src)
    clock.advance(10 * 365 * 86400)
    assert await cache.get(KEY, src) is cred
    assert src.calls == 1


async def test_refresh_ahead_for_a_five_minute_token() -> None:
    """300 s token, 120 s margin: refresh at 25 % of the lifetime (75 s left), not at 120 s left."""
    clock = Clock()
    src = Source(clock, lifetime=300)
    cache = make_cache(clock, refresh_margin=120)
    first = await cache.get(KEY, src)
    clock.advance(200)  # 100 s left: a plain 120 s margin would already refresh here
    assert await cache.get(KEY, src) is first
    clock.advance(24)  # 76 s left
    assert await cache.get(KEY, src) is first
    await cache.drain()
    assert src.calls == 1
    clock.advance(2)  # 74 s left: inside the window
    served = await cache.get(KEY, src)
    assert served is first  # the still-valid token is served while the refresh runs
    assert cache.in_flight(KEY)
    await cache.drain()
    assert src.calls == 2
    refreshed = await cache.get(KEY, src)
    assert refreshed is not first
    assert refreshed.secret.get_secret_value() == "tok-p-2"


async def test_refresh_ahead_for_a_one_hour_token_uses_the_margin() -> None:
    clock = Clock()
    src = Source(clock, lifetime=3600)
    cache = make_cache(clock, refresh_margin=120)
    await cache.get(KEY, src)
    clock.advance(3600 - 121)
    await cache.get(KEY, src)
    await cache.drain()
    assert src.calls == 1
    clock.advance(2)  # 119 s left
    await cache.get(KEY, src)
    await cache.drain()
    assert src.calls == 2


async def test_single_flight_1000_concurrent_callers_one_acquisition() -> None:
    clock = Clock()
    src = Source(clock)
    src.gate = asyncio.Event()
    cache = make_cache(clock)
    tasks = [asyncio.ensure_future(cache.get(KEY, src)) for _ in range(1000)]
    await asyncio.sleep(0)
    src.gate.set()
    results = await asyncio.gather(*tasks)
    assert src.calls == 1
    assert all(r is results[0] for r in results)


async def test_single_flight_during_refresh_window() -> None:
    clock = Clock()
    src = Source(clock, lifetime=300)
    cache = make_cache(clock)
    first = await cache.get(KEY, src)
    clock.advance(290)
    src.gate = asyncio.Event()
    results = await asyncio.gather(*(cache.get(KEY, src) for _ in range(1000)))
    assert all(r is first for r in results)
    src.gate.set()
    await cache.drain()
    assert src.calls == 2


async def test_single_flight_failure_reaches_every_waiter_and_is_one_call() -> None:
    clock = Clock()
    src = Source(clock)
    src.gate = asyncio.Event()
    src.fail_with = CredentialUnavailable("idp down", provider="p")
    cache = make_cache(clock)
    tasks = [asyncio.ensure_future(cache.get(KEY, src)) for _ in range(200)]
    await asyncio.sleep(0)
    src.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert src.calls == 1
    assert all(isinstance(r, CredentialUnavailable) for r in results)


async def test_cancelled_waiter_does_not_cancel_the_shared_acquisition() -> None:
    clock = Clock()
    src = Source(clock)
    src.gate = asyncio.Event()
    cache = make_cache(clock)
    first = asyncio.ensure_future(cache.get(KEY, src))
    second = asyncio.ensure_future(cache.get(KEY, src))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    src.gate.set()
    cred = await second
    assert cred.secret.get_secret_value() == "tok-p-1"
    assert first.cancelled()
    assert src.calls == 1


async def test_failure_is_not_cached() -> None:
    clock = Clock()
    src = Source(clock)
    src.fail_with = CredentialUnavailable("idp down", provider="p")
    cache = make_cache(clock)
    with pytest.raises(CredentialUnavailable):
        await cache.get(KEY, src)
    assert cache.peek(KEY) is None
    src.fail_with = None
    clock.advance(cache.backoff_initial + 0.01)
    cred = await cache.get(KEY, src)
    assert cred.secret.get_secret_value() == "tok-p-2"
    assert src.calls == 2
    assert cache.backoff_remaining(KEY) is None
    assert cache.failures(KEY) == 0


async def test_backoff_returns_last_error_without_calling_the_idp() -> None:
    clock = Clock()
    src = Source(clock)
    err = CredentialUnavailable("idp down", provider="p")
    src.fail_with = err
    cache = make_cache(clock, backoff_initial=1.0, backoff_max=60.0)
    with pytest.raises(CredentialUnavailable):
        await cache.get(KEY, src)
    for _ in range(50):  # hammering during the backoff: no new request
        with pytest.raises(CredentialUnavailable) as caught:
            await cache.get(KEY, src)
        assert caught.value is err
    assert src.calls == 1
    # exponential: 1, 2, 4, 8, 16, 32, 60, 60
    expected = [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    for delay in expected:
        clock.advance(60.0 if delay == expected[0] else 0.0)
        left = cache.backoff_remaining(KEY)
        assert left is None  # the previous backoff has passed
        with pytest.raises(CredentialUnavailable):
            await cache.get(KEY, src)
        assert cache.backoff_remaining(KEY) == pytest.approx(delay)
        clock.advance(delay + 0.001)
    assert src.calls == 1 + len(expected)


async def test_backoff_has_jitter() -> None:
    clock = Clock()
    src = Source(clock)
    src.fail_with = CredentialUnavailable("idp down", provider="p")
    cache = make_cache(clock, backoff_initial=8.0, backoff_max=60.0, backoff_jitter=0.5, rng=lambda: 1.0)
    with pytest.raises(CredentialUnavailable):
        await cache.get(KEY, src)
    assert cache.backoff_remaining(KEY) == pytest.approx(4.0)  # 8 s reduced by the full 50 % jitter


async def test_refresh_failure_keeps_serving_the_valid_token() -> None:
    clock = Clock()
    src = Source(clock, lifetime=300)
    cache = make_cache(clock)
    first = await cache.get(KEY, src)
    clock.advance(250)
    src.fail_with = CredentialUnavailable("idp down", provider="p")
    assert await cache.get(KEY, src) is first
    await cache.drain()
    assert src.calls == 2
    assert await cache.get(KEY, src) is first  # still valid, backing off: no new attempt
    assert src.calls == 2
    clock.advance(60)  # expired now
    with pytest.raises(CredentialUnavailable):
        await cache.get(KEY, src)


async def test_per_key_isolation() -> None:
    clock = Clock()
    bad = Source(clock, provider="a")
    bad.fail_with = CredentialUnavailable("down", provider="a")
    good = Source(clock, provider="b")
    cache = make_cache(clock)
    key_a = CacheKey.of("u@example.com", "zrh", "a")
    key_b = CacheKey.of("u@example.com", "zrh", "b")
    key_c = CacheKey.of("u@example.com", "fra", "a")
    with pytest.raises(CredentialUnavailable):
        await cache.get(key_a, bad)
    assert (await cache.get(key_b, good)).identity.provider == "b"
    assert cache.backoff_remaining(key_b) is None
    ok_a = Source(clock, provider="a")
    assert (await cache.get(key_c, ok_a)).secret.get_secret_value() == "tok-a-1"  # other region unaffected

    # a slow acquisition for one key does not block another key
    slow = Source(clock, provider="slow")
    slow.gate = asyncio.Event()
    slow_task = asyncio.ensure_future(cache.get(CacheKey.of("x@example.com", "zrh", "slow"), slow))
    await asyncio.sleep(0)
    fast = await asyncio.wait_for(cache.get(CacheKey.of("y@example.com", "zrh", "slow"), Source(clock)), 1)
    assert fast is not None
    assert not slow_task.done()
    slow.gate.set()
    await slow_task


async def test_invalidate_credential_drops_only_that_credential() -> None:
    clock = Clock()
    src = Source(clock)
    cache = make_cache(clock)
    first = await cache.get(KEY, src)
    assert cache.invalidate_credential(first) is True
    second = await cache.get(KEY, src)
    assert second is not first
    assert cache.invalidate_credential(first) is False  # stale reference: the newer token stays
    assert await cache.get(KEY, src) is second
    assert src.calls == 2


async def test_bounded() -> None:
    clock = Clock()
    cache = make_cache(clock, maxsize=2)
    for i in range(5):
        await cache.get(CacheKey.of(f"u{i}@example.com", "zrh", "p"), Source(clock))
    assert len(cache) == 2


async def test_events_and_a_broken_hook() -> None:
    clock = Clock()
    seen: Counter[tuple[str, str]] = Counter()
    cache = make_cache(clock, on_event=lambda event, provider: seen.update([(event, provider)]))
    src = Source(clock, lifetime=300)
    await cache.get(KEY, src)
    await cache.get(KEY, src)
    clock.advance(250)
    await cache.get(KEY, src)
    await cache.drain()
    assert seen[("miss", "p")] == 1
    assert seen[("hit", "p")] == 1
    assert seen[("refresh", "p")] == 1
    assert seen[("stored", "p")] == 2

    def broken(event: str, provider: str) -> None:
        raise RuntimeError("metrics exploded")

    cache.on_event = broken
    assert await cache.get(KEY, src) is not None  # a failing hook never breaks authentication


async def test_aclose_cancels_inflight() -> None:
    clock = Clock()
    src = Source(clock)
    src.gate = asyncio.Event()
    cache = make_cache(clock)
    task = asyncio.ensure_future(cache.get(KEY, src))
    await asyncio.sleep(0)
    await cache.aclose()
    with pytest.raises(asyncio.CancelledError):
        await task
