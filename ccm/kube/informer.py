"""List+watch of one kind of object into a local store: the one informer every controller uses.

:class:`ListWatch` is the implementation, for any resource path (core or custom, namespaced or cluster-wide,
with label and field selectors): a paged list, then one watch resumed from the last seen resourceVersion
(bookmarks included), 410 Gone → relist, other errors → reconnect with jittered exponential backoff. A relist
reports only what differs from the store (added, changed resourceVersion, gone), so a watch that expires does
not replay every object to the handlers.

``transform`` runs on every object before it is stored — page by page during a list, so the API's JSON of the
whole collection is never held at once. It keeps what the store's users read (a compact record of a Node, a
Secret without its other keys) or drops the object (``None``: as if it did not exist, so an object that stops
qualifying is reported as deleted). An object it cannot read is left out and logged, never the end of the
watch.

:meth:`ListWatch.observe` records an object we just wrote (the API's answer), so the watch event of our own
write is no news and a reconcile right after it reads the current object; observers hear of those writes,
whose watch events handlers never see.

:class:`Informer` stores the API's JSON (optionally slimmed); :class:`ccm.nodes.watching.NodeWatcher` stores
compact Node records.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog

from ccm.kube.errors import Gone, KubeError
from ccm.kube.fetching import list_all, list_pages
from ccm.kube.transport import JSON, KubeTransport

__all__ = ["Handler", "Informer", "ListWatch", "LogEvents", "Transform", "list_all", "object_key",
           "resource_version"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

Handler = Callable[[str, T | None, T | None], Awaitable[None] | None]
"""Called as handler(key, old, new): old None → added, new None → deleted."""

Observer = Callable[[str, T | None, T], None]
"""Called as observer(key, old, new) for a write recorded by :meth:`ListWatch.observe`."""

Transform = Callable[[JSON], JSON | None]
"""Slims an object before it is stored, or returns None to leave it out."""


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` for a namespaced object, ``name`` for a cluster-scoped one (client-go's key)."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    namespace = meta.get("namespace")
    return f"{namespace}/{name}" if namespace else name


def resource_version(obj: Mapping[str, Any] | None) -> str | None:
    value = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return value if isinstance(value, str) and value else None


def _number(version: str | None) -> int | None:
    """A resourceVersion as a number (etcd revisions), or None when it is not one."""
    try:
        return int(version) if version else None
    except ValueError:
        return None


def _not_newer(new: str | None, old: str | None) -> bool:
    """``new`` is the version held or an older one (only decidable when both are numbers)."""
    new_n, old_n = _number(new), _number(old)
    return new_n is not None and old_n is not None and new_n <= old_n


@dataclass(frozen=True)
class LogEvents:
    """The names of one informer's log events (operators and the reliability tests grep them)."""

    listed: str = "informer_listed"
    expired: str = "informer_watch_expired"
    failed: str = "informer_watch_failed"
    crashed: str = "informer_watch_crashed"
    handler_failed: str = "informer_handler_failed"
    observer_failed: str = "informer_observer_failed"
    transform_failed: str = "informer_transform_failed"
    #: The log field naming the object.
    key: str = "key"

    @classmethod
    def of(cls, what: str) -> LogEvents:
        """``node`` → ``nodes_listed``, ``node_watch_expired``, ``node_watch_failed``, … with field ``node``."""
        return cls(f"{what}s_listed", f"{what}_watch_expired", f"{what}_watch_failed", f"{what}_watch_crashed",
                   f"{what}_handler_failed", f"{what}_observer_failed", f"{what}_transform_failed", what)


