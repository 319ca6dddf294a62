"""The Node watch: the informer (:class:`ccm.kube.informer.ListWatch`) over ``/api/v1/nodes`` whose store holds
the compact record the controllers decide on (:class:`ccm.nodes.view.NodeView`, built page by page during a
list), never the API's JSON. Its log events are ``nodes_listed``, ``node_watch_expired``, ``node_watch_failed``,
``node_watch_crashed``, ``node_handler_failed`` and ``node_observer_failed``."""

from __future__ import annotations

from collections.abc import Callable

from ccm.kube.fetching import NODES
from ccm.kube.informer import ListWatch, LogEvents
from ccm.kube.transport import KubeTransport
from ccm.nodes.view import NodeView, node_view

__all__ = ["NODE_PAGE_SIZE", "NodeWatcher"]

#: Nodes per list page. Each page's JSON is decoded whole (a Node with its images and managedFields is 10-20
#: KiB of JSON, about four times that as Python objects) before its records are kept, and the allocator keeps
#: about one decoded page afterwards (bench.nodestore: ~2 MiB at 50, ~4 MiB at 100, ~20 MiB at client-go's 500)
#: — at the cost of one list request per 50 Nodes when (re)listing.
NODE_PAGE_SIZE = 50


def _version(view: NodeView) -> str | None:
    return view.resource_version or None


class NodeWatcher(ListWatch[NodeView]):
    """Keeps ``store`` (name → :class:`NodeView`) in sync with the API server."""

    def __init__(self, kube: KubeTransport, *, watch_timeout: float = 300.0, max_backoff: float = 30.0,
                 on_restart: Callable[[str], None] | None = None) -> None:
        super().__init__(kube, NODES, transform=node_view, version=_version, watch_timeout=watch_timeout,
                         max_backoff=max_backoff, name="nodes", events=LogEvents.of("node"), on_restart=on_restart,
                         page_size=NODE_PAGE_SIZE)
