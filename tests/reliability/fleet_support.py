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
import signal
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ccm.fleet.manager import tenant_lease_name
from tests.emulator import EmulatorServer
from tests.integration.harness import CLIENT_ID, CLIENT_SECRET
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.processes import stop_process
from tests.realenv.proxy import HoldingProxy
from tests.reliability import registry
from tests.reliability.support import ccm_binary, clean_env, free_port, http_get, metric_value

# The reliability suite's 0.4 scale of the defaults (15/10/2 s).
LEASE, DEADLINE, RETRY = 6.0, 4.0, 0.5
LEASE_NAMESPACE = "default"
_WRITES = ("create", "update", "patch", "delete", "deletecollection")
_REPLICA = re.compile(r"\(fleet [^;]+; replica ([^)]+)\)")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class AuditWrite:
    user: str
    agent: str
    verb: str
    resource: str
    name: str
    code: int
    received: float

    @property
    def replica(self) -> str | None:
        match = _REPLICA.search(self.agent)
        return match.group(1) if match else None


def audit(server: KubeAPIServer) -> list[AuditWrite]:
    out = []
    for event in server.audit_events():
        if event.get("verb") not in _WRITES:
            continue
        ref = event.get("objectRef") or {}
        resource = str(ref.get("resource", "")) + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.append(AuditWrite(str((event.get("user") or {}).get("username", "")), str(event.get("userAgent", "")),
                              str(event["verb"]), resource, str(ref.get("name", "")),
                              int((event.get("responseStatus") or {}).get("code", 0)),
                              _ts(event["requestReceivedTimestamp"])))
    return sorted(out, key=lambda w: w.received)


def lease_writes(management: KubeAPIServer, lease: str) -> list[AuditWrite]:
    """Successful writes of one tenant Lease (acquisitions, renewals, releases, deletion)."""
    return [w for w in audit(management) if w.resource == "leases" and w.name == lease and 200 <= w.code < 300]


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
        for write in audit(server):
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


class FleetReplica:
    """One ``cloudsigma-ccm --mode fleet`` process with its own management identity and proxy."""

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
        command = [sys.executable, "-m", "tests.reliability.faulty", self.fault] if self.fault else [ccm_binary()]
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(*command, env=self.env, stdout=log, stderr=log,
                                                             cwd=str(registry.ROOT))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

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

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "<not json>", "text": line})
        return out

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.lines() if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> int | None:
        if self.proc is not None and self.proc.returncode is None:
            self.proxy.set_hold(0.0)  # let it hand its tenants back
        code = await stop_process(self.proc)
        await self.proxy.stop()
        if self.log.exists():
            registry.add_text(f"fleet log of replica {self.name} ({registry.current_nodeid()})",
                              self.log.read_text())
        return code


@contextlib.asynccontextmanager
async def fleet_replicas(*group: FleetReplica) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for replica in group:
            await replica.stop()


def users_of(group: Iterable[FleetReplica]) -> dict[str, str]:
    return {r.user: r.identity for r in group}
