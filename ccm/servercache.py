"""One shared, paginated snapshot of the user's servers.

Reconciling 1,000 nodes must not mean 1,000 API calls: every lookup is answered from one complete listing
(``GET /servers/detail/``, all pages) no older than ``max_age``. A miss triggers one refresh before anyone is
told "not found"; concurrent refreshes are coalesced into one request (single-flight).

A snapshot answer is never proof that a server is gone: deletion needs a direct GET (see lifecycle).

With each listing the cache may fetch *extras* (tag names, host groups: see :mod:`ccm.cloudlabels.sources`),
once per snapshot and concurrently with the listing; their failure never fails the listing (the snapshot then
says "unknown" for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog

from cloudsigma.client import CloudSigmaClient, ServerList
from cloudsigma.models import Server

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SnapshotExtras:
    """Facts fetched once per snapshot besides the servers. None: not fetched, or the call failed this round."""

    #: tag uuid → tag name (``GET /tags/``).
    tag_names: Mapping[str, str] | None = None
    #: server uuid → id of the physical host group it runs in (``GET /servers/availability_groups/``).
    host_groups: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ServerSnapshot:
    """Servers of the user at one moment, indexed for lookups."""

    servers: tuple[Server, ...] = field(repr=False)
    fetched_at: float  # monotonic
    complete: bool
    request_ids: tuple[str, ...] = ()
    provider: str | None = None
    by_uuid: dict[str, Server] = field(default_factory=dict, repr=False)
    by_name: dict[str, tuple[Server, ...]] = field(default_factory=dict, repr=False)
    #: tag uuid → name, and server uuid → host group id, fetched with this listing (None: unknown).
    tag_names: Mapping[str, str] | None = field(default=None, repr=False)
    host_groups: Mapping[str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_list(cls, listing: ServerList, fetched_at: float,
                  extras: SnapshotExtras | None = None) -> ServerSnapshot:
        by_uuid: dict[str, Server] = {}
        by_name: dict[str, list[Server]] = {}
        for server in listing.servers:
            by_uuid[server.uuid.lower()] = server
            by_name.setdefault(server.name, []).append(server)
        return cls(
            servers=listing.servers, fetched_at=fetched_at, complete=listing.complete,
            request_ids=listing.request_ids, provider=listing.provider, by_uuid=by_uuid,
            by_name={k: tuple(v) for k, v in by_name.items()},
            tag_names=extras.tag_names if extras else None, host_groups=extras.host_groups if extras else None,
        )

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.fetched_at


class ServerCache:
    """Single-flight, max-age cache of :class:`ServerSnapshot`."""

    def __init__(self, client: CloudSigmaClient, *, max_age: float = 10.0, stale_factor: float = 3.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_refresh: Callable[[ServerSnapshot], None] | None = None,
                 extras: Callable[[], Awaitable[SnapshotExtras]] | None = None) -> None:
        self._client = client
        #: Fetches the extras of one snapshot (at most once per refresh); must not raise.
        self._extras = extras
        self._refresh_listeners: list[Callable[[ServerSnapshot], None]] = []
        self.max_age = max_age
        #: A snapshot up to ``max_age * stale_factor`` old still answers *hits* while a refresh runs in the
        #: background (stale-while-revalidate); older ones block. Misses always wait for a fresh listing.
        self.stale_factor = stale_factor
        self._clock = clock
        self._on_refresh = on_refresh
        self._snapshot: ServerSnapshot | None = None
        self._inflight: asyncio.Future[ServerSnapshot] | None = None
        self._background: asyncio.Task[None] | None = None
        self.refreshes = 0

    @property
    def current(self) -> ServerSnapshot | None:
        return self._snapshot

    def add_refresh_listener(self, listener: Callable[[ServerSnapshot], None]) -> None:
        """``listener(snapshot)`` is called after every successful refresh (it must be quick)."""
        self._refresh_listeners.append(listener)

    async def get(self, *, max_age: float | None = None) -> ServerSnapshot:
        """A snapshot no older than ``max_age`` (default: the cache's), refreshing if needed."""
        limit = self.max_age if max_age is None else max_age
        snap = self._snapshot
        if snap is not None:
            age = self._clock() - snap.fetched_at
            if age <= limit:
                return snap
            if age <= limit * self.stale_factor:
                self._revalidate()
                return snap
        return await self.refresh(newer_than=snap.fetched_at if snap else None)

    def _revalidate(self) -> None:
        if self._inflight is not None or (self._background is not None and not self._background.done()):
            return

        async def refresh_quietly() -> None:
            try:
                await self.refresh()
            except Exception as exc:  # the next blocking get() reports it; hits keep being served meanwhile
                log.warning("server_snapshot_refresh_failed", error=str(exc))

        self._background = asyncio.get_running_loop().create_task(refresh_quietly())

    async def refresh(self, *, newer_than: float | None = None) -> ServerSnapshot:
        """Fetch a new snapshot; callers arriving while one is in flight share it.

        ``newer_than``: a snapshot fetched after this moment satisfies the caller (so a burst of misses
        that all saw the same stale snapshot causes one refresh, not one each).
        """
        snap = self._snapshot
        if newer_than is not None and snap is not None and snap.fetched_at > newer_than:
            return snap
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ServerSnapshot] = loop.create_future()
        self._inflight = future
        try:
            started = self._clock()
            listing, extras = await self._list_with_extras()
            snapshot = ServerSnapshot.from_list(listing, fetched_at=started, extras=extras)
            self._snapshot = snapshot
            self.refreshes += 1
            if self._on_refresh is not None:
                self._on_refresh(snapshot)
            self._tell_listeners(snapshot)
            log.debug("server_snapshot_refreshed", servers=len(snapshot.servers), complete=snapshot.complete,
                      request_ids=list(snapshot.request_ids), credential_provider=snapshot.provider)
            future.set_result(snapshot)
            return snapshot
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it; no "never retrieved" noise
            raise
        finally:
            self._inflight = None

    async def _list_with_extras(self) -> tuple[ServerList, SnapshotExtras | None]:
        """The listing, and the extras fetched concurrently with it (never failing the listing)."""
        if self._extras is None:
            return await self._client.list_servers(detail=True), None
        extras = asyncio.ensure_future(self._extras())
        try:
            listing = await self._client.list_servers(detail=True)
        except BaseException:
            extras.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await extras
            raise
        try:
            return listing, await extras
        except Exception:  # a bug in a source must not cost the listing
            log.exception("snapshot_extras_failed")
            return listing, None

    def _tell_listeners(self, snapshot: ServerSnapshot) -> None:
        for listener in self._refresh_listeners:
            try:
                listener(snapshot)
            except Exception:  # a listener must never break a refresh
                log.exception("refresh_listener_failed")
