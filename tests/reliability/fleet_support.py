"""Fleet replicas as real ``cloudsigma-ccm --mode fleet`` processes, tenants on real kube-apiservers, and the proof
that no tenant was ever served by two replicas at once.

Each :class:`FleetReplica` reaches the management API through its own :class:`~tests.realenv.proxy.HoldingProxy`
(so the API can hang for it alone) with its own client certificate (``fleet-<name>``), so the management API
server's audit log says which replica wrote which tenant Lease, when. Tenant writes carry the replica in their
User-Agent (``... (fleet <fleet>; replica <identity>)``), so each tenant API server's audit log says which replica
wrote to it, when. :func:`served_twice` holds the two against each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ccm.fleet.manager import tenant_lease_name
from tests.emulator import EmulatorServer
from tests.integration.harness import CLIENT_ID, CLIENT_SECRET
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.proxy import HoldingProxy
from tests.reliability.replicas import DEADLINE, LEASE, RETRY, ReplicaProcess, Write, audit_writes
from tests.reliability.support import clean_env, free_port, http_get, metric_value

LEASE_NAMESPACE = "default"


def lease_writes(management: KubeAPIServer, lease: str) -> list[Write]:
    """Successful writes of one tenant Lease (acquisitions, renewals, releases, deletion)."""
    return [w for w in audit_writes(management) if w.resource == "leases" and w.name == lease and 200 <= w.code < 300]


def served_twice(management: KubeAPIServer, fleet: str, tenants: Mapping[str, KubeAPIServer],
                 users: Mapping[str, str], since: float = 0.0) -> tuple[list[str], int]:
    """Every tenant write (from its API server's audit log) that is not covered by its replica's hold of the tenant
    Lease: the latest successful write of that Lease before it must be the same replica's (nobody took the Lease
    in between) and less than a lease duration old. ``users`` maps management usernames to replica identities.
    Returns the violations and how many tenant writes were checked."""
    problems: list[str] = []
    checked = 0
    for key, server in tenants.items():
        history = [(w.received, users.get(w.user, w.user))
                   for w in lease_writes(management, tenant_lease_name(fleet, key))]
        for write in audit_writes(server):
            replica = write.replica
            if replica is None or write.received < since:
                continue
            checked += 1
            before = [(t, who) for t, who in history if t <= write.received]
            if not before:
                problems.append(f"{key}: {replica} wrote {write.verb} {write.resource}/{write.name} before anyone "
                                "held the Lease")
                continue
            last_at, last_by = before[-1]
            if last_by != replica:
                problems.append(f"{key}: {replica} wrote {write.verb} {write.resource}/{write.name} "
                                f"{write.received - last_at:.3f}s after {last_by} wrote the Lease")
            elif write.received - last_at >= LEASE:
                problems.append(f"{key}: {replica} wrote {write.received - last_at:.3f}s after its last renewal")
    return problems, checked


def acquisitions(management: KubeAPIServer, fleet: str, key: str,
                 users: Mapping[str, str]) -> list[tuple[float, str, float | None]]:
    """(time, replica, the previous holder's last write before it) for every change of holder of ``key``'s Lease."""
    out: list[tuple[float, str, float | None]] = []
    previous: tuple[float, str] | None = None
    for write in lease_writes(management, tenant_lease_name(fleet, key)):
        who = users.get(write.user, write.user)
        if previous is None or previous[1] != who:
            out.append((write.received, who, previous[0] if previous else None))
        previous = (write.received, who)
    return out


class FleetReplica(ReplicaProcess):
    """One ``cloudsigma-ccm --mode fleet`` process with its own management identity and proxy."""

    LOG_TITLE = "fleet log"

    def __init__(self, name: str, management: KubeAPIServer, emulator: EmulatorServer, tmp: Path, *, fleet: str,
                 tenant_namespace: str, fault: str | None = None, **settings: str) -> None:
        self.name = self.identity = name
        self.fault = fault
        self.management = management
        self.user = f"fleet-{name}"
        self.proxy = HoldingProxy(management.port)
        self.port = free_port()
        self.log = tmp / f"fleet-{name}.log"
        self.kubeconfig = tmp / f"fleet-{name}.kubeconfig"
        self.proc: asyncio.subprocess.Process | None = None
        self.env = clean_env(
            CLOUDSIGMA_MODE="fleet", CLOUDSIGMA_IMPERSONATION_ENABLED="true", CLOUDSIGMA_OAUTH_URL=emulator.realm_url(),
            CLOUDSIGMA_CLIENT_ID=CLIENT_ID, CLOUDSIGMA_CLIENT_SECRET=CLIENT_SECRET,
            CLOUDSIGMA_IMPERSONATION_API_URL=emulator.api_url, CLOUDSIGMA_API_URL=emulator.api_url,
            CLOUDSIGMA_LEADER_ELECT_KUBECONFIG=str(self.kubeconfig),
            CLOUDSIGMA_LEADER_ELECT_RESOURCE_NAMESPACE=LEASE_NAMESPACE, CLOUDSIGMA_LEADER_ELECT_IDENTITY=name,
            CLOUDSIGMA_LEADER_ELECT_LEASE_DURATION=f"{LEASE:g}s",
            CLOUDSIGMA_LEADER_ELECT_RENEW_DEADLINE=f"{DEADLINE:g}s", CLOUDSIGMA_LEADER_ELECT_RETRY_PERIOD=f"{RETRY:g}s",
            CLOUDSIGMA_FLEET_NAME=fleet,
            CLOUDSIGMA_FLEET_TENANT_NAMESPACE=tenant_namespace,
            CLOUDSIGMA_METRICS_BIND_ADDRESS=f"127.0.0.1:{self.port}", CLOUDSIGMA_LOG_FORMAT="json",
            CLOUDSIGMA_LOG_LEVEL="debug", CLOUDSIGMA_SERVER_CACHE_MAX_AGE="0.5s", CLOUDSIGMA_NODE_MONITOR_PERIOD="1s",
            CLOUDSIGMA_HTTP_TIMEOUT="3s", CLOUDSIGMA_WATCH_TIMEOUT="30s", CLOUDSIGMA_SHUTDOWN_TIMEOUT="5s",
            CLOUDSIGMA_TERMINATION_GRACE_PERIOD="15s",
        )
        self.env.update(settings)

    async def start(self) -> None:
        await self.proxy.start()
        self.kubeconfig.write_text(self.management.fresh_kubeconfig_text(self.user, ["system:masters"],
                                                                         server=self.proxy.url))
        await self._launch()

    async def get(self, path: str) -> str:
        if not self.alive:
            return ""
        with contextlib.suppress(Exception):
            status, text = await http_get(f"http://127.0.0.1:{self.port}{path}")
            if status == 200:
                return text
        return ""

    async def tenants(self) -> dict[str, Any]:
        text = await self.get("/debug/tenants")
        return json.loads(text) if text else {}

    async def served(self) -> set[str]:
        """Tenants whose Lease this replica holds (``cloudsigma_ccm_leader{cluster=...} 1``)."""
        text = await self.get("/metrics")
        return {m.group(1) for m in re.finditer(r'^cloudsigma_ccm_leader\{cluster="([^"]+)"\} 1\.0$', text, re.M)
                if m.group(1)}

    async def ready(self) -> bool:
        with contextlib.suppress(Exception):
            status, _ = await http_get(f"http://127.0.0.1:{self.port}/readyz")
            return status == 200
        return False

    async def metric(self, name: str, **labels: str) -> float:
        return metric_value(await self.get("/metrics"), name, **labels)


def users_of(group: Iterable[FleetReplica]) -> dict[str, str]:
    return {r.user: r.identity for r in group}
