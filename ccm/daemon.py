"""The daemon: wires configuration, credentials, the CloudSigma client, the tenant API and the controllers.

Lifecycle: optional leader election in the management cluster → list+watch Nodes → workers reconcile →
lifecycle checks. Every long-running task runs under one :class:`~ccm.supervisor.Supervisor`: if any ends
unexpectedly (or the lease is lost) the process logs why and exits 1 so the Deployment restarts the pod and a
standby takes over; all tenant writes pass the lease's :class:`~ccm.fencing.Fence`. SIGTERM/SIGINT stop taking
work, let in-flight reconciles finish within ``--shutdown-timeout``, flush events, release the lease — each step
bounded to fit ``--termination-grace-period`` (:mod:`ccm.shutdown`) — and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio.client import ApiClient

from ccm.cloudlabels.sources import LabelSources
from ccm.cloudlabels.sync import CloudLabels, policy_from_settings
from ccm.cloudlabels.trigger import RelabelOnRefresh
from ccm.clusterref import ClusterIdentity, ClusterRefFollower
from ccm.config import ConfigError, Settings, env_name, flag_name, secrets_of
from ccm.csr.controller import CSRController
from ccm.fencing import Fence
from ccm.health import HealthState, create_app, start_server
from ccm.kube.clients import KubeconfigClient, KubeconfigError, api_client, in_cluster_namespace
from ccm.kube.events import EventRecorder
from ccm.kube.permissions import TENANT, leader_election, needed
from ccm.kube.permissions import cluster_ref as cluster_ref_permissions
from ccm.kube.transport import KubeTransport
from ccm.kube.watching import NodeWatcher
from ccm.leader import LeaderLost, LeaseElector, default_identity
from ccm.logging import Redactor
from ccm.metrics import Metrics
from ccm.nodes.account import AccountMonitor
from ccm.nodes.apply import NodeApplier
from ccm.nodes.controller import NodeController
from ccm.nodes.lifecycle import LifecycleController
from ccm.nodes.reconcile import NodeReconciler, ReconcileSettings
from ccm.servercache import ServerCache
from ccm.shutdown import EXIT_MARGIN, LEASE_RELEASE_TIMEOUT, ShutdownBudget
from ccm.supervisor import Supervisor, cancel_and_wait
from cloudsigma.client import CloudSigmaClient, RetryPolicy
from credentials.base import Credential
from credentials.chain import CredentialChain
from credentials.factory import build_chain

__all__ = ["Components", "RedactingSource", "Services", "TenantIdentity", "build", "build_services", "build_tenant",
           "run", "run_controllers", "secrets_of"]

log = structlog.get_logger(__name__)


class RedactingSource:
    """Hands credentials to the client and teaches the log redactor every secret it hands out — for as long as
    it can appear: until the credential expires, or shortly after it is invalidated."""

    def __init__(self, chain: CredentialChain, redactor: Redactor) -> None:
        self.chain = chain
        self._redactor = redactor

    def _teach(self, credential: Credential) -> None:
        until = credential.expires_at if credential.expires_at is not None else math.inf
        self._redactor.add(credential.secret.get_secret_value(), until=until)

    async def get(self, user_email: str, region: str) -> Credential:
        credential = await self.chain.get(user_email, region)
        self._teach(credential)
        return credential

    def invalidate(self, credential: Credential) -> None:
        self.chain.invalidate(credential)
        self._redactor.retire(credential.secret.get_secret_value())

    async def fallback_after_forbidden(self, user_email: str, region: str, failed: Credential) -> Credential | None:
        credential = await self.chain.fallback_after_forbidden(user_email, region, failed)
        if credential is not None:
            self._teach(credential)
        return credential


@dataclass
class Services:
    """What one process shares between the tenant clusters it serves: the metrics registry, the credential chain
    (one identity-provider client, one token cache keyed by user and region) and, in fleet mode, one CloudSigma
    HTTP session (one connection pool per endpoint) and one request budget per region. Built by
    :func:`build_services`; the single-tenant mode has one tenant on them."""

    settings: Settings
    metrics: Metrics
    chain: CredentialChain
    source: RedactingSource
    redactor: Redactor
    #: Shared by every tenant's CloudSigma client (None: each client opens its own, as in single-tenant mode).
    session: aiohttp.ClientSession | None = None
    #: ``throttle(region, cluster)`` → the client's per-request hook (the fleet's request budget), or None.
    throttle: Callable[[str, str], Callable[[str], Awaitable[None]]] | None = None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.chain.aclose()
        if self.session is not None:
            await self.session.close()


@dataclass
class TenantIdentity:
    """Who a tenant's CloudSigma servers belong to and how it is named: what differs between tenants."""

    cluster: str
    """The ``cluster`` label of its metrics and log lines (``--cluster-name``; in fleet mode the tenant key)."""
    user_email: str
    region: str
    zone: str
    workers: int


