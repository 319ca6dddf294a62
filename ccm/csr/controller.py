"""The CSR approver: a watch of kubelet-serving CSRs → de-duplicating queue → workers → decide → write once.

Each CSR gets one decision: approved, denied, or left pending with a Warning Event on the requesting Node and a
``csr_decided`` log line naming the failed check. Only a check that can still pass by itself (the Node is not
there or not initialized yet, the server is not in the snapshot, the cloud is unavailable) is decided again:
with backoff, and at once when the requesting Node is added or initialized. Inputs are the daemon's own:
the node watcher's store and the shared server snapshot (one listing for all nodes, refreshed once on a miss
and once when an IP SAN is unknown, as a DHCP address may have just changed). An approval cannot be undone, so it
is decided only from a listing that started after the CSR was created (the CSRs of one second share it), named
with its age in the ``csr_decided`` line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from cachetools import TTLCache

from ccm.csr.apply import CSRS, get_csr, write_condition
from ccm.csr.decide import (
    IP_SAN,
    Decision,
    ServerLookup,
    Verdict,
    address_claims,
    check_node,
    check_request,
    decide,
)
from ccm.csr.request import KUBELET_SERVING, CSRView, csr_view
from ccm.kube.errors import Conflict, Forbidden, KubeNotFound
from ccm.kube.events import EventRecorder, ObjectEvent
from ccm.kube.informer import Informer, LogEvents
from ccm.kube.transport import JSON, KubeTransport
from ccm.metrics import Metrics
from ccm.nodes.matching import MatchKind, match_server
from ccm.nodes.view import NodeView
from ccm.nodes.watching import NodeWatcher
from ccm.servercache import ServerCache, ServerSnapshot
from ccm.workqueue import Next, WorkQueue, run_worker
from cloudsigma.addresses import server_addresses
from cloudsigma.errors import CloudSigmaError
from credentials.base import CredentialError

log = structlog.get_logger(__name__)

RBAC_HINT = ("grant the CCM's tenant identity the ClusterRole of deploy/tenant/csr-approval "
             "(certificatesigningrequests/approval update, signers approve on kubernetes.io/kubelet-serving)")


def _predates(snapshot: ServerSnapshot, view: CSRView) -> bool:
    """Was the snapshot taken before the CSR was created (creationTimestamp has whole seconds: 1 s slack)?"""
    if view.created is None:
        return True
    fetched = datetime.now(UTC) - timedelta(seconds=snapshot.age())
    return fetched < view.created + timedelta(seconds=1)


def _node_key(node: NodeView | None) -> tuple[Any, ...]:
    """What a waiting decision depends on: the Node's existence, providerID, taints and addresses."""
    if node is None:
        return ()
    return (node.uid, node.provider_id, node.uninitialized, node.addresses)


