"""After a snapshot refresh, queue the nodes whose server's cloud labels changed since the previous snapshot,
so a changed meta key, tag or host shows on the node at the next refresh instead of the next resync.
No CloudSigma call and no write here: the queued reconcile decides (and writes nothing if nothing differs)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ccm.cloudlabels.decide import DesiredLabels, LabelPolicy, desired_cloud_labels
from ccm.nodes.view import NodeView
from ccm.providerid import ForeignProviderID, parse_provider_id
from ccm.servercache import ServerSnapshot

Fingerprint = tuple[tuple[tuple[str, str], ...], frozenset[str]]


class RelabelOnRefresh:
    """A :meth:`ServerCache.add_refresh_listener` listener."""

    def __init__(self, policy: LabelPolicy, *, nodes: Callable[[], Iterable[NodeView]],
                 enqueue: Callable[[str], None]) -> None:
        self._policy = policy
        self._nodes = nodes
        self._enqueue = enqueue
        self._previous: Mapping[str, Fingerprint] | None = None
        self.queued = 0

    def __call__(self, snapshot: ServerSnapshot) -> None:
        current = {server.uuid: _fingerprint(desired_cloud_labels(
            server, self._policy, tag_names=snapshot.tag_names, host_groups=snapshot.host_groups))
            for server in snapshot.servers}
        previous, self._previous = self._previous, current
        if previous is None:
            return  # the first snapshot: every node is being reconciled anyway
        changed = {uuid for uuid, fp in current.items() if previous.get(uuid) != fp}
        if not changed:
            return
        for node in self._nodes():
            if node.uninitialized:
                continue  # initialization is under way: it sets the labels too
            try:
                uuid = parse_provider_id(node.provider_id)
            except ForeignProviderID:
                continue
            if uuid in changed and node.name:
                self._enqueue(node.name)
                self.queued += 1


def _fingerprint(desired: DesiredLabels) -> Fingerprint:
    return tuple(sorted(desired.labels.items())), desired.unknown
