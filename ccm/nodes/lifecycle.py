"""Node lifecycle: shutdown taint for stopped servers, and deletion of Nodes whose server is provably gone.

Only NotReady/Unknown nodes (and nodes still carrying the shutdown taint) are looked at, every
``monitor_period``, from the shared snapshot — a healthy cluster costs no extra CloudSigma calls.

A Node is deleted only on authoritative, fresh proof from the right account, after it has been NotReady for
``grace_period``:
- with a providerID: CloudSigma's own 404 ``notexist`` (error body and ``X-REQUEST-ID``) on a direct GET of that
  uuid, answered to the primary credential, **and** a fresh, complete listing by the same credential that lacks
  the server but holds the server of at least one other Node (an account/location where the user has no such
  server answers a genuine 404 too: only the other Node's server shows it is the cluster's account);
- without one: absence from two fresh, complete, successfully paginated listings by the primary credential
  that hold the server of at least one other Node (so a listing of the wrong account proves nothing).
Never on 403, 401, 429, 5xx, timeouts, a proxy's 404, a partial list, a credential fallback, or a cache answer;
nothing at all while the listing is judged to be another account (:mod:`ccm.nodes.account`).
"Fresh" means started during the pass deciding it (after the Node was NotReady past its grace period): one pass
shares its confirming listing(s) between all its decisions (:class:`Pass`), so five Nodes cost one listing,
not five.
The delete carries uid and resourceVersion preconditions; every deletion is an event and a log line
with the evidence.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from ccm.kube import patching
from ccm.kube.errors import KubeError
from ccm.kube.events import EventRecorder, ObjectEvent
from ccm.kube.transport import KubeTransport
from ccm.metrics import Metrics
from ccm.nodes.account import AccountMonitor, Verdict
from ccm.nodes.apply import NodeApplier
from ccm.nodes.decide import NodePlan, plan_shutdown_taint
from ccm.nodes.matching import MatchKind, match_server
from ccm.nodes.view import SHUTDOWN_TAINT, NodeView
from ccm.providerid import ForeignProviderID, parse_provider_id
from ccm.servercache import ServerCache, ServerSnapshot
from cloudsigma.client import CloudSigmaClient
from cloudsigma.errors import CloudSigmaError, ServerNotFound
from credentials.base import CredentialError

log = structlog.get_logger(__name__)


@dataclass
class Pass:
    """One lifecycle pass: its start, and the confirming listings every decision of the pass shares."""

    started: float
    listings: list[ServerSnapshot] = field(default_factory=list)

    async def listing(self, cache: ServerCache, index: int = 0) -> ServerSnapshot:
        """The ``index``-th (0 or 1) listing started during this pass; the second started after the first."""
        while len(self.listings) <= index:
            after = self.listings[-1].fetched_at if self.listings else self.started
            self.listings.append(await cache.refresh(newer_than=after))
        return self.listings[index]


def needs_check(node: NodeView) -> bool:
    """NotReady/Unknown, or still carrying the shutdown taint (it runs for every Node every monitor period, so
    it reads two fields of the stored record and nothing else)."""
    return node.not_ready or node.shutdown_tainted


class LifecycleController:
    def __init__(
        self,
        *,
        nodes: Callable[[], Iterable[NodeView]],
        kube: KubeTransport,
        cache: ServerCache,
        client: CloudSigmaClient,
        applier: NodeApplier,
        events: EventRecorder,
        metrics: Metrics,
        primary_provider: str,
        monitor_period: float,
        grace_period: float,
        deletion_enabled: bool,
        use_system_uuid: bool = True,
        account: AccountMonitor | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._nodes = nodes
        self._kube = kube
        self._cache = cache
        self._client = client
        self._applier = applier
        self._events = events
        self._metrics = metrics
        self._primary = primary_provider
        self._period = monitor_period
        self._grace = grace_period
        self._deletion = deletion_enabled
        self._use_system_uuid = use_system_uuid
        self._account = account
        self._clock = clock
        self.deleted: list[str] = []
        #: Passes that checked at least one Node.
        self.passes = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lifecycle_check_crashed")

    async def check_once(self) -> None:
        candidates = [n for n in self._nodes() if needs_check(n)]
        if not candidates:
            return
        started = time.monotonic()
        self.passes += 1
        this_pass = Pass(started=self._cache.now())
        for node in candidates:
            try:
                await self._check(node, this_pass)
            except (CloudSigmaError, CredentialError) as exc:
                log.warning("lifecycle_cloud_unavailable", node=node.name, **exc.log_fields())
            except KubeError as exc:
                log.warning("lifecycle_kube_error", node=node.name, **exc.log_fields())
        self._metrics.reconcile_duration.labels("lifecycle").observe(time.monotonic() - started)

    async def _check(self, view: NodeView, this_pass: Pass) -> None:
        if not view.not_ready:
            # Ready again: the shutdown taint goes without asking the cloud.
            await self._apply_taint(view, None)
            return
        snapshot = await self._cache.get()
        if self._account is not None and self._account.verdict(snapshot) is Verdict.WRONG:
            return  # another account's listing: no taint, no GET, no deletion (one cluster-level warning says so)
        match = match_server(view, snapshot.by_uuid, snapshot.by_name, use_system_uuid=self._use_system_uuid)
        if match.kind is MatchKind.FOUND and match.server is not None:
            await self._apply_taint(view, match.server.status, snapshot)
            return
        if match.kind in (MatchKind.AMBIGUOUS, MatchKind.FOREIGN_PROVIDER_ID, MatchKind.SYSTEM_UUID_MISMATCH):
            return
        if not self._deletion or not self._past_grace(view):
            return
        evidence = await self._proof_of_absence(view, this_pass)
        if evidence is not None:
            await self._delete(view, evidence)

    async def _apply_taint(self, view: NodeView, status: str | None, snapshot: ServerSnapshot | None = None) -> None:
        plan = plan_shutdown_taint(view, status)
        if plan.empty:
            return

        async def replan(fresh: NodeView) -> NodePlan | None:
            if not fresh.not_ready:
                return plan_shutdown_taint(fresh, None)
            # The fresh node's server from current data, never the one matched for the old object.
            snapshot = await self._cache.get()
            match = match_server(fresh, snapshot.by_uuid, snapshot.by_name, use_system_uuid=self._use_system_uuid)
            if match.kind is not MatchKind.FOUND or match.server is None:
                return None
            return plan_shutdown_taint(fresh, match.server.status)

        result = await self._applier.apply(view, plan, replan)
        if result.superseded or result.abandoned:
            return  # the node was replaced or no longer matches: the next check decides again
        added = any(t.get("key") == SHUTDOWN_TAINT for t in plan.taints or ())
        evidence = ({"evidence_request_ids": list(snapshot.request_ids)[:3], "evidence_age_s": self._age(snapshot)}
                    if snapshot is not None else {"evidence": "the Node is Ready again"})
        log.info("node_shutdown_taint", node=view.name, action="added" if added else "removed",
                 server_status=status, writes=result.writes, **evidence)
        self._metrics.reconciles.labels("lifecycle", "shutdown_taint").inc()

    def _past_grace(self, view: NodeView) -> bool:
        since = view.ready_since or view.created
        if since is None:
            return False
        return (self._clock() - since).total_seconds() >= self._grace

    async def _proof_of_absence(self, view: NodeView, this_pass: Pass) -> dict[str, Any] | None:
        """Authoritative evidence that the server is gone, or None (then nothing is deleted)."""
        if view.provider_id:
            return await self._provider_id_proof(view, this_pass)
        request_ids: list[str] = []
        confirmed_by = ""
        for index in range(2):
            snapshot = await this_pass.listing(self._cache, index)
            if not snapshot.complete or snapshot.provider != self._primary:
                log.warning("deletion_skipped", node=view.name, reason="listing incomplete or not by the primary "
                            "credential", complete=snapshot.complete, credential_provider=snapshot.provider)
                return None
            match = match_server(view, snapshot.by_uuid, snapshot.by_name, use_system_uuid=self._use_system_uuid)
            if match.kind is not MatchKind.NO_MATCH:
                return None
            confirmed_by = self._account_confirmed(view, snapshot)
            if not confirmed_by:
                self._unconfirmed(view, snapshot)
                return None
            request_ids.extend(snapshot.request_ids)
        return {"proof": "absent from two fresh complete listings", "request_ids": request_ids,
                "account_confirmed_by": confirmed_by, "checked_at": self._clock().isoformat(),
                "credential_provider": self._primary, "listing_age_s": self._age(this_pass.listings[0])}

    def _age(self, snapshot: ServerSnapshot) -> float:
        """How long ago (before the write) the listing started."""
        return round(self._cache.now() - snapshot.fetched_at, 3)

    async def _provider_id_proof(self, view: NodeView, this_pass: Pass) -> dict[str, Any] | None:
        try:
            uuid = parse_provider_id(view.provider_id)
        except ForeignProviderID:
            return None
        try:
            await self._client.get_server(uuid)
        except ServerNotFound as exc:
            # Typed by the client: CloudSigma's notexist body with an X-REQUEST-ID, nothing else (a proxy's 404
            # is an UnattributedNotFound and propagates like any other failure).
            if exc.context.provider != self._primary:
                log.warning("deletion_skipped", node=view.name, reason="404 came through a fallback credential",
                            **exc.log_fields())
                return None
            not_found = exc
        else:
            return None  # it exists
        # Any other answer — including 403 — is not proof (the exception propagates to the caller's log).
        # The 404 only says "not in the account this credential sees here": a fresh complete listing by the same
        # credential must lack the server and hold another Node's server, or it may be another account/location.
        # "Fresh": started during this pass (shared by its decisions), like the GET.
        snapshot = await this_pass.listing(self._cache)
        same_credential = (snapshot.provider == not_found.context.provider
                           and (not snapshot.token_subject or not not_found.context.token_subject
                                or snapshot.token_subject == not_found.context.token_subject))
        if not snapshot.complete or not same_credential:
            log.warning("deletion_skipped", node=view.name, reason="the listing to confirm the account is "
                        "incomplete or by another credential", complete=snapshot.complete,
                        credential_provider=snapshot.provider, server_uuid=uuid, **not_found.log_fields())
            return None
        if uuid in snapshot.by_uuid:
            log.warning("deletion_skipped", node=view.name, reason="404 on a direct GET but the server is listed",
                        server_uuid=uuid, **not_found.log_fields())
            return None
        confirmed_by = self._account_confirmed(view, snapshot)
        if not confirmed_by:
            self._unconfirmed(view, snapshot, server_uuid=uuid, **not_found.log_fields())
            return None
        return {"proof": "404 notexist on direct GET, and absent from a fresh complete listing that holds other "
                         "Nodes' servers", "server_uuid": uuid, **not_found.log_fields(),
                "listing_request_ids": list(snapshot.request_ids), "account_confirmed_by": confirmed_by,
                "checked_at": self._clock().isoformat(), "listing_age_s": self._age(snapshot)}

    @staticmethod
    def _unconfirmed(view: NodeView, snapshot: ServerSnapshot, **fields: Any) -> None:
        # A complete listing of the *wrong* account (a mistyped user email, a token acting as somebody else —
        # seed 001 —, another location's API URL) also lacks the server. Only a listing that holds another
        # Node's server proves we are looking at the cluster's account.
        fields = {"servers_seen": len(snapshot.servers), "credential_provider": snapshot.provider,
                  "listing_request_ids": list(snapshot.request_ids)[:3], **fields}
        log.warning("deletion_skipped", node=view.name, reason="the listing holds no server of any other Node of "
                    "this cluster: cannot tell a missing server from the wrong account", **fields)

    def _account_confirmed(self, view: NodeView, snapshot: ServerSnapshot) -> str:
        """The name of another Node whose server the listing holds ("" if none)."""
        for other in self._nodes():
            if other.name == view.name:
                continue
            found = match_server(other, snapshot.by_uuid, snapshot.by_name, use_system_uuid=self._use_system_uuid)
            if found.kind is MatchKind.FOUND:
                return other.name
        return ""

    async def _delete(self, view: NodeView, evidence: dict[str, Any]) -> None:
        message = (f"deleting node: its server is gone ({evidence['proof']}); NotReady since "
                   f"{view.ready_since.isoformat() if view.ready_since else 'unknown'}")
        request_id = evidence.get("request_id") or ",".join(evidence.get("request_ids", []))
        await self._events.emit_for(view.event_ref(), ObjectEvent.normal("DeletingNode", message,
                                                                       request_id=request_id))
        try:
            await patching.delete_node(self._kube, view.name, uid=view.uid, resource_version=view.resource_version)
        except KubeError as exc:
            log.warning("node_delete_failed", node=view.name, **exc.log_fields())
            return
        self.deleted.append(view.name)
        self._metrics.node_deletions.inc()
        log.warning("node_deleted", node=view.name, **evidence)
