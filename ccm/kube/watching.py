"""List+watch of Nodes into a local store, with bookmarks, 410 Gone → relist, and reconnect with backoff.

The store is the controllers' view of the cluster; handlers are called for every change so the node
controller can queue work. No polling loop: after the initial list only watch events arrive.
:class:`ListWatcher` does the same for any cluster-scoped collection (the CSR approver watches
CertificateSigningRequests with it); :class:`NodeWatcher` is the one for Nodes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ccm.kube.errors import Gone, KubeError
from ccm.kube.fetching import NODES, list_all
from ccm.kube.transport import JSON, KubeTransport

log = structlog.get_logger(__name__)

Handler = Callable[[str, JSON | None, JSON | None], Awaitable[None] | None]
"""Called as handler(name, old, new): old None → added, new None → deleted."""


def _rv(obj: JSON | None) -> int | None:
    """resourceVersion as a number (etcd revisions), or None when it is not one."""
    value = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    if not isinstance(value, str):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def slim(obj: JSON) -> JSON:
    """Drop what no controller reads and that dominates a Node's size (managedFields, image lists)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    status = obj.get("status")
    if isinstance(status, dict):
        status.pop("images", None)
    return obj


class ListWatcher:
    """Keeps ``store`` (name → object dict) of the collection at ``path`` in sync with the API server.

    ``what`` names the objects in log events (``<what>_watch_failed``, ``<what>s_listed``);
    ``field_selector`` narrows both the list and the watch.
    """

    def __init__(self, kube: KubeTransport, *, path: str, what: str, field_selector: str | None = None,
                 watch_timeout: float = 300.0, max_backoff: float = 30.0,
                 on_restart: Callable[[str], None] | None = None) -> None:
        self._kube = kube
        self._path = path
        self._what = what
        self._field_selector = field_selector
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._handlers: list[Handler] = []
        self._observers: list[Callable[[str, JSON | None, JSON], None]] = []
        self._on_restart = on_restart
        self.store: dict[str, JSON] = {}
        self.synced = asyncio.Event()
        #: monotonic time of the last event or successful (re)list: /healthz reads it.
        self.last_activity = time.monotonic()
        self.restarts = 0
        self.relists = 0

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def add_observer(self, observer: Callable[[str, JSON | None, JSON], None]) -> None:
        """Also tell ``observer(name, old, new)`` of the writes recorded by :meth:`observe`, whose watch events
        handlers never see (for a controller that waits on another controller's writes)."""
        self._observers.append(observer)

    def observe(self, obj: JSON) -> None:
        """Record a Node we just wrote (the API's answer), so the watch event of our own write is no news and
        a reconcile right after it reads the current object. Never moves the store backwards."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        current = self.store.get(name)
        new_rv, old_rv = _rv(obj), _rv(current)
        if current is not None and (new_rv is None or old_rv is None or new_rv > old_rv):
            self.store[name] = slim(obj)
            for observer in self._observers:
                try:
                    observer(name, current, obj)
                except Exception:  # an observer's bug must not fail the write that was just made
                    log.exception(f"{self._what}_observer_failed", **{self._what: name})

    async def _emit(self, name: str, old: JSON | None, new: JSON | None) -> None:
        for handler in self._handlers:
            try:
                result = handler(name, old, new)
                if result is not None:
                    await result
            except Exception:  # one bad handler call must not stop the watch
                log.exception(f"{self._what}_handler_failed", **{self._what: name})

    async def _relist(self) -> str:
        items, resource_version = await list_all(self._kube, self._path, field_selector=self._field_selector)
        self.relists += 1
        fresh = {str((i.get("metadata") or {}).get("name")): slim(i) for i in items}
        old_store = self.store
        self.store = fresh
        for name, node in fresh.items():
            await self._emit(name, old_store.get(name), node)
        for name in set(old_store) - set(fresh):
            await self._emit(name, old_store[name], None)
        self.last_activity = time.monotonic()
        self.synced.set()
        log.info(f"{self._what}s_listed", count=len(fresh), resource_version=resource_version)
        return resource_version

    async def run(self) -> None:
        """Run until cancelled."""
        backoff = 0.5
        resource_version: str | None = None
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._relist()
                resource_version = await self._watch(resource_version)
                self.last_activity = time.monotonic()  # a watch that ran its course is a healthy watch
                backoff = 0.5
            except Gone:
                log.info(f"{self._what}_watch_expired", reason="410 Gone: relisting")
                resource_version = None
                self._restarted("gone")
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                self._restarted("error")
                log.warning(f"{self._what}_watch_failed", retry_in=round(backoff, 2), **exc.log_fields())
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._max_backoff)
            except Exception:
                self._restarted("error")
                log.exception(f"{self._what}_watch_crashed", retry_in=round(backoff, 2))
                resource_version = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def _restarted(self, reason: str) -> None:
        self.restarts += 1
        if self._on_restart is not None:
            self._on_restart(reason)

    async def _watch(self, resource_version: str) -> str:
        query: dict[str, Any] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": int(self._watch_timeout),
        }
        if self._field_selector:
            query["fieldSelector"] = self._field_selector
        async for event in self._kube.stream(self._path, query=query, timeout=self._watch_timeout + 30):
            self.last_activity = time.monotonic()
            etype = event.get("type")
            obj = event.get("object")
            if not isinstance(obj, dict):
                continue
            if etype == "ERROR":
                code = obj.get("code")
                if code == 410:
                    raise Gone(str(obj.get("message", "too old resource version")), status=410, method="WATCH",
                               path=self._path)
                raise KubeError(str(obj.get("message", "watch error")), status=code if isinstance(code, int)
                                else None, method="WATCH", path=self._path)
            meta = obj.get("metadata") or {}
            new_rv = meta.get("resourceVersion")
            if isinstance(new_rv, str) and new_rv:
                resource_version = new_rv
            if etype == "BOOKMARK":
                continue
            name = str(meta.get("name", ""))
            if etype in ("ADDED", "MODIFIED"):
                old = self.store.get(name)
                old_rv, new_rv = _rv(old), _rv(obj)
                if etype == "MODIFIED" and old_rv is not None and new_rv is not None and new_rv <= old_rv:
                    continue  # we already hold this version or a newer one (our own write, via observe())
                self.store[name] = slim(obj)
                await self._emit(name, old, obj)
            elif etype == "DELETED":
                old = self.store.pop(name, None)
                await self._emit(name, old, None)
        return resource_version


class NodeWatcher(ListWatcher):
    """Keeps ``store`` (name → Node dict) in sync with the API server."""

    def __init__(self, kube: KubeTransport, *, watch_timeout: float = 300.0, max_backoff: float = 30.0,
                 on_restart: Callable[[str], None] | None = None) -> None:
        super().__init__(kube, path=NODES, what="node", watch_timeout=watch_timeout, max_backoff=max_backoff,
                         on_restart=on_restart)
