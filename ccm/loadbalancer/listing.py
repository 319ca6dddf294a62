"""Listings of the owner's IPs, shared by the workers: one ``GET /ips/detail/`` (every page) answers every worker
that asked for a listing newer than some moment, so twenty Services verified at once cost one listing, not twenty.

Tag names (``GET /tags/``) are fetched only when an IP carries a tag not seen before: kube-dc's claims are tags.

A listing answered by any credential but the primary one (the chain fell back, e.g. to a password user) may be
another account's IPs: it raises :class:`ForeignListing` (a cloud error: the Service stays pending, nothing is
claimed or released) instead of being used.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from ccm.loadbalancer.ipam import CloudIp, parse_ips
from cloudsigma.client import CloudSigmaClient
from cloudsigma.errors import CallContext, CloudSigmaError


class ForeignListing(CloudSigmaError):
    """The IPs were listed by a credential other than the primary one: maybe another account's IPs."""

    transient = True


@dataclass(frozen=True)
class Listing:
    ips: tuple[CloudIp, ...]
    #: monotonic time the first request was sent: every write completed before it is visible in the listing.
    started_at: float
    #: monotonic time the last page arrived.
    fetched_at: float
    request_ids: tuple[str, ...] = ()

    def age(self) -> float:
        return time.monotonic() - self.fetched_at


class IpListings:
    """Coalesced listings: :meth:`newer_than` waits for one started after ``moment``."""

    def __init__(self, client: CloudSigmaClient, *, primary: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        #: The provider a listing must come from (None: any, for callers with one credential).
        self._primary = primary
        self._clock = clock
        self._latest: Listing | None = None
        self._running: asyncio.Task[Listing] | None = None
        self._running_started = 0.0
        self._tag_names: dict[str, str] = {}

    @property
    def latest(self) -> Listing | None:
        return self._latest

    async def newer_than(self, moment: float | None) -> Listing:
        """A listing whose first request was sent after ``moment`` (None: any listing no older than now)."""
        moment = self._clock() if moment is None else moment
        while True:
            latest = self._latest
            if latest is not None and latest.started_at >= moment:
                return latest
            running = self._running
            if running is not None and self._running_started >= moment:
                return await asyncio.shield(running)
            if running is not None:
                await asyncio.wait({running})  # one at a time; then start one late enough
                continue
            self._running_started = self._clock()
            self._running = asyncio.ensure_future(self._fetch(self._running_started))
            return await asyncio.shield(self._running)

    async def _fetch(self, started: float) -> Listing:
        try:
            ips = await self._client.list_ips()
            if self._primary is not None and ips.provider != self._primary:
                raise ForeignListing(f"the IPs were listed by credential {ips.provider!r}, not the primary "
                                     f"{self._primary!r}: not used", resource="/ips/detail/",
                                     context=CallContext(provider=ips.provider,
                                                         request_id=(ips.request_ids or (None,))[-1]))
            unknown = {str(t.get("uuid")) for o in ips.objects for t in o.get("tags") or []
                       if isinstance(t, dict) and str(t.get("uuid")) not in self._tag_names}
            if unknown:
                tags = await self._client.list_tags()
                self._tag_names.update({t.uuid: t.name for t in tags.tags})
            listing = Listing(ips=tuple(parse_ips(ips.objects, self._tag_names)), started_at=started,
                              fetched_at=self._clock(), request_ids=ips.request_ids)
            self._latest = listing
            return listing
        finally:
            self._running = None