@dataclass
class Components:
    """Everything one CCM process runs; built by :func:`build`, also used by ``doctor``."""

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
    #: The shared services, when these components own them (single-tenant mode): closed with them.
    services: Services | None = None

    async def close(self) -> None:
        await self.cache.close()
        await self.client.close()
        await self.tenant.close()
        if self.services is not None:
            await self.services.close()


async def kube_client(path: Path | None, *, setting: str, what: str) -> ApiClient | KubeconfigClient:
    """The client of a kubeconfig file (followed when it is rotated), or the in-cluster one when ``None``.
    An unusable kubeconfig is a :class:`ConfigError` naming the setting and the file."""
    if path is None:
        return await api_client(None)
    try:
        return await KubeconfigClient.open(path, what=what)
    except KubeconfigError as exc:
        raise ConfigError(f"configuration error: {env_name(setting)} / {flag_name(setting)} {exc}") from None


def build_services(settings: Settings, redactor: Redactor, *, metrics: Metrics | None = None,
                   session: aiohttp.ClientSession | None = None,
                   throttle: Callable[[str, str], Callable[[str], Awaitable[None]]] | None = None) -> Services:
    """The shared services: metrics (``cluster`` = ``--cluster-name`` unless given), the credential chain."""
    metrics = metrics if metrics is not None else Metrics(settings.cluster_name)
    for secret in secrets_of(settings):
        redactor.add(secret)
    chain = build_chain(settings, on_event=metrics.credential_event, on_secret=redactor.add)
    return Services(settings, metrics, chain, RedactingSource(chain, redactor), redactor, session=session,
                    throttle=throttle)


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
                                           csr_approval=settings.csr_approval != "off"))
    watcher = make_node_watcher(kube, settings, metrics)
    events = EventRecorder(kube, host=socket.gethostname())
    applier = NodeApplier(kube)
    account = AccountMonitor(nodes=lambda: watcher.store.values(), events=events, metrics=metrics, user_email=user,
                             region=identity.region, request_refresh=cache.refresh_until)
    reconciler = NodeReconciler(
        store=lambda name: watcher.store.get(name), observe=watcher.observe, cache=cache, client=client,
        applier=applier, events=events, metrics=metrics, account=account,
        settings=ReconcileSettings(region=identity.region, zone=identity.zone, user_email=user,
                                   cluster_name=identity.cluster,
                                   use_system_uuid=settings.node_lookup_by_system_uuid,
                                   lookup=settings.server_lookup),
        labels=CloudLabels(label_policy),
    )
    controller = NodeController(watcher, reconciler, workers=identity.workers,
                                resync_period=settings.node_status_update_frequency, metrics=metrics)
    cache.add_recovery_listener(controller.cloud_is_back)
    account.add_recovery_listener(controller.cloud_is_back)
    # Cloud labels follow a changed server at the next snapshot refresh, not only at the node's next resync.
    cache.add_refresh_listener(RelabelOnRefresh(label_policy, nodes=lambda: list(watcher.store.values()),
                                                enqueue=controller.queue.add))
    lifecycle = LifecycleController(
        nodes=lambda: list(watcher.store.values()), kube=kube, cache=cache, client=client, applier=applier,
        events=events, metrics=metrics, primary_provider=settings.credential_chain[0],
        monitor_period=settings.node_monitor_period, grace_period=settings.node_deletion_grace_period,
        deletion_enabled=settings.node_deletion_enabled, use_system_uuid=settings.node_lookup_by_system_uuid,
        account=account,
    )
    csr = (CSRController(kube=kube, nodes=watcher, cache=cache, events=events, metrics=metrics,
                         deny=settings.csr_approval == "approve-or-deny", watch_timeout=settings.watch_timeout)
           if settings.csr_approval != "off" else None)
    return Components(settings, metrics, services.chain, client, cache, tenant, kube, watcher, events, controller,
                      lifecycle, account=account, csr=csr)


def single_identity(settings: Settings) -> TenantIdentity:
    """The one tenant of the single-tenant mode, as configured."""
    return TenantIdentity(cluster=settings.cluster_name, user_email=settings.user_email or "",
                          region=settings.region, zone=settings.effective_zone, workers=settings.concurrent_node_syncs)