class ListWatch(Generic[T]):
    """Keeps ``store`` (key → ``transform(object)``, see :func:`object_key`) in sync with the objects at ``path``.

    ``version`` reads the resourceVersion back from a stored value. ``on_restart(reason)`` is called when the
    watch restarts (``gone`` or ``error``).
    """

    def __init__(self, kube: KubeTransport, path: str, *, transform: Callable[[JSON], T | None],
                 version: Callable[[T], str | None], label_selector: str | None = None,
                 field_selector: str | None = None, watch_timeout: float = 300.0, max_backoff: float = 30.0,
                 name: str = "", events: LogEvents = LogEvents(), on_restart: Callable[[str], None] | None = None,
                 page_size: int = 500) -> None:
        self._kube = kube
        self.path = path
        self.name = name or path
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["labelSelector"] = label_selector
        if field_selector:
            self._selectors["fieldSelector"] = field_selector
        self._transform = transform
        self._version = version
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._events = events
        self._on_restart = on_restart
        self._page_size = page_size
        self._handlers: list[Handler[T]] = []
        self._observers: list[Observer[T]] = []
        self.store: dict[str, T] = {}
        #: Set once the first list is in the store (and its handlers ran).
        self.synced = asyncio.Event()
        #: Monotonic time of the last event or successful (re)list: /healthz reads it.
        self.last_activity = time.monotonic()
        self.relists = 0
        self.restarts = 0

    def add_handler(self, handler: Handler[T]) -> None:
        self._handlers.append(handler)

    def add_observer(self, observer: Observer[T]) -> None:
        """Also tell ``observer(key, old, new)`` of the writes recorded by :meth:`observe`, whose watch events
        handlers never see (for a controller that waits on another controller's writes)."""
        self._observers.append(observer)

    def observe(self, obj: JSON) -> None:
        """Record an object we just wrote (the API's answer), so the watch event of our own write is no news and
        a reconcile right after it reads the current object. Never moves the store backwards, and never adds an
        object the store does not hold (the watch does that)."""
        key = object_key(obj)
        current = self.store.get(key)
        if current is None or _not_newer(resource_version(obj), self._version(current)):
            return
        new = self._prepare(obj)
        if new is None:
            return
        self.store[key] = new
        for observer in self._observers:
            try:
                observer(key, current, new)
            except Exception:  # an observer's bug must not fail the write that was just made
                log.exception(self._events.observer_failed, informer=self.name, **{self._events.key: key})

    def _prepare(self, obj: JSON) -> T | None:
        try:
            return self._transform(obj)
        except Exception:  # one unreadable object is left out, never the end of the watch
            log.exception(self._events.transform_failed, informer=self.name, **{self._events.key: object_key(obj)})
            return None

    async def _emit(self, key: str, old: T | None, new: T | None) -> None:
        for handler in self._handlers:
            try:
                result = handler(key, old, new)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one bad handler call must not stop the watch
                log.exception(self._events.handler_failed, informer=self.name, **{self._events.key: key})

    async def _put(self, key: str, new: T | None, *, modified: bool = False) -> None:
        """Store (or drop, when ``new`` is None) one object and tell the handlers if anything changed."""
        old = self.store.get(key)
        if new is None:
            if old is not None:
                del self.store[key]
                await self._emit(key, old, None)
            return
        if old is not None:
            # A relist or a repeated event: no news. (Compare versions: list items lack the kind and
            # apiVersion that watch events carry, so equal objects do not always compare equal.)
            held, version = self._version(old), self._version(new)
            if (held is not None and held == version) or old == new:
                return
            if modified and _not_newer(version, held):
                return  # we hold this version or a newer one already (our own write, via observe())
        self.store[key] = new
        await self._emit(key, old, new)

    async def _relist(self) -> str:
        fresh: dict[str, T] = {}
        version = ""
        async for items, listed_at in list_pages(self._kube, self.path, query=self._selectors,
                                                 page_size=self._page_size):
            version = listed_at
            for item in items:
                prepared = self._prepare(item)
                if prepared is not None:
                    fresh[object_key(item)] = prepared
            del items  # the page's JSON goes before the next page arrives
        self.relists += 1
        for key in [k for k in self.store if k not in fresh]:
            await self._put(key, None)
        for key, obj in fresh.items():
            await self._put(key, obj)
        self.last_activity = time.monotonic()
        self.synced.set()
        log.info(self._events.listed, informer=self.name, count=len(self.store), resource_version=version)
        return version

    async def run(self) -> None:
        """List, then watch, until cancelled; never raises on API errors (they are logged and retried)."""
        backoff = 0.5
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._relist()
                version = await self._watch(version)
                self.last_activity = time.monotonic()  # a watch that ran its course is a healthy watch
                backoff = 0.5
            except Gone:
                log.info(self._events.expired, informer=self.name, reason="410 Gone: relisting")
                version = None
                self._restarted("gone")
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                self._restarted("error")
                log.warning(self._events.failed, informer=self.name, retry_in=round(backoff, 2),
                            **exc.log_fields())
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._max_backoff)
            except Exception:
                self._restarted("error")
                log.exception(self._events.crashed, informer=self.name, retry_in=round(backoff, 2))
                version = None
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._max_backoff)

    def _restarted(self, reason: str) -> None:
        self.restarts += 1
        if self._on_restart is not None:
            self._on_restart(reason)

    async def _watch(self, version: str) -> str:
        query: dict[str, Any] = {
            **self._selectors,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": int(self._watch_timeout),
        }
        async for event in self._kube.stream(self.path, query=query, timeout=self._watch_timeout + 30):
            self.last_activity = time.monotonic()
            etype = event.get("type")
            obj = event.get("object")
            if not isinstance(obj, dict):
                continue
            if etype == "ERROR":
                code = obj.get("code")
                message = str(obj.get("message", "watch error"))
                if code == 410:
                    raise Gone(message, status=410, method="WATCH", path=self.path)
                raise KubeError(message, status=code if isinstance(code, int) else None, method="WATCH",
                                path=self.path)
            new_version = resource_version(obj)
            if new_version:
                version = new_version
            if etype == "BOOKMARK":
                continue
            key = object_key(obj)
            if etype in ("ADDED", "MODIFIED"):
                await self._put(key, self._prepare(obj), modified=etype == "MODIFIED")
            elif etype == "DELETED":
                await self._put(key, None)
        return version


def _identity(obj: JSON) -> JSON | None:
    return obj


class Informer(ListWatch[JSON]):
    """A :class:`ListWatch` whose store holds the API's JSON, slimmed by ``transform`` if one is given."""

    def __init__(self, kube: KubeTransport, path: str, *, label_selector: str | None = None,
                 field_selector: str | None = None, transform: Transform | None = None,
                 watch_timeout: float = 300.0, max_backoff: float = 30.0, name: str = "",
                 events: LogEvents = LogEvents(), on_restart: Callable[[str], None] | None = None) -> None:
        super().__init__(kube, path, transform=transform or _identity, version=resource_version,
                         label_selector=label_selector, field_selector=field_selector, watch_timeout=watch_timeout,
                         max_backoff=max_backoff, name=name, events=events, on_restart=on_restart)
