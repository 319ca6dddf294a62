"""What every process shape does around its tenants: open the management cluster's client, find the namespace of
its Leases, serve /healthz, /readyz and /metrics, and turn SIGTERM/SIGINT into a stop request.

Both shapes use these: the single-tenant process (:mod:`ccm.single.process`) and a fleet replica
(:mod:`ccm.fleet.process`). The shutdown budget both follow is :mod:`ccm.shutdown`, the allocator setting a fleet
pins is :mod:`ccm.process.allocator`, and the Lease both hold is :class:`ccm.leader.LeaseElector`.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import structlog

from ccm.config import ConfigError, Settings, env_name, flag_name
from ccm.health import HealthState, create_app, start_server
from ccm.kube.clients import KubeconfigClient, KubeconfigError, api_client, in_cluster_namespace
from ccm.kube.library import ApiClient
from ccm.metrics import Metrics

__all__ = ["kube_client", "lease_namespace", "serve_health", "stop_on_signals"]

log = structlog.get_logger(__name__)


async def kube_client(path: Path | None, *, setting: str, what: str) -> ApiClient | KubeconfigClient:
    """The client of a kubeconfig file (followed when it is rotated), or the in-cluster one when ``None``.
    An unusable kubeconfig is a :class:`ConfigError` naming the setting and the file."""
    if path is None:
        return await api_client(None)
    try:
        return await KubeconfigClient.open(path, what=what)
    except KubeconfigError as exc:
        raise ConfigError(f"configuration error: {env_name(setting)} / {flag_name(setting)} {exc}") from None


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


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (the process then stops in the order of :mod:`ccm.shutdown`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