async def build(settings: Settings, redactor: Redactor, *, fence: Fence | None = None,
                metrics: Metrics | None = None) -> Components:
    """Wire the parts of the single-tenant mode: shared services plus its one tenant, which owns them. With a
    ``fence``, every write to the tenant API is fenced by it (leader election)."""
    for secret in secrets_of(settings):
        redactor.add(secret)
    tenant = await kube_client(settings.kubeconfig, setting="kubeconfig", what="tenant kubeconfig")
    try:
        services = build_services(settings, redactor, metrics=metrics)
    except BaseException:
        await tenant.close()
        raise
    parts = build_tenant(services, tenant, single_identity(settings), metrics=services.metrics, fence=fence)
    parts.services = services
    return parts


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
    if parts.csr is not None:
        supervisor.start("csr-approver", parts.csr.run())
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


async def serve_health(health: HealthState, metrics: Metrics, bind_address: str) -> None:
    """The /healthz, /readyz and /metrics server, as a task that runs until cancelled."""
    runner = await start_server(create_app(health, metrics), bind_address)
    log.info("health_server_listening", address=bind_address)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def lease_namespace(settings: Settings) -> str:
    return (settings.leader_elect_resource_namespace or os.environ.get("POD_NAMESPACE")
            or in_cluster_namespace() or "default")


class _Current:
    """The components being served (replaced when ``--cluster-ref`` re-keys them)."""

    def __init__(self, parts: Components) -> None:
        self.parts = parts


def _with_identity(settings: Settings, identity: ClusterIdentity) -> Settings:
    return settings.model_copy(update={"user_email": identity.user_email, "region": identity.region})


async def _read_cluster_ref(follower: ClusterRefFollower) -> tuple[asyncio.Task[None], ClusterIdentity]:
    """Start following the CloudSigmaCluster and wait until it was read once (its problems are logged)."""
    task = asyncio.get_running_loop().create_task(follower.run(), name="cluster-ref")
    try:
        await follower.changed.wait()
    except BaseException:
        task.cancel()
        raise
    assert follower.current is not None
    return task, follower.current


async def _await(task: asyncio.Task[None]) -> None:
    await task


async def serve_cluster_ref(current: _Current, follower: ClusterRefFollower, settings: Settings, redactor: Redactor,
                            fence: Fence | None, health: HealthState) -> None:
    """Run the controllers; when the CloudSigmaCluster's owner email or region changes, drain them and build new
    ones with the new identity (new credential chain and token cache: the old tokens are dropped), no restart."""
    while True:
        follower.changed.clear()
        controllers = asyncio.create_task(run_controllers(current.parts, health), name="controllers")
        changed = asyncio.create_task(follower.changed.wait())
        try:
            await asyncio.wait({controllers, changed}, return_when=asyncio.FIRST_COMPLETED)
            if controllers.done():
                controllers.result()  # a failure (TaskEnded) reaches the process supervisor
                return  # the workers were shut down (SIGTERM)
            identity = follower.current
            assert identity is not None
            old = current.parts
            log.info("cluster_ref_rekeying", cluster_ref=follower.ref, cs_user=identity.user_email,
                     region=identity.region, previous_user=old.settings.user_email,
                     previous_region=old.settings.region)
            await old.controller.shutdown(min(5.0, settings.shutdown_timeout))
            await old.events.flush(timeout=2.0)
        finally:
            await cancel_and_wait(controllers, changed)
        current.parts = await build(_with_identity(settings, identity), redactor, fence=fence, metrics=old.metrics)
        await old.close()


