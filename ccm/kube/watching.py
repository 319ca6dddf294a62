"""The Node watch: the informer (:class:`ccm.kube.informer.ListWatch`) over ``/api/v1/nodes``. Its log events
are ``nodes_listed``, ``node_watch_expired``, ``node_watch_failed``, ``node_watch_crashed``,
``node_handler_failed`` and ``node_observer_failed``."""

from __future__ import annotations

from collections.abc import Callable

from ccm.kube.fetching import NODES
from ccm.kube.informer import ListWatch, LogEvents, resource_version
from ccm.kube.transport import JSON, KubeTransport

__all__ = ["NodeWatcher", "slim"]


def slim(obj: JSON) -> JSON | None:
    """Drop what no controller reads and that dominates a Node's size (managedFields, image lists)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    status = obj.get("status")
    if isinstance(status, dict):
        status.pop("images", None)
    return obj


class NodeWatcher(ListWatch[JSON]):
    """Keeps ``store`` (name → Node dict) in sync with the API server."""

    def __init__(self, kube: KubeTransport, *, watch_timeout: float = 300.0, max_backoff: float = 30.0,
                 on_restart: Callable[[str], None] | None = None) -> None:
        super().__init__(kube, NODES, transform=slim, version=resource_version, watch_timeout=watch_timeout,
                         max_backoff=max_backoff, name="nodes", events=LogEvents.of("node"), on_restart=on_restart)
