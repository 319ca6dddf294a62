"""The fleet benchmark's world: CloudSigma owners and servers for N tenants, a management kube-apiserver with the
CloudSigmaCluster CRD, tenant kube-apiservers registered there as Cluster API would, and the fleet replica's and the
single-tenant daemon's environments.

Every tenant has an owner of its own (``owner-<i>@bench.example``): each tenant costs the fleet one token exchange
and one token, the worst case for sharing (two clusters of one owner would share a token).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cloud import CLIENT_ID, CLIENT_SECRET, SERVERS_PER_HOST
from bench.kube import admin_client
from ccm.kube.transport import KubeTransport
from tests.emulator import EmulatorProcess
from tests.realenv.fleet import create_cluster, ensure_namespace, install_crd, put_kubeconfig_secret
from tests.realenv.kubeapiserver import KubeAPIServer

TENANT_NAMESPACE = "bench-tenants"
LEASE_NAMESPACE = "default"
FLEET_NAME = "bench"
REPLICA = "bench-replica-0"
REGION = "zrh"
SINGLE_OWNER = "single@bench.example"
SINGLE_PREFIX = "single-node"
#: Node name prefixes per tenant: the nodes of the RSS steps, the all-tenants burst, and the floor's writes.
STEP, BURST, FLOOR = "node", "burst", "floor"


def owner(i: int) -> str:
    return f"owner-{i}@bench.example"


def tenant_name(i: int) -> str:
    return f"t{i}"


def node_names(i: int, kind: str, m: int) -> list[str]:
    """``t<i>-<kind>-0..m-1``: unique across tenants, so a log line or a server name says whose it is."""
    return [f"{tenant_name(i)}-{kind}-{j}" for j in range(m)]


def _servers(owner_email: str, prefix: str, m: int, tag: str) -> dict[str, Any]:
    return {"owner": owner_email, "name": prefix, "count": m, "nics": [{"type": "dhcp", "ip": "auto"}],
            "meta": {"pool": "workers", "cluster": prefix.split("-", 1)[0]}, "tags": [tag],
            "hosts": max(1, -(-m // SERVERS_PER_HOST))}


def seed(tenants: int, nodes_per_tenant: int, *, token_lifetime: int) -> dict[str, Any]:
    """One owner per tenant with servers for its step and burst Nodes (the floor needs none: it asks nobody),
    plus the single-tenant daemon's owner; servers carry meta, a tag and a host, as in ``bench.cloud.seed``."""
    owners = [owner(i) for i in range(tenants)] + [SINGLE_OWNER]
    tags = {email: str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-tag:{email}")) for email in owners}
    servers = [_servers(SINGLE_OWNER, SINGLE_PREFIX, nodes_per_tenant, tags[SINGLE_OWNER])]
    for i in range(tenants):
        for kind in (STEP, BURST):
            servers.append(_servers(owner(i), f"{tenant_name(i)}-{kind}", nodes_per_tenant, tags[owner(i)]))
    return {
        "settings": {"token_lifetime": token_lifetime},
        "users": [{"email": email, "password": "unused-password"} for email in owners],
        "clients": [{"client_id": CLIENT_ID, "secret": CLIENT_SECRET, "may_impersonate": True, "may_exchange": True}],
        "tags": [{"name": "bench", "uuid": tag, "owner": email} for email, tag in tags.items()],
        "servers": servers,
    }


def _impersonation(emulator: EmulatorProcess) -> dict[str, str]:
    return {
        "CLOUDSIGMA_IMPERSONATION_ENABLED": "true",
        "CLOUDSIGMA_OAUTH_URL": emulator.realm_url(),
        "CLOUDSIGMA_CLIENT_ID": CLIENT_ID,
        "CLOUDSIGMA_CLIENT_SECRET": CLIENT_SECRET,
        "CLOUDSIGMA_IMPERSONATION_API_URL": emulator.api_url,
        "CLOUDSIGMA_API_URL": emulator.api_url,
    }


def fleet_env(emulator: EmulatorProcess, management_kubeconfig: Path) -> dict[str, str]:
    """One fleet replica: the production lease timings (15/10/2 s defaults), its tenants from one namespace."""
    return {
        **_impersonation(emulator),
        "CLOUDSIGMA_MODE": "fleet",
        "CLOUDSIGMA_LEADER_ELECT_KUBECONFIG": str(management_kubeconfig),
        "CLOUDSIGMA_LEADER_ELECT_RESOURCE_NAMESPACE": LEASE_NAMESPACE,
        "CLOUDSIGMA_LEADER_ELECT_IDENTITY": REPLICA,
        "CLOUDSIGMA_FLEET_NAME": FLEET_NAME,
        "CLOUDSIGMA_FLEET_TENANT_NAMESPACE": TENANT_NAMESPACE,
    }


def single_env(emulator: EmulatorProcess, kubeconfig: Path) -> dict[str, str]:
    """One Deployment per tenant: the default single-tenant mode, as ``bench.cloud.daemon_env``."""
    return {
        **_impersonation(emulator),
        "CLOUDSIGMA_REGION": REGION,
        "CLOUDSIGMA_USER_EMAIL": SINGLE_OWNER,
        "CLOUDSIGMA_KUBECONFIG": str(kubeconfig),
        "CLOUDSIGMA_LEADER_ELECT": "false",
        "CLOUDSIGMA_CLUSTER_NAME": "single",
    }


@dataclass
class Tenants:
    """The tenant kube-apiservers started so far, by index; all stopped by :meth:`stop_all`."""

    servers: dict[int, KubeAPIServer] = field(default_factory=dict)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.servers))

    def __len__(self) -> int:
        return len(self.servers)

    async def start(self, indices: list[int], parallel: int) -> None:
        """Start the API servers of ``indices``, ``parallel`` at a time (start-up is CPU-bound)."""
        sem = asyncio.Semaphore(parallel)

        async def one(i: int) -> None:
            server = KubeAPIServer(f"bench-fleet-{tenant_name(i)}")
            self.servers[i] = server  # registered before it starts: stop_all stops a half-started one too
            async with sem:
                await server.astart()

        await asyncio.gather(*(one(i) for i in indices))

    async def stop_all(self) -> None:
        servers, self.servers = list(self.servers.values()), {}
        await asyncio.gather(*(s.astop() for s in servers), return_exceptions=True)


@asynccontextmanager
async def management_transport(server: KubeAPIServer) -> Any:
    api = await admin_client(server.admin_kubeconfig, pool_size=8)
    try:
        yield KubeTransport(api)
    finally:
        await api.close()


async def prepare_management(kube: KubeTransport) -> None:
    await install_crd(kube)
    await ensure_namespace(kube, TENANT_NAMESPACE)


async def register_tenant(kube: KubeTransport, i: int, server: KubeAPIServer) -> None:
    """A CloudSigmaCluster for tenant ``i`` and its Cluster API kubeconfig Secret (a client certificate of the
    tenant API server in ``system:masters``)."""
    name = tenant_name(i)
    await create_cluster(kube, TENANT_NAMESPACE, name, region=REGION, user_email=owner(i))
    kubeconfig = await asyncio.to_thread(server.kubeconfig, f"fleet-{name}", ["system:masters"])
    await put_kubeconfig_secret(kube, TENANT_NAMESPACE, name, kubeconfig.read_bytes())


def tenant_key(i: int) -> str:
    return f"{TENANT_NAMESPACE}/{tenant_name(i)}"
