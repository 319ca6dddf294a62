"""The load-balancer controller: a watch of Services → de-duplicating queue → workers → decide → apply → report;
and the eligibility loop that labels the Nodes able to carry the IPs.

A new claim is given to a Service only after it stood :attr:`settle` seconds: the claim is written into the IP's
meta, and a listing whose first request was sent ``settle`` seconds after the write completed must still show it
(the fresh-evidence rule). Two clusters of one owner that pick the same free IP at once both write; the listing
both then read shows the last write, and the other one picks again. This holds as long as a claim write reaches
the cloud within ``settle`` seconds of the listing it was decided on; a slower one is not trusted
(:data:`~ccm.loadbalancer.decide.CLAIM_LOST`) and decided again. Within one process, an IP being claimed is
reserved, so the workers never race each other.

Every outcome is an Event on the Service (once per reason while pending) and a ``load_balancer_decided`` log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from cachetools import TTLCache

from ccm.kube.errors import Conflict, KubeError, KubeNotFound
from ccm.kube.events import EventRecorder, ObjectEvent
from ccm.kube.fetching import get_node
from ccm.kube.informer import Informer, LogEvents
from ccm.kube.transport import JSON, KubeTransport
from ccm.loadbalancer.announcer import ELIGIBLE_LABEL
from ccm.loadbalancer.apply import LoadBalancerApplier
from ccm.loadbalancer.decide import CLAIM_LOST, CLOUD_UNAVAILABLE, Decision, Verdict, decide
from ccm.loadbalancer.eligibility import definition_is_manual, manual_definition
from ccm.loadbalancer.eligibility import eligible as has_manual_nic
from ccm.loadbalancer.ipam import CloudIp, held_by, in_pool
from ccm.loadbalancer.listing import IpListings, Listing
from ccm.loadbalancer.service import FINALIZER, STATIC_POOL, ServiceView, service_view
from ccm.metrics import Metrics
from ccm.nodes.view import NodeView, node_view
from ccm.nodes.watching import NodeWatcher
from ccm.providerid import ForeignProviderID, parse_provider_id
from ccm.servercache import ServerCache
from ccm.workqueue import Next, WorkQueue, run_worker
from cloudsigma.client import CloudSigmaClient
from cloudsigma.errors import CloudSigmaError
from credentials.base import CredentialError

log = structlog.get_logger(__name__)

SERVICES = "/api/v1/services"
RBAC_HINT = "grant the CCM's tenant identity the ClusterRole of deploy/tenant/load-balancer"


def _slim(obj: JSON) -> JSON | None:
    """Keep LoadBalancer Services and those still carrying our finalizer; drop everything else."""
    spec = obj.get("spec") or {}
    finalizers = (obj.get("metadata") or {}).get("finalizers") or []
    if spec.get("type") != "LoadBalancer" and FINALIZER not in finalizers:
        return None
    return {"metadata": obj.get("metadata") or {}, "spec": {k: spec.get(k) for k in (
        "type", "loadBalancerClass", "loadBalancerIP")}, "status": obj.get("status") or {}}


class LoadBalancerController:
    """Gives LoadBalancer Services an IP of the owner's account and tells the announcer."""

    def __init__(self, *, kube: KubeTransport, client: CloudSigmaClient, nodes: NodeWatcher, cache: ServerCache,
                 events: EventRecorder, metrics: Metrics, cluster: str, announcer: str, nic_mode: str = "require",
                 metallb_namespace: str = "metallb-system", settle: float = 2.0, workers: int = 4,
                 watch_timeout: float = 300.0, resync: float = 300.0, eligibility_period: float = 30.0,
                 primary_provider: str | None = None) -> None:
        self._kube = kube
        self._client = client
        self._nodes = nodes
        self._cache = cache
        self._events = events
        self._metrics = metrics
        self.cluster = cluster
        self.announcer = announcer
        self.nic_mode = nic_mode
        self.settle = settle
        self._workers = workers
        self._resync = resync
        self._eligibility_period = eligibility_period
        self.watcher = Informer(kube, SERVICES, transform=_slim, watch_timeout=watch_timeout, name="services",
                                events=LogEvents.of("service"))
        self.queue = WorkQueue(base_delay=0.5, max_delay=60.0)
        self.listings = IpListings(client, primary=primary_provider)
        self.applier = LoadBalancerApplier(kube, client, announcer=announcer, metallb_namespace=metallb_namespace)
        #: IP → Service key of claims being decided in this process (not offered to another Service meanwhile).
        self._reserved: dict[str, str] = {}
        #: Service key → IP it holds (verified claim): what the announcer's pool holds.
        self.held: dict[str, str] = {}
        #: Service uid → the reason last reported while pending (one Event per reason).
        self._noted: TTLCache[str, str] = TTLCache(maxsize=50_000, ttl=86400)
        #: Names of the Nodes that can carry an IP (a manual public NIC).
        self.eligible: set[str] = set()
        #: Node uid → what was last reported about its NIC (one Event per state).
        self._node_noted: TTLCache[str, str] = TTLCache(maxsize=50_000, ttl=86400)
        #: Server uuids whose NIC switch was tried (``ensure``): once per process, the cloud is not hammered.
        self._switch_tried: set[str] = set()
        #: The server cache's clock at the last successful switch (a snapshot older than it is out of date).
        self._switched_at = float("-inf")
        self.eligibility_checked = asyncio.Event()
        self._recheck = asyncio.Event()
        self.watcher.add_handler(self._on_service)
        nodes.add_handler(self._on_node)

    # ------------------------------------------------------------------ events in

    def _on_service(self, key: str, old: JSON | None, new: JSON | None) -> None:
        if new is None:
            self.queue.remove(key)
            if self.held.pop(key, None) is not None:
                self.queue.add("")  # the empty key: re-sync the announcer's pool
            return
        self.queue.add(key)

    def _on_node(self, name: str, old: NodeView | None, new: NodeView | None) -> None:
        """A Node appeared, went, or got its providerID or our label changed: check eligibility now."""
        if old is None or new is None or (old.provider_id, old.labels.get(ELIGIBLE_LABEL)) != (
                new.provider_id, new.labels.get(ELIGIBLE_LABEL)):
            self._recheck.set()

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Watch and decide until cancelled. Decisions start once Services and Nodes are listed and the Nodes'
        eligibility was checked once; the claims this cluster holds are read first (the pool is rebuilt from
        them, so a restart never drops an IP in use)."""
        watch = asyncio.create_task(self.watcher.run(), name="service-watch")
        eligibility = asyncio.create_task(self._eligibility_loop(), name="lb-eligibility")
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._nodes.synced.wait()
            await self.watcher.synced.wait()
            await self.eligibility_checked.wait()
            await self._recover()
            tasks = [asyncio.create_task(self._worker(i), name=f"lb-worker-{i}") for i in range(self._workers)]
            await asyncio.gather(*tasks, watch, eligibility)
        finally:
            for task in (watch, eligibility, *tasks):
                task.cancel()
            await asyncio.gather(watch, eligibility, *tasks, return_exceptions=True)

    async def _recover(self) -> None:
        while True:
            try:
                listing = await self.listings.newer_than(None)
                break
            except (CloudSigmaError, CredentialError) as exc:
                log.warning("load_balancer_listing_failed", error=str(exc), retry_in=5)
                await asyncio.sleep(5)
        orphans: list[CloudIp] = []
        for address, ip in held_by(listing.ips, self.cluster).items():
            assert ip.claim is not None
            obj = self.watcher.store.get(ip.claim.service)
            if obj is not None and (not ip.claim.uid or service_view(obj).uid == ip.claim.uid):
                self.held[ip.claim.service] = address
            else:
                orphans.append(ip)
        log.info("load_balancer_claims_recovered", cluster=self.cluster, held=len(self.held), orphans=len(orphans),
                 listing_age_s=round(listing.age(), 3), request_ids=list(listing.request_ids))
        for ip in orphans:
            # Its Service object is gone (its finalizer was removed by hand, or it was recreated): a claim nobody
            # can release. The Service list was read after start-up; a Service that shows up later with this IP in
            # its status claims it again.
            assert ip.claim is not None
            log.warning("load_balancer_orphan_claim_released", ip=ip.address, service=ip.claim.service,
                        service_uid=ip.claim.uid, evidence="services list + ips listing",
                        listing_age_s=round(listing.age(), 3))
            try:
                await self.applier.release(ip)
            except (CloudSigmaError, CredentialError) as exc:
                log.warning("load_balancer_release_failed", ip=ip.address, error=str(exc))
        self._count(listing)

    async def _worker(self, index: int) -> None:
        await run_worker(self.queue, self._handle, crashed="load_balancer_decision_crashed", key_field="service",
                         index=index)

    async def _handle(self, key: str) -> Next:
        if key == "":
            await self._sync_pool()
            return Next()
        decision = await self.process(key)
        if decision is None:
            return Next(remove=True)
        if decision.verdict is Verdict.PENDING:
            return Next(retry=True)
        if decision.verdict in (Verdict.KEEP, Verdict.CLAIM):
            return Next(after=self._resync)
        return Next()

    async def _sync_pool(self) -> None:
        try:
            await self.applier.sync_pool(self.held.values())
        except KubeError as exc:
            log.warning("load_balancer_pool_not_written", **exc.log_fields())
            raise

    # ------------------------------------------------------------------ one Service

    async def process(self, key: str) -> Decision | None:
        """Decide ``key`` and apply the decision; ``None`` when the Service is gone."""
        obj = self.watcher.store.get(key)
        if obj is None:
            return None
        view = service_view(obj)
        if not view.ours and not view.has_finalizer:
            return Decision(Verdict.SKIP)  # another class: not ours to look at
        started = time.monotonic()
        try:
            if view.wants_ip and not view.has_finalizer:
                # Before any claim: a Service deleted from now on waits for its claim to be released.
                view = service_view(self._observe(await self.applier.add_finalizer(view)))
            listing = await self.listings.newer_than(time.monotonic() - self.settle)
            reserved = [ip for ip, owner in self._reserved.items() if owner != key]
            decision = decide(view, listing.ips, cluster=self.cluster, eligible_nodes=len(self.eligible),
                              reserved=reserved, verified=self.held.get(key))
            decision = await self._apply(view, decision, listing)
        except (CloudSigmaError, CredentialError) as exc:
            decision = Decision(Verdict.PENDING, reason=CLOUD_UNAVAILABLE,
                                message=f"the cloud cannot be asked: {exc}")
        except Conflict:
            return Decision(Verdict.PENDING, reason="conflict", message="the Service changed: deciding again")
        except KubeNotFound:
            return None
        self._report(view, decision, time.monotonic() - started)
        return decision

    def _requeue_waiting(self, released_by: str) -> None:
        """An IP was freed: the Services still waiting for one are decided again now, not after their backoff."""
        for key in list(self.watcher.store):
            if key != released_by and key not in self.held:
                self.queue.add(key)

    def _observe(self, obj: JSON) -> JSON:
        self.watcher.observe(obj)
        return self.watcher.store.get(f"{obj['metadata']['namespace']}/{obj['metadata']['name']}") or obj

    def _ip(self, listing: Listing, address: str) -> CloudIp | None:
        return next((ip for ip in listing.ips if ip.address == address), None)

    async def _unannounce(self, view: ServiceView) -> None:
        """A Service we held decided PENDING from a fresh listing (its claim was lost): stop announcing its IP —
        out of the pool, our annotations and its status cleared (a cloud outage never gets here)."""
        if self.held.pop(view.key, None) is None:
            return
        log.warning("load_balancer_ip_withdrawn", service=view.key, evidence="ips_listing")
        await self._sync_pool()
        for write in (self.applier.set_annotations, self.applier.set_status):
            written = await write(view, None)
            if written is not None:
                view = service_view(self._observe(written))

    async def _apply(self, view: ServiceView, decision: Decision, listing: Listing) -> Decision:
        if decision.verdict is Verdict.PENDING:
            await self._unannounce(view)
            return decision
        if decision.verdict is Verdict.SKIP:
            return decision
        if decision.verdict is Verdict.RELEASE:
            for address in decision.release:
                ip = self._ip(listing, address)
                if ip is not None:
                    await self.applier.release(ip)
            self.held.pop(view.key, None)
            await self._sync_pool()
            self._requeue_waiting(view.key)
            if not view.deleting:
                for write in (self.applier.set_annotations, self.applier.set_status):
                    written = await write(view, None)
                    if written is not None:
                        view = service_view(self._observe(written))
            await self.applier.remove_finalizer(view)
            return decision
        assert decision.ip is not None
        if decision.verdict is Verdict.CLAIM:
            verified = await self._claim(view, decision, listing)
            if verified is not None:
                await self._unannounce(view)
                return verified
        for address in decision.release:
            ip = self._ip(listing, address)
            if ip is not None:
                await self.applier.release(ip)
        self.held[view.key] = decision.ip
        await self._sync_pool()
        annotated = await self.applier.set_annotations(view, decision.ip)
        if annotated is not None:
            view = service_view(self._observe(annotated))
        if await self.applier.set_status(view, decision.ip) is not None and decision.verdict is Verdict.KEEP:
            decision = Decision(Verdict.CLAIM, ip=decision.ip, message="the claim it held (status restored)")
        return decision

    async def _claim(self, view: ServiceView, decision: Decision, listing: Listing) -> Decision | None:
        """Write the claim and check it in a listing started ``settle`` s after the write; None when it stands,
        else the PENDING decision saying it was lost."""
        assert decision.ip is not None
        address = decision.ip
        ip = self._ip(listing, address)
        if ip is None:
            return Decision(Verdict.PENDING, reason=CLAIM_LOST, message=f"IP {address} vanished from the listing")
        self._reserved[address] = view.key
        try:
            await self.applier.claim(ip, self.cluster, view)
            written = time.monotonic()
            if written - listing.started_at > self.settle:
                # Slower than the settle time: a competitor's check may already have passed. Not trusted.
                log.warning("load_balancer_claim_slow", service=view.key, ip=address,
                            write_after_listing_s=round(written - listing.started_at, 3))
            await asyncio.sleep(max(0.0, written + self.settle - time.monotonic()))
            check = await self.listings.newer_than(written + self.settle)
            now = self._ip(check, address)
            stands = (now is not None and now.claim is not None and now.claim.source == "meta"
                      and now.claim.names(self.cluster, view.key, view.uid)
                      and written - listing.started_at <= self.settle)
            log.info("load_balancer_claim_checked", service=view.key, ip=address, stands=stands,
                     evidence="ips_listing", evidence_age_s=round(check.age(), 3),
                     listing_started_after_write_s=round(check.started_at - written, 3),
                     request_ids=list(check.request_ids), holder=now.claim.describe() if now and now.claim else None)
            if stands:
                return None
            holder = now.claim.describe() if now is not None and now.claim is not None else "nobody"
            return Decision(Verdict.PENDING, reason=CLAIM_LOST, message=f"IP {address} was claimed at the same "
                            f"time by {holder}: choosing again")
        finally:
            self._reserved.pop(address, None)

    # ------------------------------------------------------------------ eligibility

    async def _eligibility_loop(self) -> None:
        await self._nodes.synced.wait()
        while True:
            try:
                await self.check_eligibility()
            except (CloudSigmaError, CredentialError) as exc:
                log.warning("load_balancer_eligibility_unknown", error=str(exc))
            self.eligibility_checked.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._eligibility_period):
                    await self._recheck.wait()
            self._recheck.clear()

    async def check_eligibility(self) -> None:
        """Label the Nodes whose server has a manual public NIC, unlabel the others (``ensure``: switch them)."""
        before = bool(self.eligible)
        snapshot = await self._cache.get()
        if snapshot.fetched_at <= self._switched_at:
            # A NIC was switched after this snapshot was taken: it would call the server ineligible again.
            snapshot = await self._cache.refresh(newer_than=self._switched_at)
        eligible: set[str] = set()
        refreshed = False
        for node in list(self._nodes.store.values()):
            try:
                uuid = parse_provider_id(node.provider_id).lower() if node.provider_id else ""
            except ForeignProviderID:
                continue
            if uuid and uuid not in snapshot.by_uuid and not refreshed:
                snapshot, refreshed = await self._cache.refresh(newer_than=snapshot.fetched_at), True
            server = snapshot.by_uuid.get(uuid) if uuid else None
            if server is None:
                continue
            ok = has_manual_nic(server)
            if not ok and self.nic_mode == "ensure" and server.uuid not in self._switch_tried:
                try:
                    ok = await self._switch(node, server.uuid)
                except CloudSigmaError as exc:  # refused (400, 403...): say so on the Node, go on with the others
                    log.warning("load_balancer_nic_switch_failed", node=node.name, server_uuid=server.uuid,
                                **exc.log_fields())
                    self._events.record_for(node.event_ref(), ObjectEvent.warning(
                        "LoadBalancerNICSwitchFailed", f"switching server {server.uuid}'s public NIC to manual "
                        f"failed: {exc.message}"))
            if ok:
                eligible.add(node.name)
            await self._label(node, ok, server.uuid)
        self.eligible = eligible
        if eligible and not before:
            for key in list(self.watcher.store):
                self.queue.add(key)

    async def _label(self, node: NodeView, ok: bool, server_uuid: str) -> None:
        labelled = node.labels.get(ELIGIBLE_LABEL) == "true"
        if ok != labelled or (not ok and ELIGIBLE_LABEL in node.labels):
            try:
                current = node
                for attempt in range(5):
                    try:
                        self._nodes.observe(await self.applier.label_node(current, ok))
                        break
                    except Conflict:  # the node controller wrote it meanwhile: again on the current object
                        if attempt == 4:
                            raise
                        current = node_view(await get_node(self._kube, node.name))
            except KubeError as exc:
                log.warning("load_balancer_node_label_failed", node=node.name, **exc.log_fields())
        state = "eligible" if ok else "not-manual"
        if self._node_noted.get(node.uid) == state:
            return
        self._node_noted[node.uid] = state
        log.info("load_balancer_node_eligibility", node=node.name, server_uuid=server_uuid, eligible=ok)
        if ok:
            self._events.record_for(node.event_ref(), ObjectEvent.normal(
                "LoadBalancerEligible", f"server {server_uuid} has a public NIC with ip_v4_conf.conf manual: this "
                "Node can carry load-balancer IPs"))
        else:
            self._events.record_for(node.event_ref(), ObjectEvent.warning(
                "LoadBalancerNICNotManual", f"server {server_uuid} has no public NIC with ip_v4_conf.conf manual, so "
                "CloudSigma's firewall drops traffic to load-balancer IPs on it: stop the server, set its public "
                "NIC's ip_v4_conf to {\"conf\": \"manual\"}, start it (or run with --load-balancer-nic=ensure)"))

    async def _switch(self, node: NodeView, server_uuid: str) -> bool:
        """kube-dc's switch of the first public NIC to manual, verified by reading the server again."""
        self._switch_tried.add(server_uuid)
        definition = await self._client.get_server_definition(server_uuid)
        body = manual_definition(definition)
        if body is None:
            return False
        await self._client.update_server(server_uuid, body)
        after = await self._client.get_server_definition(server_uuid)
        switched = definition_is_manual(after)
        log.warning("load_balancer_nic_switch", node=node.name, server_uuid=server_uuid,
                    status=definition.get("status"), switched=switched, evidence="GET /servers/{uuid}/ after PUT")
        if switched:
            self._switched_at = self._cache.now()
            self._events.record_for(node.event_ref(), ObjectEvent.normal(
                "LoadBalancerNICSwitched", f"switched server {server_uuid}'s public NIC to ip_v4_conf manual"))
        else:
            self._node_noted[node.uid] = "ignored"
            self._events.record_for(node.event_ref(), ObjectEvent.warning(
                "LoadBalancerNICSwitchIgnored", f"the cloud accepted but ignored the switch of server {server_uuid}'s "
                f"public NIC to manual (it is {definition.get('status')}; CloudSigma ignores NIC changes of a running "
                "server): stop the server, switch the NIC, start it"))
        return switched

    # ------------------------------------------------------------------ reporting

    def _count(self, listing: Listing) -> None:
        counts = {"held": 0, "free": 0, "claimed": 0, "attached": 0}
        for ip in listing.ips:
            if not in_pool(ip, STATIC_POOL):
                continue
            if ip.server is not None:
                counts["attached"] += 1
            elif ip.claim is None:
                counts["free"] += 1
            elif ip.claim.source == "meta" and ip.claim.cluster == self.cluster:
                counts["held"] += 1
            else:
                counts["claimed"] += 1
        for state, n in counts.items():
            self._metrics.lb_ips.labels(STATIC_POOL, state).set(n)

    def _report(self, view: ServiceView, decision: Decision, duration: float) -> None:
        if decision.verdict is Verdict.SKIP:
            return
        if self.listings.latest is not None:
            self._count(self.listings.latest)
        self._metrics.reconciles.labels("load-balancer", decision.verdict.value).inc()
        self._metrics.reconcile_duration.labels("load-balancer").observe(duration)
        fields: dict[str, Any] = {"service": view.key, "verdict": decision.verdict.value, "ip": decision.ip,
                                  "reason": decision.reason or None, "message": decision.message or None,
                                  "released": list(decision.release) or None,
                                  "duration_ms": round(duration * 1000, 1)}
        ref = view.event_ref()
        if decision.verdict is Verdict.PENDING:
            log.warning("load_balancer_decided", **fields)
            self._metrics.lb_allocation_failures.labels(decision.reason).inc()
            if self._noted.get(view.uid) != decision.reason:
                self._noted[view.uid] = decision.reason
                self._events.record_for(ref, ObjectEvent.warning("IPAllocationFailed", decision.message))
            return
        log.info("load_balancer_decided", **fields)
        self._noted.pop(view.uid, None)
        if decision.verdict is Verdict.CLAIM:
            self._events.record_for(ref, ObjectEvent.normal(
                "IPAllocated", f"IP {decision.ip} of the owner's account, claimed for this Service and announced by "
                f"{self.announcer}"))
        elif decision.verdict is Verdict.RELEASE and decision.release:
            self._events.record_for(ref, ObjectEvent.normal(
                "IPReleased", f"released IP {', '.join(decision.release)} (claim removed from the IP)"))



def from_settings(settings: Any, *, kube: KubeTransport, client: CloudSigmaClient, nodes: NodeWatcher,
                  cache: ServerCache, events: EventRecorder, metrics: Metrics,
                  cluster: str) -> LoadBalancerController | None:
    """The controller a tenant runs with these settings (``--load-balancer``), or None when it is off."""
    if settings.load_balancer == "off":
        return None
    return LoadBalancerController(
        kube=kube, client=client, nodes=nodes, cache=cache, events=events, metrics=metrics, cluster=cluster,
        announcer=settings.load_balancer, nic_mode=settings.load_balancer_nic,
        metallb_namespace=settings.load_balancer_metallb_namespace, settle=settings.load_balancer_claim_settle,
        watch_timeout=settings.watch_timeout, primary_provider=settings.credential_chain[0])
