"""The single-tenant process (the default mode): one tenant cluster, its controllers built on the tenant runtime
(:mod:`ccm.tenant`), optionally behind leader election in the management cluster and following its
CloudSigmaCluster (``--cluster-ref``).

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
from collections.abc import Coroutine
from typing import Any

import structlog

from ccm.clusterref import ClusterIdentity, ClusterRefFollower
from ccm.config import Settings, secrets_of
from ccm.fencing import Fence
from ccm.health import HealthState
from ccm.kube.clients import KubeconfigClient
from ccm.kube.library import ApiClient
from ccm.kube.permissions import cluster_ref as cluster_ref_permissions
from ccm.kube.permissions import leader_election
from ccm.kube.transport import KubeTransport
from ccm.leader import LeaderLost, LeaseElector, default_identity
from ccm.logging import Redactor
from ccm.metrics import Metrics
from ccm.process.lifetime import kube_client, lease_namespace, serve_health, stop_on_signals
from ccm.shutdown import EXIT_MARGIN, LEASE_RELEASE_TIMEOUT, ShutdownBudget
from ccm.supervisor import Supervisor, cancel_and_wait
from ccm.tenant.controllers import Components, TenantIdentity, build_tenant, run_controllers
from ccm.tenant.services import build_services

__all__ = ["build", "run", "single_identity"]

log = structlog.get_logger(__name__)


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
    """Serve the one tenant until SIGTERM/SIGINT (→ 0), loss of the lease or any supervised task ending (→ 1)."""
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
    health.token_broker = lambda: current.parts.broker.status() if current.parts.broker is not None else []
    supervisor = Supervisor()
    stop = stop_on_signals()

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