class CSRController:
    """Approves kubelet-serving CSRs that pass every check of :mod:`ccm.csr.decide`."""

    def __init__(self, *, kube: KubeTransport, nodes: NodeWatcher, cache: ServerCache, events: EventRecorder,
                 metrics: Metrics, deny: bool = False, workers: int = 2, watch_timeout: float = 300.0,
                 queue: WorkQueue | None = None) -> None:
        self._kube = kube
        self._nodes = nodes
        self._cache = cache
        self._events = events
        self._metrics = metrics
        self._deny = deny
        self._workers = workers
        self.watcher = Informer(kube, CSRS, field_selector=f"spec.signerName={KUBELET_SERVING}",
                                watch_timeout=watch_timeout, name="csrs", events=LogEvents.of("csr"))
        # Not "queue or ...": an empty WorkQueue is falsy.
        self.queue = queue if queue is not None else WorkQueue(base_delay=1.0, max_delay=300.0)
        #: uid → verdict of CSRs decided for good (approved, denied, left pending): one decision per CSR.
        self._final: TTLCache[str, str] = TTLCache(maxsize=50_000, ttl=2 * 86400)
        #: node name → CSRs waiting for that node to appear or be initialized.
        self._waiting: dict[str, set[str]] = {}
        #: uid → the check last reported for a waiting CSR (one Event per reason, not one per retry).
        self._noted: TTLCache[str, str] = TTLCache(maxsize=50_000, ttl=2 * 86400)
        self.watcher.add_handler(self._on_csr)
        # Node changes come from the watch and from the node controller's own writes (initialization above all),
        # whose watch events the node watcher drops as no news.
        nodes.add_handler(self._on_node)
        nodes.add_observer(self._on_node)

    # ------------------------------------------------------------------ events in

    def _on_csr(self, name: str, old: JSON | None, new: JSON | None) -> None:
        if new is None:
            self.queue.remove(name)
            requestor = str(((old or {}).get("spec") or {}).get("username") or "")
            self._stop_waiting(requestor.removeprefix("system:node:"), name)
            return
        uid = str((new.get("metadata") or {}).get("uid", ""))
        conditions = {c.get("type") for c in (new.get("status") or {}).get("conditions") or [] if isinstance(c, dict)}
        if uid in self._final or conditions & {"Approved", "Denied"}:
            return
        self.queue.add(name)

    def _on_node(self, name: str, old: NodeView | None, new: NodeView | None) -> None:
        if name in self._waiting and _node_key(old) != _node_key(new):
            for csr in self._waiting[name]:
                self.queue.add(csr)  # one that is being decided right now runs again afterwards

    def _stop_waiting(self, node: str, csr: str) -> None:
        waiting = self._waiting.get(node)
        if waiting is not None:
            waiting.discard(csr)
            if not waiting:
                del self._waiting[node]

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Watch and decide until cancelled. Decisions start once the node store is synced."""
        watch = asyncio.create_task(self.watcher.run(), name="csr-watch")
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._nodes.synced.wait()
            tasks = [asyncio.create_task(self._worker(i), name=f"csr-worker-{i}") for i in range(self._workers)]
            await asyncio.gather(*tasks)
        finally:
            for task in (watch, *tasks):
                task.cancel()
            await asyncio.gather(watch, *tasks, return_exceptions=True)

    async def _worker(self, index: int) -> None:
        await run_worker(self.queue, self._handle, crashed="csr_decision_crashed", key_field="csr", index=index)

    async def _handle(self, name: str) -> Next:
        decision = await self.process(name)
        return Next(retry=decision is not None and decision.verdict is Verdict.WAIT)

    # ------------------------------------------------------------------ one CSR

    async def process(self, name: str) -> Decision | None:
        """Decide ``name`` and write the decision; ``None`` when the CSR is gone. Re-reads and decides again
        when the write meets a newer version of the CSR."""
        obj = self.watcher.store.get(name)
        started = time.monotonic()
        for _ in range(3):
            if obj is None:
                return None
            view = csr_view(obj)
            if view.uid in self._final:
                return Decision(Verdict.SKIP)
            decision = await self.decide(view)
            if decision.verdict in (Verdict.APPROVE, Verdict.DENY):
                approve = decision.verdict is Verdict.APPROVE
                try:
                    await write_condition(self._kube, obj, approve=approve, message=decision.message if approve
                                          else f"check {decision.check} failed: {decision.message}")
                except Conflict:
                    try:
                        obj = await get_csr(self._kube, name)
                    except KubeNotFound:
                        return None
                    continue
                except KubeNotFound:
                    return None
                except Forbidden as exc:
                    log.error("csr_approval_forbidden", csr=name, hint=RBAC_HINT, **exc.log_fields())
                    decision = Decision(Verdict.WAIT, check="rbac", message=f"{exc.message}; {RBAC_HINT}",
                                        node=decision.node, server_uuid=decision.server_uuid)
            self._report(view, decision, time.monotonic() - started)
            return decision
        log.warning("csr_write_conflicts", csr=name, attempts=3)  # changing under us: decide again later
        return Decision(Verdict.WAIT, check="conflict")

    async def decide(self, view: CSRView) -> Decision:
        """Gather the inputs (node from the store, server from the snapshot) and decide, in pure code."""
        node = self._nodes.store.get(view.requesting_node) if view.requesting_node else None
        if view.signer_name != KUBELET_SERVING or view.decided or check_request(view) or check_node(view, node):
            return decide(view, node, None, deny=self._deny)
        assert node is not None
        lookup, snapshot = await self._lookup(node)
        decision = decide(view, node, lookup, deny=self._deny, claims=self._claims(view, lookup))
        if ((decision.check == IP_SAN or decision.verdict is Verdict.APPROVE) and snapshot is not None
                and _predates(snapshot, view)):
            # An approval cannot be undone: it is decided only from a listing started after the CSR existed (CSRs
            # of the same second share it). And a DHCP address may have changed just before the kubelet asked:
            # look once more before saying no (only for a snapshot older than the CSR, so a flood of bad CSRs
            # costs one listing a second at most).
            lookup, snapshot = await self._lookup(node, newer_than=self._after(view))
            decision = decide(view, node, lookup, deny=self._deny, claims=self._claims(view, lookup))
        if snapshot is not None:
            decision = dataclasses.replace(decision, evidence=(
                ("evidence_request_ids", list(snapshot.request_ids)[:3]),
                ("evidence_age_s", round(self._cache.now() - snapshot.fetched_at, 3))))
        return decision

    def _after(self, view: CSRView) -> float:
        """The cache-clock moment after which a listing surely started after the CSR was created: its whole-second
        creationTimestamp + 1 s (at most a second from now: the CSR exists, the watch showed it; a skewed clock
        delays an approval by a second at most)."""
        now = self._cache.now()
        if view.created is None:
            return now
        since = (datetime.now(UTC) - view.created).total_seconds() - 1.0
        return min(now - since, now + 1.0)

    async def _lookup(self, node: NodeView, *,
                      newer_than: float | None = None) -> tuple[ServerLookup, ServerSnapshot | None]:
        try:
            snapshot = (await self._cache.fresh_after(newer_than) if newer_than is not None
                        else await self._cache.get())
            match = match_server(node, snapshot.by_uuid, snapshot.by_name)
            if match.kind is not MatchKind.FOUND:
                snapshot = await self._cache.refresh(newer_than=snapshot.fetched_at)
                match = match_server(node, snapshot.by_uuid, snapshot.by_name)
        except (CloudSigmaError, CredentialError) as exc:
            return ServerLookup(None, f"the cloud cannot be asked: {exc}"), None
        if match.kind is MatchKind.FOUND and match.server is not None:
            return ServerLookup(match.server), snapshot
        return ServerLookup(None, f"server {match.provider_uuid or '?'} of spec.providerID is not among the "
                            f"{len(snapshot.servers)} servers of the account"), snapshot

    def _claims(self, view: CSRView, lookup: ServerLookup) -> dict[str, tuple[str, ...]]:
        """Other Nodes' claims on the requested IPs; only needed (and computed) for servers with a private VLAN."""
        if view.request is None or lookup.server is None or not server_addresses(lookup.server).private_nics:
            return {}
        return address_claims(self._nodes.store.values(), view.request.ip_addresses)

    # ------------------------------------------------------------------ reporting

    def _report(self, view: CSRView, decision: Decision, duration: float) -> None:
        if decision.verdict is Verdict.SKIP:
            return
        self._metrics.reconciles.labels("csr", decision.verdict.value).inc()
        self._metrics.reconcile_duration.labels("csr").observe(duration)
        fields: dict[str, Any] = {"csr": view.name, "requestor": view.username, "node": decision.node or None,
                                  "verdict": decision.verdict.value, "check": decision.check or None,
                                  "reason": decision.message, "server_uuid": decision.server_uuid or None,
                                  "duration_ms": round(duration * 1000, 1), **dict(decision.evidence)}
        if decision.verdict is Verdict.WAIT:
            log.info("csr_decided", **fields)
            if decision.node:
                self._waiting.setdefault(decision.node, set()).add(view.name)
            if self._noted.get(view.uid) == decision.check:
                return
            self._noted[view.uid] = decision.check
            self._event(decision, "Normal", "CertificateWaiting",
                        f"kubelet-serving CSR {view.name} waits: check {decision.check}: {decision.message}")
            return
        self._final[view.uid] = decision.verdict.value
        self._noted.pop(view.uid, None)
        self._stop_waiting(decision.node, view.name)
        if decision.verdict is Verdict.APPROVE:
            log.info("csr_decided", **fields)
            self._event(decision, "Normal", "CertificateApproved", f"kubelet-serving CSR {view.name} approved: "
                        f"{decision.message}")
        elif decision.verdict is Verdict.DENY:
            log.warning("csr_decided", **fields)
            self._event(decision, "Warning", "CertificateDenied", f"kubelet-serving CSR {view.name} denied: "
                        f"check {decision.check} failed: {decision.message}")
        else:
            log.warning("csr_decided", **fields)
            self._event(decision, "Warning", "CertificateLeftPending", f"kubelet-serving CSR {view.name} left "
                        f"pending: check {decision.check} failed: {decision.message}")

    def _event(self, decision: Decision, type_: str, reason: str, message: str) -> None:
        """Events go to the requesting Node (``kubectl describe node``); a requestor that is no node has none."""
        if not decision.node:
            return
        node = self._nodes.store.get(decision.node)
        ref = node.event_ref() if node is not None else {"kind": "Node", "name": decision.node, "uid": "",
                                                          "apiVersion": "v1"}
        self._events.record_for(ref, ObjectEvent(type_, reason, message))
