"""After each snapshot refresh, queue the Nodes whose server changed since the previous snapshot in anything a
Node mirrors: its addresses, its cloud labels (meta keys, tags, host group) or its running state. So a cloud
change reaches the Node at the next refresh (the periodic one: ``--server-refresh-period``) instead of its next
resync. No CloudSigma call and no write here: the queued reconcile decides, and writes nothing if nothing differs;
an unchanged refresh queues nothing at all."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ccm.nodes.view import NodeView
from ccm.providerid import ForeignProviderID, parse_provider_id
from ccm.servercache import ServerSnapshot
from cloudsigma.addresses import server_addresses
from cloudsigma.models import Server


class RequeueOnChange:
    """A :meth:`ServerCache.add_refresh_listener` listener."""

    def __init__(self, *, nodes: Callable[[], Iterable[NodeView]], enqueue: Callable[[str], None],
                 labels: Callable[[Server, ServerSnapshot], object] | None = None) -> None:
        #: The cloud labels a server's node would get (handed in by the tenant runtime; None: not managed).
        self._labels = labels
        self._nodes = nodes
        self._enqueue = enqueue
        #: server uuid → hash of what its Node mirrors (a hash: a thousand servers cost a thousand ints).
        self._previous: Mapping[str, int] | None = None
        self.queued = 0

    def fingerprint(self, server: Server, snapshot: ServerSnapshot) -> int:
        labels = self._labels(server, snapshot) if self._labels is not None else None
        known = server_addresses(server)
        return hash((labels, known.ipv4, known.ipv6, known.private_nics, known.unknown_public_nics, server.status))

    def __call__(self, snapshot: ServerSnapshot) -> None:
        current = {server.uuid: self.fingerprint(server, snapshot) for server in snapshot.servers}
        previous, self._previous = self._previous, current
        if previous is None:
            return  # the first snapshot: every node is being reconciled anyway
        changed = {uuid for uuid, fp in current.items() if previous.get(uuid) != fp}
        if not changed:
            return
        for node in self._nodes():
            if node.uninitialized:
                continue  # initialization is under way: it sets everything
            try:
                uuid = parse_provider_id(node.provider_id)
            except ForeignProviderID:
                continue
            if uuid in changed and node.name:
                self._enqueue(node.name)
                self.queued += 1