async def run(settings: Settings, redactor: Redactor) -> int:
    """Run until SIGTERM/SIGINT (→ 0), loss of the lease or any supervised task ending (→ 1)."""
    if settings.mode == "fleet":
        from ccm.fleet.process import run_fleet

        return await run_fleet(settings, redactor)
    fence: Fence | None = None
    management: ApiClient | KubeconfigClient | None = None
    if settings.leader_elect:
        fence = Fence(f"lease {lease_namespace(settings)}/{settings.leader_elect_resource_name}")
    if settings.leader_elect or settings.cluster_ref is not None:
        # Opened first: an unusable management kubeconfig is a configuration error before anything starts.
        management = await kube_client(settings.leader_elect_kubeconfig, setting="leader_elect_kubeconfig",
                                       what="management kubeconfig")
    follower: ClusterRefFollower | None = None
    follow_task: asyncio.Task[None] | None = None
    try:
        ref = settings.cluster_ref_parts
        if ref is not None and management is not None:
            follower = ClusterRefFollower(KubeTransport(management, permissions=cluster_ref_permissions(*ref)),
                                          *ref, watch_timeout=settings.watch_timeout)
            follow_task, identity = await _read_cluster_ref(follower)
            settings = _with_identity(settings, identity)
        parts = await build(settings, redactor, fence=fence)
    except BaseException:
        if follow_task is not None:
            follow_task.cancel()
        if management is not None:
            await management.close()
        raise
    current = _Current(parts)
    health = HealthState(last_watch_activity=lambda: current.parts.watcher.last_activity,
                         watch_stale_after=max(3 * settings.watch_timeout, 120.0))
    health.credentials, health.redact = (lambda: current.parts.chain.status()), redactor.redact_text
    supervisor = Supervisor()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def leading_changed(leading: bool) -> None:
        health.leading = leading
        parts.metrics.leader.set(1 if leading else 0)

    def controllers() -> Coroutine[Any, Any, None]:
        if follower is not None:
            return serve_cluster_ref(current, follower, settings, redactor, fence, health)
        return run_controllers(parts, health)

    if settings.metrics_bind_address:
        supervisor.start("health-server", serve_health(health, parts.metrics, settings.metrics_bind_address))
    if follow_task is not None:
        supervisor.start("cluster-ref", _await(follow_task))
    elector: LeaseElector | None = None
    if settings.leader_elect and management is not None and fence is not None:
        lease = f"{lease_namespace(settings)}/{settings.leader_elect_resource_name}"
        elector = LeaseElector(
            KubeTransport(management, timeout=settings.leader_elect_renew_deadline,
                          permissions=leader_election(lease_namespace(settings), settings.leader_elect_resource_name)),
            name=settings.leader_elect_resource_name, namespace=lease_namespace(settings),
            identity=settings.leader_elect_identity or default_identity(),
            lease_duration=settings.leader_elect_lease_duration, renew_deadline=settings.leader_elect_renew_deadline,
            retry_period=settings.leader_elect_retry_period, fence=fence,
            on_failure=lambda step: parts.metrics.lease_failures.labels(lease, step).inc(),
        )

        async def campaign(elector: LeaseElector) -> None:
            log.info("leader_election_waiting", identity=elector.identity, lease=elector.lease)
            await elector.acquire()
            log.info("leader_elected", identity=elector.identity, lease=elector.lease)
            leading_changed(True)
            supervisor.start("lease-keeper", elector.keep())
            supervisor.start("controllers", controllers())

        supervisor.start("leader-election", campaign(elector), may_finish=True)
    else:
        leading_changed(True)
        supervisor.start("controllers", controllers())
    log.info("ccm_starting", region=settings.region, cs_user=settings.user_email, cluster=settings.cluster_name,
             credential_chain=settings.credential_chain, workers=settings.concurrent_node_syncs,
             leader_elect=settings.leader_elect, cluster_ref=settings.cluster_ref)
    failure = asyncio.ensure_future(supervisor.failure())
    stop_task = asyncio.ensure_future(stop.wait())
    exit_code = 0
    try:
        await asyncio.wait({failure, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if failure.done():
            exit_code = 1
            ended = failure.result()
            if isinstance(ended.cause, LeaderLost):
                log.error("leader_lost", lease=elector.lease if elector else "", reason=str(ended.cause))
            else:
                log.error("ccm_task_ended", task=ended.name, error=str(ended), exc_info=ended.cause)
            leading_changed(False)
        else:
            await shutdown(current.parts, supervisor, settings)
    finally:
        for task in (failure, stop_task):
            task.cancel()
        await supervisor.stop()
        if fence is not None:
            fence.close("stopping", expected=True)
        if elector is not None:
            # Safe on any exit: every task has stopped and the fence is closed, so a standby taking over now
            # cannot meet a write of ours. (After LeaderLost the lease is not ours and nothing is sent.)
            await elector.release(timeout=LEASE_RELEASE_TIMEOUT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_MARGIN):
                await current.parts.close()
                if management is not None:
                    await management.close()
    log.info("ccm_stopped", exit_code=exit_code)
    return exit_code


async def shutdown(parts: Components, supervisor: Supervisor, settings: Settings) -> None:
    """SIGTERM: stop taking work, let in-flight reconciles finish, flush events — each bounded (ccm.shutdown)."""
    budget = ShutdownBudget(drain=settings.shutdown_timeout)
    log.info("ccm_stopping", reason="signal", timeout=settings.shutdown_timeout, budget=budget.total,
             grace_period=settings.termination_grace_period)
    supervisor.stopping = True  # the controllers ending now is the plan, not a failure
    await parts.controller.shutdown(budget.drain)
    await parts.events.flush(timeout=budget.flush)
