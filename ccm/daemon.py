"""The daemon: wires configuration, credentials, the CloudSigma client, the tenant API and the controllers.

Lifecycle: optional leader election in the management cluster → list+watch Nodes → workers reconcile →
lifecycle checks. SIGTERM/SIGINT stop taking work, let in-flight reconciles finish within
``--shutdown-timeout`` and exit 0. Losing the lease exits 1 so the Deployment restarts the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from kubernetes_asyncio.client import ApiClient

from ccm.cloudlabels.sources import LabelSources
from ccm.cloudlabels.sync import CloudLabels, policy_from_settings
from ccm.cloudlabels.trigger import RelabelOnRefresh
from ccm.config import Settings
from ccm.csr.controller import CSRController
from ccm.health import HealthState, create_app, start_server
from ccm.kube.clients import api_client, in_cluster_namespace
from ccm.kube.events import EventRecorder
from ccm.kube.permissions import TENANT, leader_election, needed
from ccm.kube.transport import KubeTransport
from ccm.kube.watching import NodeWatcher
from ccm.leader import LeaderLost, LeaseElector, default_identity, run_as_leader
from ccm.logging import Redactor
from ccm.metrics import Metrics
from ccm.nodes.account import AccountMonitor
from ccm.nodes.apply import NodeApplier
from ccm.nodes.controller import NodeController
from ccm.nodes.lifecycle import LifecycleController
from ccm.nodes.reconcile import NodeReconciler, ReconcileSettings
from ccm.servercache import ServerCache
from cloudsigma.client import CloudSigmaClient, RetryPolicy
from credentials.base import Credential
from credentials.chain import CredentialChain
from credentials.factory import build_chain

log = structlog.get_logger(__name__)


class RedactingSource:
    """Hands credentials to the client and teaches the log redactor every secret it hands out."""

    def __init__(self, chain: CredentialChain, redactor: Redactor) -> None:
        self.chain = chain
        self._redactor = redactor

    async def get(self, user_email: str, region: str) -> Credential:
        credential = await self.chain.get(user_email, region)
        self._redactor.add(credential.secret.get_secret_value())
        return credential

    def invalidate(self, credential: Credential) -> None:
        self.chain.invalidate(credential)

    async def fallback_after_forbidden(self, user_email: str, region: str, failed: Credential) -> Credential | None:
        credential = await self.chain.fallback_after_forbidden(user_email, region, failed)
        if credential is not None:
            self._redactor.add(credential.secret.get_secret_value())
        return credential


@dataclass
class Components:
    """Everything one CCM process runs; built by :func:`build`, also used by ``doctor``."""

    settings: Settings
    metrics: Metrics
    chain: CredentialChain
    client: CloudSigmaClient
    cache: ServerCache
    tenant: ApiClient
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


def secrets_of(settings: Settings) -> list[str]:
    values = [settings.client_secret, settings.password, settings.static_token]
    return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]


async def build(settings: Settings, redactor: Redactor) -> Components:
    metrics = Metrics()
    for secret in secrets_of(settings):
        redactor.add(secret)
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
    tenant = await api_client(settings.kubeconfig)
    kube = KubeTransport(tenant, on_write=lambda verb, res: metrics.kube_writes.labels(verb, res).inc(),
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
    """Watch, reconcile and monitor until cancelled (or until the node controller is shut down)."""

    async def mark_synced() -> None:
        await parts.watcher.synced.wait()
        if health is not None:
            health.synced = True
        log.info("initial_node_sync_done", nodes=len(parts.watcher.store))

    coros = [parts.watcher.run(), parts.lifecycle.run(), mark_synced()]
    if parts.csr is not None:
        coros.append(parts.csr.run())
    tasks = [asyncio.create_task(coro) for coro in coros]
    try:
        await parts.controller.run()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def run(settings: Settings, redactor: Redactor) -> int:
    """Run until SIGTERM/SIGINT (→ 0) or loss of the lease (→ 1)."""
    parts = await build(settings, redactor)
    health = HealthState(last_watch_activity=lambda: parts.watcher.last_activity,
                         watch_stale_after=max(3 * settings.watch_timeout, 120.0))
    health.credentials, health.redact = parts.chain.status, redactor.redact_text
    runner: web.AppRunner | None = None
    if settings.metrics_bind_address:
        runner = await start_server(create_app(health, parts.metrics), settings.metrics_bind_address)
        log.info("health_server_listening", address=settings.metrics_bind_address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def lead() -> None:
        health.leading = True
        parts.metrics.leader.set(1)
        await run_controllers(parts, health)

    def leading_changed(leading: bool) -> None:
        health.leading = leading
        parts.metrics.leader.set(1 if leading else 0)

    management: ApiClient | None = None
    elector: LeaseElector | None = None
    if settings.leader_elect:
        management = await api_client(settings.leader_elect_kubeconfig)
        namespace = (settings.leader_elect_resource_namespace or os.environ.get("POD_NAMESPACE")
                     or in_cluster_namespace() or "default")
        elector = LeaseElector(
            KubeTransport(management, timeout=settings.leader_elect_renew_deadline,
                          permissions=leader_election(namespace, settings.leader_elect_resource_name)),
            name=settings.leader_elect_resource_name, namespace=namespace,
            identity=settings.leader_elect_identity or default_identity(),
            lease_duration=settings.leader_elect_lease_duration, renew_deadline=settings.leader_elect_renew_deadline,
            retry_period=settings.leader_elect_retry_period,
        )
        main: Any = run_as_leader(elector, lead=lead, on_leading_changed=leading_changed)
    else:
        main = lead()
    log.info("ccm_starting", region=settings.region, cs_user=settings.user_email, cluster=settings.cluster_name,
             credential_chain=settings.credential_chain, workers=settings.concurrent_node_syncs,
             leader_elect=settings.leader_elect)
    main_task = asyncio.create_task(main, name="ccm-main")
    stop_task = asyncio.create_task(stop.wait(), name="ccm-stop")
    exit_code = 0
    try:
        await asyncio.wait({main_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            log.info("ccm_stopping", reason="signal", timeout=settings.shutdown_timeout)
            await parts.controller.shutdown(settings.shutdown_timeout)
            await parts.events.flush(timeout=3.0)
        elif main_task.done():
            exc = main_task.exception()
            if isinstance(exc, LeaderLost):
                exit_code = 1
            elif exc is not None:
                log.error("ccm_crashed", error=repr(exc))
                exit_code = 1
    finally:
        for task in (main_task, stop_task):
            task.cancel()
        for task in (main_task, stop_task):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if elector is not None and exit_code == 0:
            await elector.release()
        if runner is not None:
            await runner.cleanup()
        await parts.close()
        if management is not None:
            await management.close()
    log.info("ccm_stopped", exit_code=exit_code)
    return exit_code
