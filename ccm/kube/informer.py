"""A generic list+watch (informer) of one kind of object into a local store.

Same semantics as :class:`ccm.kube.watching.NodeWatcher`, for any resource path (core or custom, namespaced or
cluster-wide, with label and field selectors): an initial paged list, then one watch resumed from the last seen
resourceVersion (bookmarks included), 410 Gone → relist, other errors → reconnect with jittered exponential
backoff. A relist reports only what differs from the store (added, changed resourceVersion, gone), so a watch
that expires does not replay every object to the handlers.

``transform`` runs on every object before it is stored: it slims the object to the fields its users read (a
store of Secrets should not hold their other keys) or drops it (``None``: as if the object did not exist, so an
object that stops qualifying is reported as deleted).
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from ccm.kube.errors import Gone, KubeError
from ccm.kube.transport import JSON, KubeTransport

log = structlog.get_logger(__name__)

Handler = Callable[[str, JSON | None, JSON | None], Awaitable[None] | None]
"""Called as handler(key, old, new): old None → added, new None → deleted."""

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


async def list_all(kube: KubeTransport, path: str, *, query: Mapping[str, Any] | None = None,
                   page_size: int = 500) -> tuple[list[JSON], str]:
    """Every object at ``path`` (paged with ``limit``/``continue``) and the list's resourceVersion to watch from."""
    items: list[JSON] = []
    token: str | None = None
    version = ""
    while True:
        page_query: dict[str, Any] = {**(query or {}), "limit": page_size}
        if token:
            page_query["continue"] = token
        page = await kube.request("GET", path, query=page_query)
        items.extend(i for i in page.get("items", []) if isinstance(i, dict))
        meta = page.get("metadata") or {}
        version = str(meta.get("resourceVersion") or version)
        token = meta.get("continue")
        if not token:
            return items, version


class Informer:
    """Keeps ``store`` (key → object, see :func:`object_key`) in sync with the objects at ``path``."""

    def __init__(self, kube: KubeTransport, path: str, *, label_selector: str | None = None,
                 field_selector: str | None = None, transform: Transform | None = None,
                 watch_timeout: float = 300.0, max_backoff: float = 30.0, name: str = "") -> None:
        self._kube = kube
        self.path = path
        self.name = name or path
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["labelSelector"] = label_selector
        if field_selector:
            self._selectors["fieldSelector"] = field_selector
        self._transform = transform
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._handlers: list[Handler] = []
        self.store: dict[str, JSON] = {}
        #: Set once the first list is in the store (and its handlers ran).
        self.synced = asyncio.Event()
        #: Monotonic time of the last event or successful (re)list.
        self.last_activity = time.monotonic()
        self.relists = 0
        self.restarts = 0

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def _prepare(self, obj: JSON) -> JSON | None:
        return self._transform(obj) if self._transform is not None else obj

    async def _emit(self, key: str, old: JSON | None, new: JSON | None) -> None:
        for handler in self._handlers:
            try:
                result = handler(key, old, new)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one bad handler call must not stop the watch
                log.exception("informer_handler_failed", informer=self.name, key=key)

    async def _put(self, key: str, new: JSON | None) -> None:
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
            version = resource_version(old)
            if (version is not None and version == resource_version(new)) or old == new:
                return
        self.store[key] = new
        await self._emit(key, old, new)

    async def _relist(self) -> str:
        items, version = await list_all(self._kube, self.path, query=self._selectors)
        self.relists += 1
        fresh: dict[str, JSON] = {}
        for item in items:
            prepared = self._prepare(item)
            if prepared is not None:
                fresh[object_key(item)] = prepared
        for key in [k for k in self.store if k not in fresh]:
            await self._put(key, None)
        for key, obj in fresh.items():
            await self._put(key, obj)
        self.last_activity = time.monotonic()
        self.synced.set()
        log.debug("informer_listed", informer=self.name, count=len(self.store), resource_version=version)
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
                log.info("informer_watch_expired", informer=self.name, reason="410 Gone: relisting")
                version = None
                self.restarts += 1
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                self.restarts += 1
                log.warning("informer_watch_failed", informer=self.name, retry_in=round(backoff, 2),
                            **exc.log_fields())
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._max_backoff)
            except Exception:
                self.restarts += 1
                log.exception("informer_watch_crashed", informer=self.name, retry_in=round(backoff, 2))
                version = None
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._max_backoff)

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
                await self._put(key, self._prepare(obj))
            elif etype == "DELETED":
                await self._put(key, None)
        return version
