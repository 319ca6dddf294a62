"""Which replicas of the fleet are alive: member Leases whose renewals we observe fresh.

Liveness is judged as client-go judges a leader Lease: by *our* monotonic clock since we last saw the record
(holder, renewTime) change, against the record's ``leaseDurationSeconds``; never by comparing ``renewTime`` with
our wall clock, so clock skew between replicas does not matter. A consequence, as in client-go: a Lease seen for
the first time counts as fresh for one duration, even if its replica died long ago.

:class:`LivenessTracker` is the pure bookkeeping (fed observations and a time); :class:`Membership` feeds it from
a watch of the fleet's member Leases (:class:`ccm.kube.informer.Informer`), wakes up when the next member would
expire, tells handlers whenever the live set changes, and (optionally) runs this replica's
:class:`ccm.fleet.announce.Announcer`. Member Leases silent for ``forget_after`` are deleted (guarded by their
resourceVersion, so a replica that renewed meanwhile keeps its Lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from ccm.fleet.announce import FLEET_LABEL, Announcer, leases_path
from ccm.kube.errors import Conflict, KubeError, KubeNotFound
from ccm.kube.informer import Informer
from ccm.kube.transport import JSON, KubeTransport
from ccm.supervisor import cancel_and_wait

log = structlog.get_logger(__name__)

MembersHandler = Callable[[frozenset[str]], Awaitable[None] | None]


@dataclass(frozen=True)
class MembershipOptions:
    """How a replica takes part in the fleet. (Phase 2 moves these into ``Settings``.)"""

    namespace: str
    """The fleet's namespace: member Leases live there."""
    identity: str
    """This replica's id (e.g. :func:`ccm.leader.default_identity`); the ids sharding distributes tenants over."""
    fleet: str = "cloudsigma-ccm"
    """Name of the fleet (value of the member label): several fleets may share a namespace."""
    lease_duration: float = 15.0
    """A member not renewed for this long (by our clock) is gone."""
    renew_interval: float = 5.0
    forget_after: float = 3600.0
    """Delete member Leases silent this long (dead pods of a Deployment never come back under their name)."""
    watch_timeout: float = 300.0


@dataclass
class _Seen:
    identity: str
    record: tuple[Any, ...]
    duration: float
    changed_at: float
    resource_version: str | None


class LivenessTracker:
    """Member Lease observations → the set of live identities at a given time (pure; time passed in)."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def observe(self, key: str, lease: JSON, now: float, *, default_duration: float) -> None:
        """Record the current state of member Lease ``key``; the clock restarts only when the record changed."""
        spec = lease.get("spec") or {}
        identity = spec.get("holderIdentity") or ""
        record = (identity, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        duration = spec.get("leaseDurationSeconds")
        if not isinstance(duration, int | float) or duration <= 0:
            duration = default_duration
        version = (lease.get("metadata") or {}).get("resourceVersion")
        previous = self._seen.get(key)
        changed_at = previous.changed_at if previous is not None and previous.record == record else now
        self._seen[key] = _Seen(str(identity), record, float(duration), changed_at, version)

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def live(self, now: float) -> frozenset[str]:
        """Identities whose Lease changed less than its duration ago (a Lease without holder is no member)."""
        return frozenset(s.identity for s in self._seen.values() if s.identity and now < s.changed_at + s.duration)

    def next_expiry(self, now: float) -> float | None:
        """When the next live member would expire without news, or None."""
        times = [s.changed_at + s.duration for s in self._seen.values() if s.identity]
        return min((t for t in times if t > now), default=None)

    def silent(self, now: float, longer_than: float) -> list[tuple[str, str | None]]:
        """(key, resourceVersion) of Leases unchanged for ``longer_than``: candidates for deletion."""
        return [(k, s.resource_version) for k, s in self._seen.items() if now - s.changed_at > longer_than]


class Membership:
    """Follows the fleet's member Leases and keeps :attr:`live` (the live replica ids) current."""

    def __init__(self, kube: KubeTransport, options: MembershipOptions, *, announce: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self.options = options
        self._clock = clock
        self.tracker = LivenessTracker()
        self.informer = Informer(kube, leases_path(options.namespace), label_selector=f"{FLEET_LABEL}={options.fleet}",
                                 watch_timeout=options.watch_timeout, name="member-leases")
        self.informer.add_handler(self._on_lease)
        self.announcer: Announcer | None = None
        if announce:
            self.announcer = Announcer(kube, namespace=options.namespace, fleet=options.fleet,
                                       identity=options.identity, lease_duration=options.lease_duration,
                                       renew_interval=options.renew_interval, clock=clock)
        #: The live replica ids, as last computed.
        self.live: frozenset[str] = frozenset()
        #: Set once the member Leases were listed (and this replica's own Lease written, when announcing).
        self.synced = asyncio.Event()
        self._handlers: list[MembersHandler] = []
        self._wake = asyncio.Event()

    def add_handler(self, handler: MembersHandler) -> None:
        """``handler(live)`` is called (and awaited) whenever the live set changes."""
        self._handlers.append(handler)

    def _on_lease(self, key: str, old: JSON | None, new: JSON | None) -> None:
        if new is None:
            self.tracker.forget(key)
        else:
            self.tracker.observe(key, new, self._clock(), default_duration=self.options.lease_duration)
        self._wake.set()

    async def run(self) -> None:
        """Announce (when enabled), follow the member Leases and re-judge liveness, until cancelled.

        On cancellation this replica's member Lease is deleted, so the others see it leave at once."""
        tasks = [asyncio.create_task(self.informer.run(), name="member-leases")]
        try:
            if self.announcer is not None:
                await self.announcer.renew()
                tasks.append(asyncio.create_task(self.announcer.run(), name="member-announce"))
            await self.informer.synced.wait()
            await self._judge()
            self.synced.set()
            await self._judge_forever()
        finally:
            await cancel_and_wait(*tasks)
            if self.announcer is not None:
                await asyncio.shield(self.announcer.leave())

    async def _judge_forever(self) -> None:
        while True:
            now = self._clock()
            expiry = self.tracker.next_expiry(now)
            # Wake at the next expiry (a hair after, so it has passed) or on news; at least every forget check.
            timeout = min(self.options.forget_after / 4, (expiry - now + 0.01) if expiry is not None else 60.0)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that arrives as
            # the event is set, and this loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, timeout)):
                    await self._wake.wait()
            self._wake.clear()
            await self._judge()
            await self._forget_silent()

    async def _judge(self) -> None:
        live = self.tracker.live(self._clock())
        if live == self.live:
            return
        joined, left = sorted(live - self.live), sorted(self.live - live)
        self.live = live
        log.info("fleet_members_changed", identity=self.options.identity, members=len(live), joined=joined or None,
                 left=left or None)
        for handler in self._handlers:
            try:
                result = handler(live)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("members_handler_failed")

    async def _forget_silent(self) -> None:
        for key, version in self.tracker.silent(self._clock(), self.options.forget_after):
            name = key.split("/", 1)[-1]
            body: JSON = {"apiVersion": "v1", "kind": "DeleteOptions"}
            if version:
                body["preconditions"] = {"resourceVersion": version}
            try:
                await self._kube.request("DELETE", f"{leases_path(self.options.namespace)}/{name}", body=body)
                log.info("member_lease_forgotten", lease=key)
            except (Conflict, KubeNotFound):
                pass  # renewed meanwhile (the watch brings the new record) or already gone
            except KubeError as exc:
                log.debug("member_lease_forget_failed", lease=key, **exc.log_fields())
                continue  # no answer: try again next round
            self.tracker.forget(key)
