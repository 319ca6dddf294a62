"""Reconcile one Node with its server: find it, decide, apply, report. One log line per decision.

Outcomes tell the controller what to do next: forget and resync later, retry with backoff, or wait for the
cloud (re-queued at once when it recovers). An outcome also carries the Event to record, if any; it is
recorded in one place (:meth:`NodeReconciler.reconcile`), and the recorder turns repeats of a (node, reason)
into one Event with a growing count. Event messages name what was seen (uuids, owners, user, token subject)
but never per-attempt values: request ids stay in the log line and in the Event's annotations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

import structlog

from ccm.kube.errors import KubeError
from ccm.kube.events import EventRecorder, ObjectEvent
from ccm.kube.transport import JSON
from ccm.metrics import Metrics
from ccm.nodes.account import AccountMonitor, Verdict
from ccm.nodes.apply import NodeApplier
from ccm.nodes.decide import INVALID_NODE_ADDRESSES, NodePlan, plan_initialization, plan_resync, with_label_change
from ccm.nodes.evidence import NodeClock, Required, evidence_fields, uuid_forms
from ccm.nodes.labels import INSTANCE_TYPE
from ccm.nodes.matching import Match, MatchKind, describe_candidates, match_server
from ccm.nodes.view import NodeView
from ccm.providerid import ForeignProviderID, parse_provider_id
from ccm.servercache import ServerCache, ServerSnapshot
from cloudsigma.client import CloudSigmaClient
from cloudsigma.errors import CloudSigmaError, NotFound, PermissionDenied
from cloudsigma.models import Server
from credentials.base import CredentialError

log = structlog.get_logger(__name__)


class LabelPatch(Protocol):
    """Labels and annotations to merge into the node's patch (None: remove the key)."""

    @property
    def labels(self) -> Mapping[str, str | None]: ...

    @property
    def annotations(self) -> Mapping[str, str | None]: ...


class LabelKeeper(Protocol):
    """Labels a feature controller keeps on each node, written in the node reconciler's own patch: the cloud labels
    (:class:`ccm.cloudlabels.sync.CloudLabels`, handed in by the tenant runtime). The one seam through which the
    reconciler asks a controller above it; it only answers, it never calls back."""

    def change_for(self, view: NodeView, server: Server, snapshot: ServerSnapshot) -> LabelPatch: ...

    def forget(self, node: str) -> None: ...


class Result(Enum):
    SYNCED = "synced"  # wrote changes
    UNCHANGED = "unchanged"  # nothing to write
    BLOCKED = "blocked"  # a problem the operator must fix (retry with backoff)
    ERROR = "error"  # transient failure (retry with backoff)
    GONE = "gone"  # the node no longer exists
    SUPERSEDED = "superseded"  # deleted or re-registered while we wrote: the new object gets its own reconcile


@dataclass
class Outcome:
    result: Result
    reason: str = ""
    retry: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    #: The Event to record about the node, if any (recorded in one place, de-duplicated there).
    event: ObjectEvent | None = None
    #: Waiting for CloudSigma (outage, rate limit, wrong account): re-queued at once when it is back.
    waiting_for_cloud: bool = False


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
    #: The oldest snapshot a resync of an initialized Node may use (None: the cache's max age). With the periodic
    #: refresh on, up to its period: every refresh re-queues the Nodes whose server changed, so resyncs need no
    #: listing of their own (see ccm.tenant.controllers.resync_max_age).
    resync_max_age: float | None = None


@dataclass
class _Target:
    """The server a write is being decided for; replaced when a replan matches again."""

    server: Server
    match: Match
    snapshot: ServerSnapshot
    #: The moment the evidence had to be newer than, if the decision needed fresh evidence.
    required: Required | None = None


