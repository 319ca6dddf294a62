"""The Node watch: the informer (:class:`ccm.kube.informer.ListWatch`) over ``/api/v1/nodes`` whose store holds
the compact record the controllers decide on (:class:`ccm.nodes.view.NodeView`, built page by page during a
list), never the API's JSON. Its log events are ``nodes_listed``, ``node_watch_expired``, ``node_watch_failed``,
``node_watch_crashed``, ``node_handler_failed`` and ``node_observer_failed``."""

from __future__ import annotations

from collections.abc import Callable

from ccm.kube.fetching import NODES
from ccm.kube.informer import Handler, ListWatch, LogEvents
from ccm.kube.transport import KubeTransport
from ccm.nodes.view import NodeView, node_view

__all__ = ["NODE_PAGE_SIZE", "NodeHandler", "NodeWatcher"]

#: Nodes per list page. Each page's JSON is decoded whole (a Node with its images and managedFields is 10-20
#: KiB of JSON, several times that as Python objects) before its records are kept: a smaller page lowers the
#: transient — and the memory the allocator keeps afterwards — at the cost of a request per 100 Nodes.
NODE_PAGE_SIZE = 100

NodeHandler = Handler[NodeView]


def _version(view: NodeView) -> str | None:
    return view.resource_version or None


class NodeWatcher(ListWatch[NodeView]):
    """Keeps ``store`` (name → :class:`NodeView`) in sync with the API server."""

    def __init__(self, kube: KubeTransport, *, watch_timeout: float = 300.0, max_backoff: float = 30.0,
                 on_restart: Callable[[str], None] | None = None) -> None:
        super().__init__(kube, NODES, transform=node_view, version=_version, watch_timeout=watch_timeout,
                         max_backoff=max_backoff, name="nodes", events=LogEvents.of("node"), on_restart=on_restart,
                         page_size=NODE_PAGE_SIZE)
