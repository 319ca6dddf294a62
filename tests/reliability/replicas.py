"""Daemon processes for the reliability suite: replicas on one Lease, each behind its own management-API proxy.

Each :class:`Replica` is a real ``cloudsigma-ccm`` process (or ``python -m tests.reliability.faulty``) with its own
tenant identity (a client certificate of the test kube-apiserver) and its own lease identity, reaching the
management API through a :class:`~tests.realenv.proxy.HoldingProxy` so the API can hang for it alone.
:class:`ReplicaProcess` is what every such process has (its proxy, log, life and stop; fleet replicas share it);
:func:`audit_writes` reads who wrote what, when, from the API server's audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.emulator import EmulatorServer
from tests.integration.harness import ALICE, ALICE_PW
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.processes import stop_process
from tests.realenv.proxy import HoldingProxy
from tests.realenv.secret_volume import SecretVolume
from tests.reliability import registry
from tests.reliability.support import ccm_binary, clean_env, free_port, http_get, metric_value

# A 0.4 scale of the defaults (15/10/2 s): short enough for a test, long enough that a loaded 2-core machine does
# not miss renewals by itself.
LEASE, DEADLINE, RETRY = 6.0, 4.0, 0.5
WRITES = ("create", "update", "patch", "delete", "deletecollection")
_REPLICA = re.compile(r"\(fleet [^;]+; replica ([^)]+)\)")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Write:
    user: str
    agent: str
    verb: str
    resource: str
    name: str
    code: int
    received: float
    completed: float

    @property
    def replica(self) -> str | None:
        """The fleet replica a tenant write came from (its User-Agent), if any."""
        match = _REPLICA.search(self.agent)
        return match.group(1) if match else None


def audit_writes(server: KubeAPIServer) -> list[Write]:
    out = []
    for event in server.audit_events():
        if event.get("verb") not in WRITES:
            continue
        ref = event.get("objectRef") or {}
        resource = str(ref.get("resource", "")) + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.append(Write(user=str((event.get("user") or {}).get("username", "")),
                         agent=str(event.get("userAgent", "")), verb=str(event["verb"]), resource=resource,
                         name=str(ref.get("name", "")), code=int((event.get("responseStatus") or {}).get("code", 0)),
                         received=_ts(event["requestReceivedTimestamp"]), completed=_ts(event["stageTimestamp"])))
    return sorted(out, key=lambda w: w.received)


class ReplicaProcess:
    """What every CCM process of the suite has: a management-API proxy, a JSON log, a metrics port, a life.
    Subclasses set ``name``, ``fault``, ``proxy``, ``port``, ``log``, ``env`` and ``proc = None``."""

    LOG_TITLE = "CCM log"
    name: str
    fault: str | None
    proxy: HoldingProxy
    port: int
    log: Path
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None

    async def _launch(self) -> None:
        command: Sequence[str] = ([sys.executable, "-m", "tests.reliability.faulty", self.fault]
                                  if self.fault else [ccm_binary()])
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(*command, env=self.env, stdout=log, stderr=log,
                                                             cwd=str(registry.ROOT))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

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
            self.proxy.set_hold(0.0)  # let it release its Lease(s) and hand its work back
        code = await stop_process(self.proc)
        await self.proxy.stop()
        if self.log.exists():
            registry.add_text(f"{self.LOG_TITLE} of replica {self.name} ({registry.current_nodeid()})",
                              self.log.read_text())
        return code


class Replica(ReplicaProcess):
    """One daemon process: its own tenant identity, its own lease identity, its own proxy to the management API."""

    def __init__(self, name: str, server: KubeAPIServer, emulator: EmulatorServer, tmp: Path, *, lease: str,
                 fault: str | None = None, management_valid_for: timedelta | None = None, **settings: str) -> None:
        self.name, self.server, self.fault = name, server, fault
        self.tenant_user, self.lease_user = f"ccm-{name}", f"lease-{name}"
        self.proxy = HoldingProxy(server.port)
        self.port = free_port()
        self.log = tmp / f"{name}.log"
        # Mounted as a Secret volume would be, so it can be rotated (rotate_management).
        self.management_volume = SecretVolume(tmp / f"{name}-management")
        self.management_kubeconfig = self.management_volume.path("kubeconfig")
        self.management_valid_for = management_valid_for
        self.proc: asyncio.subprocess.Process | None = None
        self.env = clean_env(
            CLOUDSIGMA_REGION="zrh", CLOUDSIGMA_USERNAME=ALICE, CLOUDSIGMA_PASSWORD=ALICE_PW,
            CLOUDSIGMA_API_URL=emulator.api_url, CLOUDSIGMA_IMPERSONATION_API_URL=emulator.api_url,
            CLOUDSIGMA_KUBECONFIG=str(server.kubeconfig(self.tenant_user, ["system:masters"])),
            CLOUDSIGMA_LEADER_ELECT="true", CLOUDSIGMA_LEADER_ELECT_KUBECONFIG=str(self.management_kubeconfig),
            CLOUDSIGMA_LEADER_ELECT_RESOURCE_NAMESPACE="default", CLOUDSIGMA_LEADER_ELECT_RESOURCE_NAME=lease,
            CLOUDSIGMA_LEADER_ELECT_IDENTITY=f"replica-{name}",
            CLOUDSIGMA_LEADER_ELECT_LEASE_DURATION=f"{LEASE:g}s",
            CLOUDSIGMA_LEADER_ELECT_RENEW_DEADLINE=f"{DEADLINE:g}s", CLOUDSIGMA_LEADER_ELECT_RETRY_PERIOD=f"{RETRY:g}s",
            CLOUDSIGMA_METRICS_BIND_ADDRESS=f"127.0.0.1:{self.port}", CLOUDSIGMA_LOG_FORMAT="json",
            CLOUDSIGMA_LOG_LEVEL="debug", CLOUDSIGMA_SERVER_CACHE_MAX_AGE="0.2s", CLOUDSIGMA_NODE_MONITOR_PERIOD="1s",
            CLOUDSIGMA_HTTP_TIMEOUT="5s", CLOUDSIGMA_CONCURRENT_NODE_SYNCS="4",
        )
        self.env.update(settings)

    async def start(self) -> None:
        await self.proxy.start()
        self.rotate_management(self.management_valid_for)
        await self._launch()

    def rotate_management(self, valid_for: timedelta | None = None) -> None:
        """A new client certificate in the management kubeconfig, swapped in as the kubelet swaps a Secret."""
        text = self.server.fresh_kubeconfig_text(self.lease_user, ["system:masters"], server=self.proxy.url,
                                                 valid_for=valid_for)
        self.management_volume.write({"kubeconfig": text})

    async def metrics(self) -> str:
        if not self.alive:
            return ""
        with contextlib.suppress(Exception):
            return (await http_get(f"http://127.0.0.1:{self.port}/metrics"))[1]
        return ""

    async def leading(self) -> bool:
        return metric_value(await self.metrics(), "cloudsigma_ccm_leader") == 1.0


@contextlib.asynccontextmanager
async def replicas(*started: ReplicaProcess) -> AsyncIterator[None]:
    """Stop every process given when the block ends, however it ends."""
    try:
        yield
    finally:
        for replica in started:
            await replica.stop()


async def one_leader(group: Sequence[Replica]) -> Replica | None:
    leading = [r for r in group if await r.leading()]
    return leading[0] if len(leading) == 1 else None
