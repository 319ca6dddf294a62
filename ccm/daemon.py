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
from dataclasses import dataclass
from pathlib import Path

import structlog
from kubernetes_asyncio.client import ApiClient

from ccm.cloudlabels.sources import LabelSources
from ccm.cloudlabels.sync import CloudLabels, policy_from_settings
from ccm.cloudlabels.trigger import RelabelOnRefresh
from ccm.config import ConfigError, Settings, env_name, flag_name, secrets_of
from ccm.csr.controller import CSRController
from ccm.fencing import Fence
from ccm.health import HealthState, create_app, start_server
from ccm.kube.clients import KubeconfigClient, KubeconfigError, api_client, in_cluster_namespace
from ccm.kube.events import EventRecorder
from ccm.kube.permissions import TENANT, leader_election, needed
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
from ccm.supervisor import Supervisor
from cloudsigma.client import CloudSigmaClient, RetryPolicy
from credentials.base import Credential
from credentials.chain import CredentialChain
from credentials.factory import build_chain

__all__ = ["Components", "RedactingSource", "build", "run", "run_controllers", "secrets_of"]

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

    async def close(self) -> None:
        await self.cache.close()
        await self.client.close()
        with contextlib.suppress(Exception):
            await self.chain.aclose()
        await self.tenant.close()


async def kube_client(path: Path | None, *, setting: str, what: str) -> ApiClient | KubeconfigClient:
    """The client of a kubeconfig file (followed when it is rotated), or the in-cluster one when ``None``.
    An unusable kubeconfig is a :class:`ConfigError` naming the setting and the file."""
    if path is None:
        return await api_client(None)
    try:
        return await KubeconfigClient.open(path, what=what)
    except KubeconfigError as exc:
        raise ConfigError(f"configuration error: {env_name(setting)} / {flag_name(setting)} {exc}") from None


async def build(settings: Settings, redactor: Redactor, *, fence: Fence | None = None) -> Components:
    """Wire the parts. With a ``fence``, every write to the tenant API is fenced by it (leader election)."""
    metrics = Metrics()
    for secret in secrets_of(settings):
        redactor.add(secret)
    tenant = await kube_client(settings.kubeconfig, setting="kubeconfig", what="tenant kubeconfig")
    chain = build_chain(settings, on_event=metrics.credential_event, on_secret=redactor.add)
    source = RedactingSource(chain, redactor)
    user = settings.user_email or ""
    client = CloudSigmaClient(
        source, user_email=user, region=settings.region, timeout=settings.http_timeout,
        retry=RetryPolicy(attempts=settings.api_retry_attempts), page_size=settings.api_page_size,
        on_request=metrics.observe_request,
    )
    label_policy = policy_from_settings(settings)
    label_sources = LabelSources(client, label_policy)
    cache = ServerCache(client, max_age=settings.server_cache_max_age,
                        on_refresh=lambda _: metrics.snapshot_refreshes.inc(),
                        extras=label_sources if label_sources.needed else None)
    kube = KubeTransport(tenant, on_write=lambda verb, res: metrics.kube_writes.labels(verb, res).inc(), fence=fence,
                         permissions=needed(TENANT, deletion_enabled=settings.node_deletion_enabled,
                                            csr_approval=settings.csr_approval != "off"))
    watcher = NodeWatcher(kube, watch_timeout=settings.watch_timeout,
                          on_restart=lambda reason: metrics.watch_restarts.labels(reason).inc())
    events = EventRecorder(kube, host=socket.gethostname())
    applier = NodeApplier(kube)
    account = AccountMonitor(nodes=lambda: watcher.store.values(), events=events, metrics=metrics, user_email=user,
                             region=settings.region, request_refresh=cache.refresh_until)
    reconciler = NodeReconciler(
        store=lambda name: watcher.store.get(name), observe=watcher.observe, cache=cache, client=client,
        applier=applier, events=events, metrics=metrics, account=account,
        settings=ReconcileSettings(region=settings.region, zone=settings.effective_zone, user_email=user,
                                   cluster_name=settings.cluster_name,
                                   use_system_uuid=settings.node_lookup_by_system_uuid,
                                   lookup=settings.server_lookup),
        labels=CloudLabels(label_policy),
    )
    controller = NodeController(watcher, reconciler, workers=settings.concurrent_node_syncs,
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
    return Components(settings, metrics, chain, client, cache, tenant, kube, watcher, events, controller, lifecycle,
                      account=account, csr=csr)


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


async def run(settings: Settings, redactor: Redactor) -> int:
    """Run until SIGTERM/SIGINT (→ 0), loss of the lease or any supervised task ending (→ 1)."""
    fence: Fence | None = None
    management: ApiClient | KubeconfigClient | None = None
    if settings.leader_elect:
        fence = Fence(f"lease {lease_namespace(settings)}/{settings.leader_elect_resource_name}")
        # Opened first: an unusable management kubeconfig is a configuration error before anything starts.
        management = await kube_client(settings.leader_elect_kubeconfig, setting="leader_elect_kubeconfig",
                                       what="management kubeconfig")
    try:
        parts = await build(settings, redactor, fence=fence)
    except BaseException:
        if management is not None:
            await management.close()
        raise
    health = HealthState(last_watch_activity=lambda: parts.watcher.last_activity,
                         watch_stale_after=max(3 * settings.watch_timeout, 120.0))
    health.credentials, health.redact = parts.chain.status, redactor.redact_text
    supervisor = Supervisor()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def leading_changed(leading: bool) -> None:
        health.leading = leading
        parts.metrics.leader.set(1 if leading else 0)

    if settings.metrics_bind_address:
        supervisor.start("health-server", serve_health(health, parts.metrics, settings.metrics_bind_address))
    elector: LeaseElector | None = None
    if management is not None and fence is not None:
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
            supervisor.start("controllers", run_controllers(parts, health))

        supervisor.start("leader-election", campaign(elector), may_finish=True)
    else:
        leading_changed(True)
        supervisor.start("controllers", run_controllers(parts, health))
    log.info("ccm_starting", region=settings.region, cs_user=settings.user_email, cluster=settings.cluster_name,
             credential_chain=settings.credential_chain, workers=settings.concurrent_node_syncs,
             leader_elect=settings.leader_elect)
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
            await shutdown(parts, supervisor, settings)
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
                await parts.close()
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