class NodeReconciler:
    def __init__(
        self,
        *,
        store: Callable[[str], NodeView | None],
        observe: Callable[[JSON], None] | None = None,
        cache: ServerCache,
        client: CloudSigmaClient,
        applier: NodeApplier,
        events: EventRecorder,
        metrics: Metrics,
        settings: ReconcileSettings,
        labels: LabelKeeper | None = None,
        account: AccountMonitor | None = None,
        node_clock: NodeClock | None = None,
    ) -> None:
        self._store = store
        #: When each Node's evidence must have started (fed by the node watcher; see ccm.nodes.evidence).
        self._clock = node_clock if node_clock is not None else NodeClock(clock=cache.now)
        self._observe = observe
        self._cache = cache
        self._client = client
        self._applier = applier
        self._events = events
        self._metrics = metrics
        self._s = settings
        self._account = account
        #: Cloud labels (meta, tags, host group) kept in sync with every plan; None: not managed.
        self._labels = labels

    async def reconcile(self, name: str) -> Outcome:
        started = time.monotonic()
        view = self._store(name)
        if view is None:
            if self._labels is not None:
                self._labels.forget(name)
            return Outcome(Result.GONE, "node deleted")
        bound = log.bind(node=name, cluster=self._s.cluster_name or None, cs_user=self._s.user_email,
                         region=self._s.region)
        try:
            outcome = await self._reconcile(view)
        except (CloudSigmaError, CredentialError) as exc:
            outcome = self._cloud_failed(view, exc)
        except KubeError as exc:
            outcome = Outcome(Result.ERROR, f"kubernetes call failed: {exc.message}", retry=True,
                              fields=exc.log_fields())
        if outcome.event is not None:
            self._events.record_for(view.event_ref(), outcome.event)  # the one place node events are recorded
        duration = time.monotonic() - started
        self._metrics.reconciles.labels("node", outcome.result.value).inc()
        self._metrics.reconcile_duration.labels("node").observe(duration)
        warn = outcome.result in (Result.BLOCKED, Result.ERROR) or (
            outcome.event is not None and outcome.event.type == "Warning")
        if outcome.result is not Result.UNCHANGED or view.uninitialized or warn:
            level = bound.warning if warn else bound.info
            level("node_reconciled", action=outcome.result.value, reason=outcome.reason,
                  duration_ms=round(duration * 1000, 1), **outcome.fields)
        return outcome

    def _cloud_failed(self, view: NodeView, exc: CloudSigmaError | CredentialError) -> Outcome:
        event = None
        if view.uninitialized:
            text = exc.event_text() if isinstance(exc, CloudSigmaError) else str(exc)
            event = ObjectEvent.warning("CloudSigmaUnavailable", f"cannot initialize: {text}",
                                        request_id=exc.request_id)
        return Outcome(Result.ERROR, f"cloud call failed: {exc}", retry=True, fields=exc.log_fields(), event=event,
                       waiting_for_cloud=True)

    def _wrong_account(self, snapshot: ServerSnapshot) -> Outcome | None:
        if self._account is None or self._account.verdict(snapshot) is not Verdict.WRONG:
            return None
        # One cluster-level warning says it (AccountMonitor); nothing per node: no GET, no Event, no write.
        return Outcome(Result.BLOCKED, "the server listing is of another account (see cloudsigma_wrong_account): "
                       "node left as it is", retry=True, waiting_for_cloud=True,
                       fields={"credential_provider": snapshot.provider, "servers_seen": len(snapshot.servers)})

    async def _reconcile(self, view: NodeView) -> Outcome:
        if self._s.lookup == "per-node":
            return await self._reconcile_per_node(view)
        found = await self._find(view)
        if isinstance(found, Outcome):
            return found
        match, snapshot, required = found
        if match.kind is MatchKind.FOUND and match.server is not None:
            return await self._sync(view, _Target(match.server, match, snapshot, required))
        return await self._unmatched(view, match, snapshot)

    async def _find(self, view: NodeView) -> tuple[Match, ServerSnapshot, Required | None] | Outcome:
        """The node's server, from evidence fresh enough for what may be decided from it (ccm.nodes.evidence):
        after a reboot, a listing newer than it; for the providerID, a match by name (or a systemUUID no server
        has) only from a listing newer than the Node — shared by every Node that needs one."""
        required = self._clock.required(view)
        if required is not None and required.reason == "reboot":
            snapshot = await self._cache.fresh_after(required.after)
        else:
            resync = not view.uninitialized and bool(view.provider_id)
            snapshot = await self._cache.get(max_age=self._s.resync_max_age if resync else None)
        if (wrong := self._wrong_account(snapshot)) is not None:
            return wrong
        match = self._match(view, snapshot)
        by_uuid = match.kind is MatchKind.FOUND and match.via == "systemUUID"
        if required is not None and not by_uuid and snapshot.fetched_at <= required.after:
            # Identity by name from a listing that may predate the Node: never (a replaced VM's old server).
            snapshot = await self._cache.fresh_after(required.after)
        elif match.kind not in (MatchKind.FOUND, MatchKind.FOREIGN_PROVIDER_ID, MatchKind.NOT_IN_SNAPSHOT):
            # Refresh on a miss before answering "not found": the server may be seconds old. (A providerID's
            # server missing from the snapshot is asked for directly instead: one GET, no listing.)
            snapshot = await self._cache.refresh(newer_than=snapshot.fetched_at)
        else:
            return match, snapshot, required
        if (wrong := self._wrong_account(snapshot)) is not None:
            return wrong
        return self._match(view, snapshot), snapshot, required

    async def _reconcile_per_node(self, view: NodeView) -> Outcome:
        """Upstream's call pattern: GET the server by providerID, or list by name — once per node."""
        if view.provider_id:
            match = match_server(view, {}, {})  # no listing: NOT_IN_SNAPSHOT sends us to the direct GET
            if match.kind is MatchKind.NOT_IN_SNAPSHOT and match.provider_uuid:
                return await self._provider_id_missing(view, match, {})
            return await self._unmatched(view, match, ServerSnapshot((), 0.0, True))
        listing = await self._client.list_servers(name=view.name)
        snapshot = ServerSnapshot.from_list(listing, time.monotonic())
        match = self._match(view, snapshot)
        if match.kind is MatchKind.FOUND and match.server is not None:
            return await self._sync(view, _Target(match.server, match, snapshot))
        return await self._unmatched(view, match, snapshot)

    def _match(self, view: NodeView, snapshot: ServerSnapshot) -> Match:
        return match_server(view, snapshot.by_uuid, snapshot.by_name, use_system_uuid=self._s.use_system_uuid)

    def _plan(self, view: NodeView, target: _Target) -> NodePlan:
        known = target.snapshot.addresses(target.server)
        if view.uninitialized:
            plan = plan_initialization(view, target.server, region=self._s.region, zone=self._s.zone,
                                       ipv6=self._s.ipv6, known=known)
        else:
            plan = plan_resync(view, target.server, region=self._s.region, zone=self._s.zone, ipv6=self._s.ipv6,
                               known=known)
        return self._with_cloud_labels(view, target.server, target.snapshot, plan)

    async def _rematch(self, fresh: NodeView, target: _Target) -> _Target | None:
        """The fresh node's server from current data: a conflict retry never reuses the old decision's server,
        and holds its evidence to the same freshness rule."""
        required = target.required
        if self._s.lookup == "per-node":
            snapshot, match = target.snapshot, self._match(fresh, target.snapshot)
        else:
            found = await self._find(fresh)
            if isinstance(found, Outcome):
                return None
            match, snapshot, required = found
        if match.kind is MatchKind.FOUND and match.server is not None:
            return _Target(match.server, match, snapshot, required)
        try:
            same = bool(fresh.provider_id) and parse_provider_id(fresh.provider_id) == target.server.uuid
        except ForeignProviderID:
            same = False
        # A server seen by a direct GET but not (yet) listed still answers for a node that names it.
        return _Target(target.server, target.match, snapshot, required) if same else None

    async def _sync(self, view: NodeView, target: _Target) -> Outcome:
        fields: dict[str, Any] = {"server_uuid": target.server.uuid, "matched_by": target.match.via,
                                  "snapshot_request_ids": list(target.snapshot.request_ids)[:3],
                                  "credential_provider": target.snapshot.provider}
        initializing = view.uninitialized
        current = target

        async def replan(fresh: NodeView) -> NodePlan | None:
            nonlocal current
            found = await self._rematch(fresh, current)
            if found is None:
                return None
            current = found
            return self._plan(fresh, found)

        plan = self._plan(view, target)
        if plan.blocked:
            return self._blocked(view, plan, fields)
        decided_at = self._cache.now()
        result = await self._applier.apply(view, plan, replan)
        # What the (last) write was decided from, and how long before it that listing started.
        fields.update(evidence_fields(current.snapshot, decided_at if current is target else self._cache.now(),
                                      current.required))
        if not result.superseded and not result.abandoned:
            self._clock.satisfied(view, current.snapshot)
        if result.writes and result.fetched is not None and self._observe is not None:
            self._observe(result.fetched)
        fields.update(writes=result.writes, conflicts=result.conflicts, server_uuid=current.server.uuid,
                      matched_by=current.match.via)
        for note in result.plan.notes:
            fields.setdefault("notes", []).append(note)
        written = result.node
        if result.writes:
            fields["addresses"] = [f"{a.type}={a.address}" for a in written.addresses]
        if result.superseded:
            return Outcome(Result.SUPERSEDED, "the node was deleted or re-registered while it was being written: "
                           "nothing written to the new object, which is reconciled on its own", retry=True,
                           fields=fields)
        if result.abandoned:
            return Outcome(Result.ERROR, "the node changed and no longer matches its server: deciding again",
                           retry=True, fields=fields)
        if result.plan.blocked:
            return self._blocked(written, result.plan, fields)
        if initializing and not written.uninitialized:
            # Both upstream histograms: once per node, when it is initialized (not on restarts or resyncs).
            if view.created is not None:
                delay = max(0.0, (datetime.now(UTC) - view.created).total_seconds())
                self._metrics.taint_removal_delay.observe(delay)
                self._metrics.initial_sync_delay.observe(delay)
            server = current.server
            itype = (result.plan.labels or {}).get(INSTANCE_TYPE) or view.labels.get(INSTANCE_TYPE, "")
            return Outcome(Result.SYNCED, "initialized", fields=fields, event=ObjectEvent.normal(
                "Synced", f"initialized from server {server.uuid} ({server.name}) matched by {current.match.via}; "
                f"instance type {itype or 'unknown'}"))
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
        change = self._labels.change_for(view, server, snapshot)
        return with_label_change(plan, change.labels, change.annotations)

    @staticmethod
    def _blocked(view: NodeView, plan: NodePlan, fields: dict[str, Any]) -> Outcome:
        problem = plan.blocked or ""
        fields["problem"] = problem
        reason = plan.blocked_reason or INVALID_NODE_ADDRESSES
        if view.uninitialized:
            return Outcome(Result.BLOCKED, problem, retry=True, fields=fields,
                           event=ObjectEvent.warning(reason, f"node stays tainted: {problem}"))
        # Initialized: upstream only reports; the node keeps its addresses until the problem is fixed.
        return Outcome(Result.UNCHANGED, f"addresses not updated: {problem}", fields=fields,
                       event=ObjectEvent.warning(reason, f"addresses not updated: {problem}"))

    async def _unmatched(self, view: NodeView, match: Match, snapshot: ServerSnapshot) -> Outcome:
        fields: dict[str, Any] = {"servers_seen": len(snapshot.servers),
                                  "snapshot_request_ids": list(snapshot.request_ids)[:3],
                                  "credential_provider": snapshot.provider}
        if match.kind is MatchKind.FOREIGN_PROVIDER_ID:
            msg = f"{match.detail}; the node is left as it is"
            return Outcome(Result.BLOCKED, msg, retry=True, fields=fields,
                           event=ObjectEvent.warning("ForeignProviderID", msg))
        if match.kind is MatchKind.AMBIGUOUS:
            msg = (f"{len(match.name_matches)} servers are named {view.name!r} in the account of "
                   f"{self._s.user_email}: {match.detail}. Not guessing: set spec.providerID "
                   f"(cloudsigma://<uuid>) on the node or rename/delete the extra server")
            fields["candidates"] = [s.uuid for s in match.name_matches]
            return Outcome(Result.BLOCKED, msg, retry=True, fields=fields,
                           event=ObjectEvent.warning("DuplicateServerName", msg))
        if match.kind is MatchKind.NOT_IN_SNAPSHOT and match.provider_uuid:
            return await self._provider_id_missing(view, match, fields)
        if match.kind is MatchKind.SYSTEM_UUID_MISMATCH:
            forms = uuid_forms(view.system_uuid)
            named = ", ".join(s.uuid for s in match.name_matches)
            msg = (f"the node reports systemUUID {forms[0]}" + (f" (byte-swapped: {forms[1]})" if len(forms) > 1
                                                                 else "")
                   + f", which no server of {self._s.user_email} in {self._s.region} has; the server named "
                   f"{view.name!r} is {named}: not matching by name (a replaced or foreign VM). Check which VM "
                   "this is; set --node-lookup-by-system-uuid=false only if systemUUIDs are not server uuids")
            fields.update(system_uuid=forms[0], candidates=[s.uuid for s in match.name_matches])
            fields.update(evidence_fields(snapshot, self._cache.now()))
            return Outcome(Result.BLOCKED, msg, retry=True, fields=fields,
                           event=ObjectEvent.warning("SystemUUIDMismatch", msg))
        msg = (f"no server named {view.name!r} among the servers of {self._s.user_email} in {self._s.region}; "
               "check the VM's name and owner")
        event = ObjectEvent.warning("ServerNotFound", msg) if view.uninitialized else None
        return Outcome(Result.BLOCKED, msg, retry=True, fields=fields, event=event)

    async def _provider_id_missing(self, view: NodeView, match: Match,
                                   fields: dict[str, Any]) -> Outcome:
        uuid = match.provider_uuid or ""
        fields["server_uuid"] = uuid
        named = match.name_matches
        try:
            server = await self._client.get_server(uuid)
        except PermissionDenied as exc:
            fields.update(exc.log_fields())
            msg = (f"server {uuid} from spec.providerID answers 403 to {exc.context.user or self._s.user_email} "
                   f"(token sub {exc.context.token_subject or 'n/a'}): {exc.error_message or exc.message}")
            if named:
                fields["accessible_servers_with_node_name"] = [s.uuid for s in named]
                msg += (f". Server(s) named {view.name!r} that this user can access: {describe_candidates(named)}."
                        " The providerID is stale (the VM was recreated under a new uuid, seed 001): providerID is "
                        "immutable, so delete this Node and let the kubelet re-register it; check who owns "
                        f"{uuid} and delete that VM if it is an orphan")
            else:
                msg += (". The server belongs to another user or the token acts as the wrong user: check "
                        "CLOUDSIGMA_USER_EMAIL and the token's subject")
            log.error("server_forbidden", node=view.name, diagnosis=msg, **exc.log_fields())
            return Outcome(Result.BLOCKED, msg, retry=True, fields=fields,
                           event=ObjectEvent.warning("ServerInaccessible", msg, request_id=exc.request_id))
        except NotFound as exc:
            fields.update(exc.log_fields())
            msg = f"server {uuid} from spec.providerID does not exist (404 notexist)"
            if named:
                msg += (f"; server(s) named {view.name!r} exist: {describe_candidates(named)} — the node "
                        "must be re-registered to use them (providerID is immutable)")
            return Outcome(Result.BLOCKED, msg, retry=True, fields=fields,
                           event=ObjectEvent.warning("ServerNotFound", msg, request_id=exc.request_id))
        # Visible to a direct GET but not in the listing (listing lag): use it.
        snapshot = ServerSnapshot(servers=(server,), fetched_at=time.monotonic(), complete=False)
        return await self._sync(view, _Target(server, Match(MatchKind.FOUND, server=server, via="providerID"),
                                              snapshot))


def _updated(writes: int, plan: NodePlan) -> str:
    """What a resync wrote: the status write (addresses) comes first, the metadata patch second."""
    what = []
    if writes > int(plan.writes_spec):
        what.append("addresses")
    if plan.labels or plan.annotations:
        what.append("labels")
    return " and ".join(what or ["node"]) + " updated"
