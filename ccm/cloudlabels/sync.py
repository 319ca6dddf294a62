"""What the node reconciler asks about cloud labels: the desired labels of a server in a snapshot, the change
for a node, and warnings about skipped keys — logged once per node and change, not on every resync."""

from __future__ import annotations

import structlog

from ccm.cloudlabels.decide import DesiredLabels, LabelChange, LabelPolicy, desired_cloud_labels, label_change
from ccm.config import Settings
from ccm.nodes.view import NodeView
from ccm.servercache import ServerSnapshot
from cloudsigma.models import Server

log = structlog.get_logger(__name__)


def policy_from_settings(settings: Settings) -> LabelPolicy:
    return LabelPolicy(meta_keys=tuple(settings.node_label_meta_keys), tags=tuple(settings.node_label_tags),
                       host_group=settings.node_label_host_group)


class CloudLabels:
    """Cloud labels of nodes under one :class:`LabelPolicy`."""

    def __init__(self, policy: LabelPolicy) -> None:
        self.policy = policy
        #: node name → what was last reported about it (only nodes with something to report).
        self._reported: dict[str, tuple[object, ...]] = {}

    def desired(self, server: Server, snapshot: ServerSnapshot) -> DesiredLabels:
        return desired_cloud_labels(server, self.policy, tag_names=snapshot.tag_names,
                                    host_groups=snapshot.host_groups)

    @staticmethod
    def change(view: NodeView, desired: DesiredLabels) -> LabelChange:
        return label_change(view.labels, view.annotations, desired)

    def report(self, node: str, server_uuid: str, desired: DesiredLabels, change: LabelChange) -> None:
        """Warn about skipped meta keys/tags and about our keys someone else set — once until it changes."""
        seen: tuple[object, ...] = (*desired.skipped, *change.foreign)
        if self._reported.get(node, ()) == seen:
            return
        if seen:
            self._reported[node] = seen
        else:
            self._reported.pop(node, None)
        for skipped in desired.skipped:
            log.warning("cloud_label_skipped", node=node, server_uuid=server_uuid, source=skipped.source,
                        key=skipped.name, reason=skipped.reason)
        for key in change.foreign:
            log.warning("cloud_label_left_alone", node=node, server_uuid=server_uuid, label=key,
                        reason="the node already has this label and the CCM did not set it: it is never "
                               "changed (remove it to let the CCM manage it)")

    def change_for(self, view: NodeView, server: Server, snapshot: ServerSnapshot) -> LabelChange:
        """The change that keeps ``view``'s cloud labels in sync with ``server`` (what the node reconciler asks,
        :class:`ccm.nodes.reconcile.LabelKeeper`); skipped keys and foreign labels are reported once."""
        desired = self.desired(server, snapshot)
        change = self.change(view, desired)
        self.report(view.name, server.uuid, desired, change)
        return change

    def fingerprint(self, server: Server, snapshot: ServerSnapshot) -> object:
        """What the labels of ``server``'s node would be (compared between snapshots by the change trigger,
        :class:`ccm.nodes.changes.RequeueOnChange`)."""
        desired = self.desired(server, snapshot)
        return tuple(sorted(desired.labels.items())), desired.unknown

    def forget(self, node: str) -> None:
        self._reported.pop(node, None)
