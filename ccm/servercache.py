"""One shared, paginated snapshot of the user's servers.

Reconciling 1,000 nodes must not mean 1,000 API calls: every lookup is answered from one complete listing
(``GET /servers/detail/``, all pages) no older than ``max_age``. A miss triggers one refresh before anyone is
told "not found"; concurrent refreshes are coalesced into one request (single-flight).

When CloudSigma fails, the cache owns the recovery: it probes (one listing at a time, every 1-10 s) until a
listing succeeds and then tells its listeners, so nodes waiting in per-node backoff are re-queued at once
instead of minutes later. A 429 with ``Retry-After`` closes the cache until that moment: callers fail fast and
no listing is sent inside the window, whatever the callers' own backoff says.

A snapshot answer is never proof that a server is gone: deletion needs a direct GET (see lifecycle).

A snapshot's ``fetched_at`` is when its listing *started*. A caller that needs evidence newer than some moment (a
Node it must not decide about from older data: :mod:`ccm.nodes.evidence`) asks for a listing started after it
(:meth:`ServerCache.fresh_after`); a listing in flight that started earlier does not count, and every caller whose
moment the next listing satisfies shares it. :meth:`ServerCache.refresh_periodically` keeps the snapshot at most a
period old at rest (``--server-refresh-period``), the refresh listeners seeing every new snapshot.

After each successful listing the cache may fetch *extras* (tag names, host groups: see
:mod:`ccm.cloudlabels.sources`), once per snapshot; their failure never fails the listing (the snapshot then says
"unknown" for them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog

from ccm.supervisor import cancel_and_wait
from cloudsigma.addresses import ServerAddresses, server_addresses
from cloudsigma.client import CloudSigmaClient, ServerList
from cloudsigma.errors import CloudSigmaError, RateLimited
from cloudsigma.models import Server
from credentials.base import CredentialError

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
    #: Who listed (the token subject / user uuid), when known: "the same credential" means provider and subject.
    token_subject: str | None = None
    #: Each server's addresses, extracted (and its unusable data logged) once per snapshot.
    _addresses: dict[str, ServerAddresses] = field(default_factory=dict, repr=False, compare=False)
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
            by_name={k: tuple(v) for k, v in by_name.items()}, token_subject=listing.token_subject,
            tag_names=extras.tag_names if extras else None, host_groups=extras.host_groups if extras else None,
        )

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.fetched_at

    def addresses(self, server: Server) -> ServerAddresses:
        """The server's addresses as the API knows them. Unusable data (``nics is not a list``, ``ip
        "not-an-ip" ignored``) is logged here, once per server per snapshot — not once per reconcile."""
        known = self._addresses.get(server.uuid)
        if known is None:
            known = server_addresses(server)
            self._addresses[server.uuid] = known
            problems = server.problems + known.problems
            if problems:
                log.warning("cloudsigma_server_data_unusable", server_uuid=server.uuid, server_name=server.name,
                            problems=list(problems), request_ids=list(self.request_ids)[:3])
        return known


class ServerCache:
    """Single-flight, max-age cache of :class:`ServerSnapshot`, with recovery probing and Retry-After windows."""

    def __init__(self, client: CloudSigmaClient, *, max_age: float = 10.0, stale_factor: float = 3.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_refresh: Callable[[ServerSnapshot], None] | None = None,
                 probe_interval: float | None = 1.0, max_probe_interval: float = 10.0,
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
        self._inflight_started = 0.0
        self._background: asyncio.Task[None] | None = None
        self.refreshes = 0
        #: None disables probing (unit tests with a fake clock).
        self._probe_interval = probe_interval
        self._max_probe_interval = max_probe_interval
        self._probe: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        #: While the clock is before this, no listing is sent (CloudSigma's Retry-After).
        self._closed_until = 0.0
        self._closed_by: RateLimited | None = None
        self._recovery_listeners: list[Callable[[], None]] = []
        #: Conditions on a snapshot that keep the prober refreshing until they hold (e.g. "the right account").
        self._watchers: list[Callable[[ServerSnapshot], bool]] = []

    @property
    def current(self) -> ServerSnapshot | None:
        return self._snapshot

    def add_refresh_listener(self, listener: Callable[[ServerSnapshot], None]) -> None:
        """``listener(snapshot)`` is called after every successful refresh (it must be quick)."""
        self._refresh_listeners.append(listener)

    def now(self) -> float:
        """The cache's clock: compare with :attr:`ServerSnapshot.fetched_at` (``refresh(newer_than=...)``)."""
        return self._clock()

    @property
    def failing(self) -> bool:
        """The last listing failed (or a Retry-After window is open)."""
        return self._failing_since is not None

    def add_recovery_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` is called when a listing succeeds after one or more failures."""
        self._recovery_listeners.append(listener)

    def refresh_until(self, condition: Callable[[ServerSnapshot], bool]) -> None:
        """Keep refreshing (every ``max_age``) until ``condition(snapshot)`` holds for a fresh snapshot."""
        self._watchers.append(condition)
        self._ensure_probe()

    async def close(self) -> None:
        """Stop background work (the prober, a background revalidation)."""
        await cancel_and_wait(self._probe, self._background)
        self._probe = self._background = None

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
        if self._clock() < self._closed_until:
            return

        async def refresh_quietly() -> None:
            try:
                await self.refresh()
            except Exception as exc:  # the next blocking get() reports it; hits keep being served meanwhile
                log.warning("server_snapshot_refresh_failed", error=str(exc))

        self._background = asyncio.get_running_loop().create_task(refresh_quietly())

    def _window_error(self) -> RateLimited:
        """Fail fast inside a Retry-After window: the same words every time (no remaining seconds)."""
        remaining = max(0.0, self._closed_until - self._clock())
        cause = self._closed_by
        return RateLimited("rate limited: waiting until the time CloudSigma's Retry-After gave",
                           retry_after=remaining, status=429, error_type=cause.error_type if cause else None,
                           context=cause.context if cause else None)

    async def refresh(self, *, newer_than: float | None = None) -> ServerSnapshot:
        """Fetch a new snapshot; callers arriving while one is in flight share it.

        ``newer_than``: a snapshot whose listing *started* after this moment satisfies the caller (so a burst of
        misses that all saw the same stale snapshot causes one refresh, not one each). A listing in flight that
        started earlier does not: the caller waits for it and then shares the next one.
        """
        while True:
            snap = self._snapshot
            if newer_than is not None and snap is not None and snap.fetched_at > newer_than:
                return snap
            inflight = self._inflight
            if inflight is None:
                return await self._refresh_now()
            if newer_than is None or self._inflight_started >= newer_than:
                return await asyncio.shield(inflight)
            try:  # too old for this caller: its outcome is not ours
                await asyncio.shield(inflight)
            except asyncio.CancelledError:
                if not inflight.cancelled():
                    raise  # we are cancelled, not the listing
            except Exception as exc:
                log.debug("server_snapshot_older_refresh_failed", error=type(exc).__name__)

    async def fresh_after(self, moment: float) -> ServerSnapshot:
        """A snapshot whose listing started after ``moment`` (the cache's clock; it may lie in the near future:
        then the listing waits for it). Callers with moments a listing satisfies share it."""
        wait = moment - self._clock()
        if wait >= 0:
            await asyncio.sleep(wait + 0.001)
        return await self.refresh(newer_than=moment)

    async def refresh_periodically(self, period: float) -> None:
        """Keep the snapshot at most about ``period`` old, until cancelled (a supervised task). Any refresh counts:
        at rest this is one listing per period. A failed refresh is left to the prober (recovery) and tried again
        a period later."""
        while True:
            snap = self._snapshot
            wait = period if snap is None else period - (self._clock() - snap.fetched_at)
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                await self.refresh(newer_than=self._clock() - period)
            except (CloudSigmaError, CredentialError) as exc:
                log.debug("server_snapshot_periodic_refresh_failed", error=type(exc).__name__)
                await asyncio.sleep(period)

    async def _refresh_now(self) -> ServerSnapshot:
        if self._clock() < self._closed_until:
            raise self._window_error()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ServerSnapshot] = loop.create_future()
        self._inflight = future
        try:
            started = self._clock()
            self._inflight_started = started
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
            self._recovered()
            return snapshot
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            if isinstance(exc, CloudSigmaError | CredentialError):
                self._failed(exc)
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it; no "never retrieved" noise
            raise
        finally:
            self._inflight = None

    async def _list_with_extras(self) -> tuple[ServerList, SnapshotExtras | None]:
        """The listing, then its extras. Only a listing that succeeded costs the extra calls: a failing API is
        never sent more than the listing (probes included), and a fault meant for the listing meets it."""
        listing = await self._client.list_servers(detail=True)
        if self._extras is None:
            return listing, None
        try:
            return listing, await self._extras()
        except Exception:  # a bug in a source must not cost the listing
            log.exception("snapshot_extras_failed")
            return listing, None

    def _tell_listeners(self, snapshot: ServerSnapshot) -> None:
        for listener in self._refresh_listeners:
            try:
                listener(snapshot)
            except Exception:  # a listener must never break a refresh
                log.exception("refresh_listener_failed")

    # ---- failure, recovery and probing ---------------------------------------------------------

    def _failed(self, exc: CloudSigmaError | CredentialError) -> None:
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        if isinstance(exc, RateLimited) and exc.retry_after:
            # The client honours short waits itself; whatever it gave up on, no listing before this moment.
            until = now + exc.retry_after
            if until > self._closed_until:
                self._closed_until, self._closed_by = until, exc
                log.warning("cloudsigma_rate_limit_window", retry_after=exc.retry_after, **exc.log_fields())
        self._ensure_probe()

    def _recovered(self) -> None:
        if self._failing_since is None:
            return
        outage = self._clock() - self._failing_since
        self._failing_since = None
        self._closed_until, self._closed_by = 0.0, None
        log.info("cloudsigma_recovered", outage_seconds=round(outage, 1), listeners=len(self._recovery_listeners))
        for listener in self._recovery_listeners:
            try:
                listener()
            except Exception:  # a listener must never break a refresh
                log.exception("recovery_listener_failed")

    def _ensure_probe(self) -> None:
        if self._probe_interval is None:
            return
        if self._probe is not None and not self._probe.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._probe = loop.create_task(self._probe_loop(), name="server-cache-probe")

    def _probe_delay(self) -> float:
        assert self._probe_interval is not None
        now = self._clock()
        if self._failing_since is not None:
            # Short at first (recovery within seconds), longer during a long outage (a tenth of it, ≤ 10 s).
            delay = min(max(self._probe_interval, 0.1 * (now - self._failing_since)), self._max_probe_interval)
            return max(delay, self._closed_until - now)
        return max(self._probe_interval, self.max_age)

    async def _probe_loop(self) -> None:
        while self._failing_since is not None or self._watchers:
            await asyncio.sleep(self._probe_delay())
            if self._failing_since is None and not self._watchers:
                return
            try:
                snapshot = await self.refresh(newer_than=self._clock() - min(self.max_age, 1.0))
            except (CloudSigmaError, CredentialError) as exc:
                # Already logged by the client; the loop goes on while the failure lasts.
                log.debug("server_cache_probe_failed", error=type(exc).__name__)
                continue
            self._watchers = [w for w in self._watchers if not _holds(w, snapshot)]


def _holds(condition: Callable[[ServerSnapshot], bool], snapshot: ServerSnapshot) -> bool:
    try:
        return condition(snapshot)
    except Exception:
        log.exception("refresh_condition_failed")
        return True
