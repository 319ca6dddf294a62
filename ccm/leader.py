"""Lease-based leader election in the management cluster (kubernetes-asyncio's implementation).

Only the leader reconciles. Losing the lease raises :class:`LeaderLost`, which the daemon turns into a
non-zero exit so the Deployment restarts the pod as a follower (no half-stopped controllers linger).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable

import structlog
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

log = structlog.get_logger(__name__)


class LeaderLost(Exception):
    """The lease could not be renewed within the deadline."""


def default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


async def run_as_leader(
    api_client: ApiClient,
    *,
    name: str,
    namespace: str,
    identity: str,
    lease_duration: float,
    renew_deadline: float,
    retry_period: float,
    lead: Callable[[], Awaitable[None]],
    on_leading_changed: Callable[[bool], None] | None = None,
) -> None:
    """Wait for the lease, run ``lead()`` while holding it; raise :class:`LeaderLost` when it is lost."""
    logging.getLogger("kubernetes_asyncio.leaderelection").setLevel(logging.WARNING)
    lock = LeaseLock(name, namespace, identity, api_client)
    lead_task: asyncio.Task[None] | None = None
    lost = asyncio.Event()

    async def started() -> None:
        nonlocal lead_task
        log.info("leader_elected", identity=identity, lease=f"{namespace}/{name}")
        if on_leading_changed:
            on_leading_changed(True)
        lead_task = asyncio.current_task()
        await lead()

    async def stopped() -> None:
        log.error("leader_lost", identity=identity, lease=f"{namespace}/{name}")
        if on_leading_changed:
            on_leading_changed(False)
        lost.set()

    config = electionconfig.Config(
        lock, lease_duration=lease_duration, renew_deadline=renew_deadline, retry_period=retry_period,
        onstarted_leading=started, onstopped_leading=stopped,
    )
    log.info("leader_election_waiting", identity=identity, lease=f"{namespace}/{name}")
    election = leaderelection.LeaderElection(config)
    await election.run()
    if lost.is_set() or lead_task is not None:
        raise LeaderLost(f"lease {namespace}/{name} lost by {identity}")
