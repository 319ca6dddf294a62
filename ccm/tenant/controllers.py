"""One tenant's controllers: built from the tenant's identity, its kube client and the process's shared services
(:func:`build_tenant`), and run under one supervisor until cancelled or shut down (:func:`run_controllers`).

This is the tenant runtime both process shapes share: the single-tenant process (:mod:`ccm.single.process`) runs one
tenant on it, a fleet replica (:mod:`ccm.fleet`) one per tenant it serves. It builds the node controller, the
lifecycle controller, the account monitor, the optional CSR approver, load-balancer controller and token broker
and the cloud labels, and nothing else: no signals, no health server, no leader election (:mod:`ccm.process`). New
per-tenant controllers are built in :func:`build_tenant` and started in :func:`run_controllers`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from ccm.cloudlabels.sources import LabelSources
from ccm.cloudlabels.sync import CloudLabels, policy_from_settings
from ccm.config import Settings
from ccm.fencing import Fence
from ccm.health import HealthState
from ccm.kube.clients import KubeconfigClient
from ccm.kube.events import EventRecorder
from ccm.kube.library import ApiClient
from ccm.kube.permissions import TENANT, needed
from ccm.kube.transport import KubeTransport
from ccm.loadbalancer import controller as load_balancer
from ccm.metrics import Metrics
from ccm.nodes.account import AccountMonitor
from ccm.nodes.apply import NodeApplier
from ccm.nodes.changes import RequeueOnChange
from ccm.nodes.controller import NodeController
from ccm.nodes.evidence import NodeClock
from ccm.nodes.lifecycle import LifecycleController
from ccm.nodes.reconcile import NodeReconciler, ReconcileSettings
from ccm.nodes.watching import NodeWatcher
from ccm.servercache import ServerCache
from ccm.supervisor import Supervisor
from ccm.tenant.services import Services
from ccm.tokenbroker.controller import TokenBroker
from ccm.tokenbroker.wiring import build_token_broker, token_broker_permissions
from cloudsigma.client import CloudSigmaClient, RetryPolicy
from credentials.chain import CredentialChain

if TYPE_CHECKING:
    from ccm.csr.controller import CSRController

__all__ = ["Components", "TenantIdentity", "build_tenant", "make_node_watcher", "run_controllers"]

log = structlog.get_logger(__name__)


@dataclass
class TenantIdentity:
    """Who a tenant's CloudSigma servers belong to and how it is named: what differs between tenants."""

    cluster: str
    """The ``cluster`` label of its metrics and log lines (``--cluster-name``; in fleet mode the tenant key)."""
    user_email: str
    region: str
    zone: str
    workers: int
    #: The cluster's own name, for clients inside it (the token broker's ``cluster_name``); default: ``cluster``.
    name: str = ""


@dataclass
class Components:
    """One tenant's controllers and what they run on; built by :func:`build_tenant`."""

    settings: Settings
    metrics: Metrics
    chain: CredentialChain
    client: CloudSigmaClient
    cache: ServerCache
    tenant: ApiClient | KubeconfigClient
    kube: KubeTransport
    watcher: NodeWatcher
    events: EventRecorder
    controller: NodeController
    lifecycle: LifecycleController
    account: AccountMonitor | None = None
    csr: CSRController | None = None
    load_balancer: load_balancer.LoadBalancerController | None = None
    #: The opt-in token broker (``--token-broker``).
    broker: TokenBroker | None = None
    #: The shared services, when these components own them (single-tenant mode): closed with them.
    services: Services | None = None

    async def close(self) -> None:
        await self.cache.close()
        await self.client.close()
        await self.tenant.close()
        if self.services is not None:
            await self.services.close()


def make_node_watcher(kube: KubeTransport, settings: Settings, metrics: Metrics) -> NodeWatcher:
    """The tenant's node store (list+watch of Nodes): the one place it is made, so it can be swapped."""
    return NodeWatcher(kube, watch_timeout=settings.watch_timeout,
                       on_restart=lambda reason: metrics.watch_restarts.labels(reason).inc())


