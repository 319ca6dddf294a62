"""The fleet mode's process: shared services, the fleet manager and the health server under one supervisor.

The fleet machinery (tenant discovery, membership, the tenant-Lease watch, the balancer, the health server) runs
under the process :class:`~ccm.supervisor.Supervisor`: any of them ending unexpectedly is a bug or a broken
process, so it logs ``ccm_task_ended`` and exits 1 (after handing its tenants back, so the other replicas take
them at once). A single tenant's failure never gets there: it is contained in its slot and runtime and retried
with backoff. SIGTERM hands every tenant back in the safe order (drain, flush, release its Lease) within the
shutdown budget, leaves the fleet (deletes the member Lease) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from ccm.config import Settings
from ccm.fleet.manager import FleetManager
from ccm.fleet.shared import fleet_services
from ccm.health import HealthState
from ccm.kube.permissions import fleet
from ccm.kube.transport import KubeTransport
from ccm.leader import default_identity
from ccm.logging import Redactor
from ccm.metrics import Metrics
from ccm.process.allocator import return_large_buffers, small_tls_read_buffers
from ccm.process.lifetime import kube_client, lease_namespace, serve_health, stop_on_signals
from ccm.shutdown import EXIT_MARGIN, LEASE_RELEASE_TIMEOUT, ShutdownBudget
from ccm.supervisor import Supervisor

__all__ = ["run_fleet"]

log = structlog.get_logger(__name__)


async def run_fleet(settings: Settings, redactor: Redactor) -> int:
    """Serve this replica's share of the fleet until SIGTERM/SIGINT (→ 0) or a fleet task ends (→ 1)."""
    namespace = lease_namespace(settings)
    identity = settings.leader_elect_identity or default_identity()
    # Tenants' TLS connections come and go in bursts; their buffers go back to the OS, not to a growing heap.
    large_buffers_returned = return_large_buffers()
    small_tls_read_buffers()
    management = await kube_client(settings.leader_elect_kubeconfig, setting="leader_elect_kubeconfig",
                                   what="management kubeconfig")
    try:
        services = fleet_services(settings, redactor, Metrics())
    except BaseException:
        await management.close()
        raise
    kube = KubeTransport(management, timeout=settings.leader_elect_renew_deadline,
                         permissions=fleet(namespace, tenant_namespace=settings.fleet_tenant_namespace,
                                           namespace_selector=bool(settings.fleet_namespace_selector)))
    manager = FleetManager(settings, services, kube, namespace=namespace, identity=identity)
    health = HealthState(leading=True)
    health.credentials, health.redact, health.tenants = services.chain.status, redactor.redact_text, manager.view
    health.token_broker = lambda: {key: slot.runtime.parts.broker.status() for key, slot in manager.slots.items()
                                   if slot.runtime is not None and slot.runtime.parts is not None
                                   and slot.runtime.parts.broker is not None}
    supervisor = Supervisor()
    stop = stop_on_signals()

    async def mark_ready() -> None:
        for event in (manager.discovery.synced, manager.membership.synced, manager.leases.synced):
            await event.wait()
        health.synced = True

    if settings.metrics_bind_address:
        supervisor.start("health-server", serve_health(health, services.metrics, settings.metrics_bind_address))
    for name, coro in manager.tasks().items():
        supervisor.start(name, coro)
    supervisor.start("fleet-ready", mark_ready(), may_finish=True)
    log.info("ccm_starting", mode="fleet", identity=identity, namespace=namespace, fleet=settings.fleet_name,
             credential_chain=settings.credential_chain, workers_per_tenant=settings.fleet_concurrent_node_syncs,
             cloudsigma_requests_per_minute=settings.cloudsigma_requests_per_minute,
             large_buffers_returned=large_buffers_returned)
    failure = asyncio.ensure_future(supervisor.failure())
    stop_task = asyncio.ensure_future(stop.wait())
    exit_code = 0
    budget = ShutdownBudget(drain=settings.shutdown_timeout)
    try:
        await asyncio.wait({failure, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        supervisor.stopping = True
        if failure.done():
            exit_code = 1
            ended = failure.result()
            log.error("ccm_task_ended", task=ended.name, error=str(ended), exc_info=ended.cause)
            drain = 0.0  # broken: hand the tenants back now, the others take them at once
        else:
            log.info("ccm_stopping", reason="signal", timeout=settings.shutdown_timeout, budget=budget.total,
                     grace_period=settings.termination_grace_period)
            drain = budget.drain
        # Handing the tenants back and leaving the fleet (its member Lease deleted: the others re-shard at once
        # and take each tenant the moment its Lease is released) go together, within the shutdown budget.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain + budget.flush + LEASE_RELEASE_TIMEOUT):
                await asyncio.gather(manager.stop(drain), supervisor.stop())
    finally:
        for task in (failure, stop_task):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await supervisor.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_MARGIN):
                await services.close()
                await management.close()
    log.info("ccm_stopped", exit_code=exit_code)
    return exit_code
