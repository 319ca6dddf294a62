"""Reconcile one Node with its server: find it, decide, apply, report. One log line per decision.

Outcomes tell the controller what to do next: forget and resync later, or retry with backoff. A node whose
server cannot be found, is ambiguous, or is forbidden stays tainted, gets a Warning event that names what
was seen (uuids, owners, request ids, user, token subject) and is retried with backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import structlog

from ccm.cloudlabels.sync import CloudLabels
from ccm.kube.errors import KubeError
from ccm.kube.events import EventRecorder
from ccm.kube.transport import JSON
from ccm.metrics import Metrics
from ccm.nodes.apply import NodeApplier
from ccm.nodes.decide import NodePlan, plan_initialization, plan_resync, with_label_change
from ccm.nodes.labels import INSTANCE_TYPE
from ccm.nodes.matching import Match, MatchKind, describe_candidates, match_server
from ccm.nodes.view import NodeView, node_view
from ccm.servercache import ServerCache, ServerSnapshot
from cloudsigma.client import CloudSigmaClient
from cloudsigma.errors import CloudSigmaError, NotFound, PermissionDenied
from cloudsigma.models import Server
from credentials.base import CredentialError

log = structlog.get_logger(__name__)


class Result(Enum):
    SYNCED = "synced"  # wrote changes
    UNCHANGED = "unchanged"  # nothing to write
    BLOCKED = "blocked"  # a problem the operator must fix (retry with backoff)
    ERROR = "error"  # transient failure (retry with backoff)
    GONE = "gone"  # the node no longer exists


@dataclass
class Outcome:
    result: Result
    reason: str = ""
    retry: bool = False
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReconcileSettings:
    region: str
    zone: str
    user_email: str
    cluster_name: str = ""
    use_system_uuid: bool = True
    ipv6: bool = True
    #: "per-node": one CloudSigma call per reconcile (upstream's pattern), for benchmark comparisons.
    lookup: str = "snapshot"


class NodeReconciler:
    def __init__(
        self,
        *,
        store: Callable[[str], JSON | None],
        observe: Callable[[JSON], None] | None = None,
        cache: ServerCache,
        client: CloudSigmaClient,
        applier: NodeApplier,
        events: EventRecorder,
        metrics: Metrics,
        settings: ReconcileSettings,
        labels: CloudLabels | None = None,
    ) -> None:
        self._store = store
        self._observe = observe
        self._cache = cache
        self._client = client
        self._applier = applier
        self._events = events
        self._metrics = metrics
        self._s = settings
        #: Cloud labels (meta, tags, host group) kept in sync with every plan; None: not managed.
        self._labels = labels
        self._synced_uids: set[str] = set()

    async def reconcile(self, name: str) -> Outcome:
        started = time.monotonic()
        node = self._store(name)
        if node is None:
            if self._labels is not None:
                self._labels.forget(name)
            return Outcome(Result.GONE, "node deleted")
        view = node_view(node)
        bound = log.bind(node=name, cluster=self._s.cluster_name or None, cs_user=self._s.user_email,
                         region=self._s.region)
        try:
            outcome = await self._reconcile(node, view)
        except (CloudSigmaError, CredentialError) as exc:
            outcome = Outcome(Result.ERROR, f"cloud call failed: {exc}", retry=True, fields=exc.log_fields())
            if view.uninitialized:
                await self._events.node_event(node, "Warning", "CloudSigmaUnavailable",
                                              f"cannot initialize: {exc}")
        except KubeError as exc:
            outcome = Outcome(Result.ERROR, f"kubernetes call failed: {exc.message}", retry=True,
                              fields=exc.log_fields())
        duration = time.monotonic() - started
        self._metrics.reconciles.labels("node", outcome.result.value).inc()
        self._metrics.reconcile_duration.labels("node").observe(duration)
        level = bound.warning if outcome.result in (Result.BLOCKED, Result.ERROR) else bound.info
        if outcome.result is not Result.UNCHANGED or view.uninitialized:
            level("node_reconciled", action=outcome.result.value, reason=outcome.reason,
                  duration_ms=round(duration * 1000, 1), **outcome.fields)
        return outcome

    async def _reconcile(self, node: JSON, view: NodeView) -> Outcome:
        if self._s.lookup == "per-node":
            return await self._reconcile_per_node(node, view)
        snapshot = await self._cache.get()
        match = self._match(view, snapshot)
        if match.kind is not MatchKind.FOUND and match.kind is not MatchKind.FOREIGN_PROVIDER_ID:
            # Refresh on a miss before answering "not found": the server may be seconds old.
            snapshot = await self._cache.refresh(newer_than=snapshot.fetched_at)
            match = self._match(view, snapshot)
        if match.kind is MatchKind.FOUND and match.server is not None:
            return await self._sync(node, view, match.server, match, snapshot)
        return await self._unmatched(node, view, match, snapshot)

    async def _reconcile_per_node(self, node: JSON, view: NodeView) -> Outcome:
        """Upstream's call pattern: GET the server by providerID, or list by name — once per node."""
        if view.provider_id:
            match = match_server(view, {}, {})  # no listing: NOT_IN_SNAPSHOT sends us to the direct GET
            if match.kind is MatchKind.NOT_IN_SNAPSHOT and match.provider_uuid:
                return await self._provider_id_missing(node, view, match, {})
            return await self._unmatched(node, view, match, ServerSnapshot((), 0.0, True))
        listing = await self._client.list_servers(name=view.name)
        snapshot = ServerSnapshot.from_list(listing, time.monotonic())
        match = self._match(view, snapshot)
        if match.kind is MatchKind.FOUND and match.server is not None:
            return await self._sync(node, view, match.server, match, snapshot)
        return await self._unmatched(node, view, match, snapshot)

    def _match(self, view: NodeView, snapshot: ServerSnapshot) -> Match:
        return match_server(view, snapshot.by_uuid, snapshot.by_name, use_system_uuid=self._s.use_system_uuid)

    async def _sync(self, node: JSON, view: NodeView, server: Server, match: Match,
                    snapshot: ServerSnapshot) -> Outcome:
        fields: dict[str, Any] = {"server_uuid": server.uuid, "matched_by": match.via,
                                  "snapshot_request_ids": list(snapshot.request_ids)[:3],
                                  "credential_provider": snapshot.provider}
        initializing = view.uninitialized

        def replan(fresh: NodeView) -> NodePlan:
            if fresh.uninitialized:
                plan = plan_initialization(fresh, server, region=self._s.region, zone=self._s.zone, ipv6=self._s.ipv6)
            else:
                plan = plan_resync(fresh, server, ipv6=self._s.ipv6)
            return self._with_cloud_labels(fresh, server, snapshot, plan)

        plan = replan(view)
        if plan.blocked:
            fields["problem"] = plan.blocked
            if initializing:
                await self._events.node_event(node, "Warning", "InvalidNodeAddresses",
                                              f"node stays tainted: {plan.blocked}")
                return Outcome(Result.BLOCKED, plan.blocked, retry=True, fields=fields)
            return Outcome(Result.UNCHANGED, f"addresses not updated: {plan.blocked}", fields=fields)
        result = await self._applier.apply(node, plan, replan)
        if result.writes and self._observe is not None:
            self._observe(result.node)
        fields.update(writes=result.writes, conflicts=result.conflicts)
        for note in result.plan.notes:
            fields.setdefault("notes", []).append(note)
        written = node_view(result.node)
        if result.writes:
            fields["addresses"] = [f"{a.type}={a.address}" for a in written.addresses]
        if result.plan.blocked:
            return Outcome(Result.BLOCKED, result.plan.blocked, retry=True, fields=fields)
        now = datetime.now(UTC)
        if view.uid and view.uid not in self._synced_uids:
            self._synced_uids.add(view.uid)
            if view.created is not None:
                self._metrics.initial_sync_delay.observe(max(0.0, (now - view.created).total_seconds()))
        if initializing and not written.uninitialized:
            if view.created is not None:
                self._metrics.taint_removal_delay.observe(max(0.0, (now - view.created).total_seconds()))
            itype = (result.plan.labels or {}).get(INSTANCE_TYPE) or view.labels.get(INSTANCE_TYPE, "")
            self._events.record(
                result.node, "Normal", "Synced",
                f"initialized from server {server.uuid} ({server.name}) matched by {match.via}; "
                f"instance type {itype or 'unknown'}",
            )
            return Outcome(Result.SYNCED, "initialized", fields=fields)
        if result.writes:
            if result.plan.labels or result.plan.annotations:
                fields["labels_changed"] = dict(result.plan.labels)
            return Outcome(Result.SYNCED, _updated(result.writes, result.plan), fields=fields)
        return Outcome(Result.UNCHANGED, "in sync", fields=fields)

    def _with_cloud_labels(self, view: NodeView, server: Server, snapshot: ServerSnapshot,
                           plan: NodePlan) -> NodePlan:
        """``plan`` plus the change that keeps the node's cloud labels in sync with ``server`` (same patch)."""
        if self._labels is None:
            return plan
        desired = self._labels.desired(server, snapshot)
        change = self._labels.change(view, desired)
        self._labels.report(view.name, server.uuid, desired, change)
        return with_label_change(plan, change.labels, change.annotations)

    async def _unmatched(self, node: JSON, view: NodeView, match: Match, snapshot: ServerSnapshot) -> Outcome:
        fields: dict[str, Any] = {"servers_seen": len(snapshot.servers),
                                  "snapshot_request_ids": list(snapshot.request_ids)[:3],
                                  "credential_provider": snapshot.provider}
        warn = view.uninitialized
        if match.kind is MatchKind.FOREIGN_PROVIDER_ID:
            msg = f"{match.detail}; the node is left as it is"
            await self._events.node_event(node, "Warning", "ForeignProviderID", msg)
            return Outcome(Result.BLOCKED, msg, retry=True, fields=fields)
        if match.kind is MatchKind.AMBIGUOUS:
            msg = (f"{len(match.name_matches)} servers are named {view.name!r} in the account of "
                   f"{self._s.user_email}: {match.detail}. Not guessing: set spec.providerID "
                   f"(cloudsigma://<uuid>) on the node or rename/delete the extra server")
            fields["candidates"] = [s.uuid for s in match.name_matches]
            await self._events.node_event(node, "Warning", "DuplicateServerName", msg)
            return Outcome(Result.BLOCKED, msg, retry=True, fields=fields)
        if match.kind is MatchKind.NOT_IN_SNAPSHOT and match.provider_uuid:
            return await self._provider_id_missing(node, view, match, fields)
        msg = (f"no server named {view.name!r} among the {len(snapshot.servers)} servers of "
               f"{self._s.user_email} in {self._s.region}; check the VM's name and owner")
        if warn:
            await self._events.node_event(node, "Warning", "ServerNotFound", msg)
        return Outcome(Result.BLOCKED, msg, retry=True, fields=fields)

    async def _provider_id_missing(self, node: JSON, view: NodeView, match: Match,
                                   fields: dict[str, Any]) -> Outcome:
        uuid = match.provider_uuid or ""
        fields["server_uuid"] = uuid
        named = match.name_matches
        try:
            server = await self._client.get_server(uuid)
        except PermissionDenied as exc:
            fields.update(exc.log_fields())
            msg = (f"server {uuid} from spec.providerID answers 403 to {exc.context.user or self._s.user_email} "
                   f"(token sub {exc.context.token_subject or 'n/a'}, request id {exc.request_id}): "
                   f"{exc.error_message or exc.message}")
            if named:
                fields["accessible_servers_with_node_name"] = [s.uuid for s in named]
                msg += (f". Server(s) named {view.name!r} that this user can access: {describe_candidates(named)}."
                        " The providerID is stale (the VM was recreated under a new uuid, seed 001): providerID is "
                        "immutable, so delete this Node and let the kubelet re-register it; check who owns "
                        f"{uuid} and delete that VM if it is an orphan")
            else:
                msg += (". The server belongs to another user or the token acts as the wrong user: check "
                        "CLOUDSIGMA_USER_EMAIL and the token's subject")
            await self._events.node_event(node, "Warning", "ServerInaccessible", msg)
            log.error("server_forbidden", node=view.name, diagnosis=msg, **exc.log_fields())
            return Outcome(Result.BLOCKED, msg, retry=True, fields=fields)
        except NotFound as exc:
            fields.update(exc.log_fields())
            msg = f"server {uuid} from spec.providerID does not exist (404, request id {exc.request_id})"
            if named:
                msg += (f"; server(s) named {view.name!r} exist: {describe_candidates(named)} — the node "
                        "must be re-registered to use them (providerID is immutable)")
            await self._events.node_event(node, "Warning", "ServerNotFound", msg)
            return Outcome(Result.BLOCKED, msg, retry=True, fields=fields)
        # Visible to a direct GET but not in the listing (listing lag): use it.
        return await self._sync(node, view, server, Match(MatchKind.FOUND, server=server, via="providerID"),
                                ServerSnapshot(servers=(server,), fetched_at=time.monotonic(), complete=False))


def _updated(writes: int, plan: NodePlan) -> str:
    """What a resync wrote: the status write (addresses) comes first, the metadata patch second."""
    what = []
    if writes > int(plan.writes_spec):
        what.append("addresses")
    if plan.labels or plan.annotations:
        what.append("labels")
    return " and ".join(what or ["node"]) + " updated"