def build_tenant(services: Services, tenant: ApiClient | KubeconfigClient, identity: TenantIdentity, *,
                 metrics: Metrics, fence: Fence | None = None,
                 kube_factory: Callable[..., KubeTransport] = KubeTransport, kube_timeout: float = 30.0) -> Components:
    """One tenant cluster's controllers on the shared ``services``: its CloudSigma client (acting as the tenant's
    owner in its region), server snapshot, node watcher, node and lifecycle controllers, account monitor and the
    optional CSR approver. With a ``fence``, every write to the tenant API is fenced by it (its Lease)."""
    settings = services.settings
    user = identity.user_email
    client = CloudSigmaClient(
        services.source, user_email=user, region=identity.region, timeout=settings.http_timeout,
        retry=RetryPolicy(attempts=settings.api_retry_attempts), page_size=settings.api_page_size,
        on_request=metrics.observe_request, session=services.session,
        throttle=services.throttle(identity.region, identity.cluster) if services.throttle is not None else None,
    )
    label_policy = policy_from_settings(settings)
    label_sources = LabelSources(client, label_policy)
    cache = ServerCache(client, max_age=settings.server_cache_max_age,
                        on_refresh=lambda _: metrics.snapshot_refreshes.inc(),
                        extras=label_sources if label_sources.needed else None)
    kube = kube_factory(tenant, timeout=kube_timeout, fence=fence,
                        on_write=lambda verb, res: metrics.kube_writes.labels(verb, res).inc(),
                        permissions=needed(TENANT, deletion_enabled=settings.node_deletion_enabled,
                                           csr_approval=settings.csr_approval != "off",
                                           load_balancer=settings.load_balancer)
                        + token_broker_permissions(settings))
    watcher = make_node_watcher(kube, settings, metrics)
    events = EventRecorder(kube, host=socket.gethostname())
    applier = NodeApplier(kube)
    account = AccountMonitor(nodes=lambda: watcher.store.values(), events=events, metrics=metrics, user_email=user,
                             region=identity.region, request_refresh=cache.refresh_until)
    node_clock = NodeClock(clock=cache.now)  # when each Node's evidence must have started (ccm.nodes.evidence)
    watcher.add_handler(node_clock)
    cloud_labels = CloudLabels(label_policy)
    reconciler = NodeReconciler(
        store=lambda name: watcher.store.get(name), observe=watcher.observe, cache=cache, client=client,
        applier=applier, events=events, metrics=metrics, account=account, node_clock=node_clock,
        settings=ReconcileSettings(region=identity.region, zone=identity.zone, user_email=user,
                                   cluster_name=identity.cluster,
                                   use_system_uuid=settings.node_lookup_by_system_uuid,
                                   lookup=settings.server_lookup, resync_max_age=resync_max_age(settings)),
        labels=cloud_labels,
    )
    controller = NodeController(watcher, reconciler, workers=identity.workers,
                                resync_period=settings.node_status_update_frequency, metrics=metrics)
    cache.add_recovery_listener(controller.cloud_is_back)
    account.add_recovery_listener(controller.cloud_is_back)
    # A changed server (addresses, cloud labels, host, state) reaches its Node at the next snapshot refresh.
    cache.add_refresh_listener(RequeueOnChange(nodes=lambda: list(watcher.store.values()),
                                               enqueue=controller.queue.add, labels=cloud_labels.fingerprint))
    lifecycle = LifecycleController(
        nodes=lambda: list(watcher.store.values()), kube=kube, cache=cache, client=client, applier=applier,
        events=events, metrics=metrics, primary_provider=settings.credential_chain[0],
        monitor_period=settings.node_monitor_period, grace_period=settings.node_deletion_grace_period,
        deletion_enabled=settings.node_deletion_enabled, use_system_uuid=settings.node_lookup_by_system_uuid,
        account=account,
    )
    csr: CSRController | None = None
    if settings.csr_approval != "off":
        from ccm.csr.controller import CSRController  # only when on: it parses certificates (cryptography.x509)

        csr = CSRController(kube=kube, nodes=watcher, cache=cache, events=events, metrics=metrics,
                            deny=settings.csr_approval == "approve-or-deny", watch_timeout=settings.watch_timeout)
    lb = load_balancer.from_settings(settings, kube=kube, client=client, nodes=watcher, cache=cache, events=events,
                                     metrics=metrics, cluster=identity.cluster)
    broker = build_token_broker(settings, kube=kube, chain=services.chain, teach=services.source.teach,
                                owner=user, region=identity.region, cluster_name=identity.name or identity.cluster,
                                metrics=metrics, events=events)
    return Components(settings, metrics, services.chain, client, cache, tenant, kube, watcher, events, controller,
                      lifecycle, account=account, csr=csr, load_balancer=lb, broker=broker)


def resync_max_age(settings: Settings) -> float | None:
    """The oldest snapshot a resync of an initialized Node may use: with the periodic refresh on (which re-queues
    every Node whose server changed), up to a refresh period — but never older than a resync period, nor required
    younger than the cache's max age. None: the cache's max age (refresh on demand only)."""
    period = settings.server_refresh_period
    if period <= 0:
        return None
    return max(settings.server_cache_max_age, min(period, settings.node_status_update_frequency))


async def run_controllers(parts: Components, health: HealthState | None = None) -> None:
    """Watch, reconcile and monitor until cancelled or until the node controller is shut down.

    The watcher, the lifecycle loop and the workers are supervised: if one ends unexpectedly this raises
    :class:`TaskEnded` (after stopping the others) instead of carrying on half-alive."""

    async def mark_synced() -> None:
        await parts.watcher.synced.wait()
        if health is not None:
            health.synced = True
        log.info("initial_node_sync_done", nodes=len(parts.watcher.store))

    supervisor = Supervisor()
    supervisor.start("node-watcher", parts.watcher.run())
    supervisor.start("lifecycle", parts.lifecycle.run())
    if parts.settings.server_refresh_period > 0:
        supervisor.start("snapshot-refresh", parts.cache.refresh_periodically(parts.settings.server_refresh_period))
    if parts.csr is not None:
        supervisor.start("csr-approver", parts.csr.run())
    if parts.load_balancer is not None:
        supervisor.start("load-balancer", parts.load_balancer.run())
    if parts.broker is not None:
        supervisor.start("token-broker", parts.broker.run())
    supervisor.start("initial-sync", mark_synced(), may_finish=True)
    workers = supervisor.start("node-workers", parts.controller.run(), may_finish=True)
    failure = asyncio.ensure_future(supervisor.failure())
    try:
        await asyncio.wait({workers, failure}, return_when=asyncio.FIRST_COMPLETED)
        if failure.done():
            raise failure.result()
        # The workers returned: the queue was shut down (SIGTERM). Anything else is over too.
    finally:
        failure.cancel()
        await supervisor.stop()
