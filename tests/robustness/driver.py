"""The robustness run: real parts up, the schedule executed, the observer watching, the settled state checked.

``python -m tests.robustness --seed N`` (see ``__main__``) and ``tests/robustness/test_robustness.py`` both call
:func:`run`. Parts: a real kube-apiserver with an audit log (and etcd compaction every second with the watch cache
off, so a resumed watch really expires), the CloudSigma emulator in this process, and two ``cloudsigma-ccm``
processes (the built console script) on one Lease, each with its own tenant identity and its own proxy to the
management API. :class:`Executor` turns each :class:`~tests.robustness.schedule.Op` into actions on those parts;
the :class:`~tests.robustness.observer.Observer` checks invariants as they happen; a violation ends the run with
the seed, the invariant, the Node and the last operations.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import signal
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api, V1DeleteOptions, V1Preconditions
from kubernetes_asyncio.client.exceptions import ApiException

from tests.emulator import EmulatorServer, EmulatorState, Fault, private_vlan_nic, public_dhcp_nic
from tests.integration.harness import ALICE, ALICE_PW, BOB_PW, CLIENT_ID, CLIENT_SECRET, two_users
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.nodes import (
    PROVIDED_NODE_IP_ANNOTATION,
    delete_all_nodes,
    patch_node_status,
    register_node,
    set_ready,
)
from tests.realenv.proxy import HoldingProxy
from tests.reliability.replicas import LEASE, Replica
from tests.reliability.support import retry_kube
from tests.robustness.observer import EXPECT, HOST, INVARIANTS, Observer, Writer, server_ipv4, settled_problems
from tests.robustness.schedule import INITIAL_NODES, Op, generate

LEASE_NAME = "ccm-robustness"
VLAN = "0b7c9b3e-5f55-4b4a-8d5b-3c1e2a9f0a11"
KUBELET_ADDRESSES = "robustness.test/kubelet-addresses"
#: How long after the faults stop every Node must be as its server says (invariant 6).
SETTLE_BOUND = 45.0
REPLICA_SETTINGS = {
    "CLOUDSIGMA_NODE_DELETION_GRACE_PERIOD": "3s",
    "CLOUDSIGMA_NODE_STATUS_UPDATE_FREQUENCY": "2s",
    "CLOUDSIGMA_SERVER_CACHE_MAX_AGE": "1s",
}


class Router:
    """The API endpoint the replicas are given (``CLOUDSIGMA_API_URL``): a loopback TCP hop in front of the emulator
    that can send new connections to *another location's* emulator for a while, as a misrouted DNS name or load
    balancer would. Each location logs its own requests, so the observer's proof rule reads the right one."""

    def __init__(self, home: EmulatorServer) -> None:
        self.home = home
        self.proxy = HoldingProxy(home.port)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}/api/2.0/"



class MutantReplica(Replica):
    """A replica running ``python -m tests.robustness.mutants MUTANT``: the daemon with an old bug put back."""

    mutant = ""

    async def _launch(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.robustness.mutants", self.mutant, env=self.env, stdout=log,
                stderr=log, cwd=str(Path(__file__).resolve().parents[2]))


class RunFailed(AssertionError):
    """A violated invariant (or an unsettled end state), with everything needed to replay it."""

    def __init__(self, text: str, report: Report | None = None) -> None:
        super().__init__(text)
        self.report = report


@dataclass
class Report:
    seed: int
    ops: list[Op]
    done: list[str] = field(default_factory=list)  # executed operations, with what happened
    checks: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    settle_seconds: float = 0.0
    baseline_per_min: float = 0.0
    rest_per_min: float = 0.0
    log_lines: int = 0
    events: int = 0
    node_events: int = 0
    ccm_deletions: int = 0
    rss: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # process -> (seconds, MiB)
    keep_going: bool = False
    violations: list[str] = field(default_factory=list)

    def schedule_text(self) -> str:
        return "\n".join(op.describe() for op in self.ops)

    def summary(self) -> str:
        checks = ", ".join(f"{k}: {self.checks.get(k, 0)}" for k in INVARIANTS)
        return (f"seed {self.seed}: {len(self.done)} operations in {self.seconds:.0f} s; settled in "
                f"{self.settle_seconds:.1f} s (bound {SETTLE_BOUND:g} s); CloudSigma calls/min at rest "
                f"{self.rest_per_min:.0f} (before the faults {self.baseline_per_min:.0f}); {self.log_lines} log "
                f"lines, {self.events} Events, {self.node_events} Node events seen, {self.ccm_deletions} deletions "
                f"by the CCM; checks per invariant: {checks}")


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Executor:
    """Applies operations to the real parts. Randomness it needs (an address, a tag) comes from the op's step and
    the seed, so a replay does the same."""

    def __init__(self, seed: int, state: EmulatorState, server: KubeAPIServer, api: ApiClient,
                 replicas: list[Replica], observer: Observer, report: Report, *, router: Router | None = None,
                 elsewhere: EmulatorServer | None = None) -> None:
        self.seed = seed
        self.router = router
        self.elsewhere = elsewhere
        self.misrouted = 0  # wrong_location windows open
        self.state = state
        self.server = server
        self.api = api
        self.core = CoreV1Api(api)
        self.replicas = replicas
        self.observer = observer
        self.report = report
        self.sids: dict[str, str] = {}  # abstract server id -> uuid
        self.pending: list[tuple[float, Callable[[], Awaitable[None]]]] = []  # (due, undo)
        self.vlan_ips = 0
        self.kubelet_posts: list[asyncio.Task[None]] = []

    # ----------------------------------------------------------------------------------------- helpers

    async def kube(self, call: Callable[[], Awaitable[Any]]) -> Any:
        return await retry_kube(call, timeout=60)

    async def node(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube(lambda: self._read(name))  # type: ignore[no-any-return]
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def _read(self, name: str) -> dict[str, Any] | None:
        try:
            node = await self.core.read_node(name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self.api.sanitize_for_serialization(node)  # type: ignore[no-any-return]

    def vm(self, sid: str) -> dict[str, Any] | None:
        uuid = self.sids.get(sid)
        return self.state.servers.get(uuid) if uuid else None

    def hosted_on(self, uuid: str) -> list[str]:
        return [name for name, node in self.observer.nodes.items()
                if (node["metadata"].get("annotations") or {}).get(HOST) == uuid]

    def later(self, seconds: float, undo: Callable[[], Awaitable[None]]) -> None:
        self.pending.append((time.monotonic() + seconds, undo))

    async def run_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        due = [p for p in self.pending if everything or p[0] <= now]
        self.pending = [p for p in self.pending if p not in due]
        for _, undo in sorted(due, key=lambda p: p[0]):
            await undo()

    def _remove_fault(self, fault: Fault) -> Callable[[], Awaitable[None]]:
        async def undo() -> None:
            with contextlib.suppress(ValueError):
                self.state.faults.rules.remove(fault)
        return undo

    async def leader(self) -> Replica | None:
        for replica in self.replicas:
            if replica.alive and await replica.leading():
                return replica
        return None

    # ----------------------------------------------------------------------------------------- kubelet side

    async def do_register(self, name: str, host: str, system_uuid: bool, addresses: str,
                          status_after: float) -> str:
        server = self.vm(host)
        if server is None or server["status"] != "running":
            return "skipped: its VM is not running"
        if await self.node(name) is not None:
            return "skipped: a Node of that name exists"
        uuid = server["uuid"]
        same_name = [s["uuid"] for s in self.state.servers.values() if s["name"] == name]
        expect = uuid if system_uuid else (same_name[0] if len(same_name) == 1 else "")
        kubelet: list[tuple[str, str]] = []
        provided = None
        has_vlan = any(nic.get("vlan") for nic in server["nics"])
        if addresses == "vlan" and has_vlan:
            self.vlan_ips += 1
            kubelet = [("InternalIP", f"10.77.{self.vlan_ips // 250}.{self.vlan_ips % 250 + 2}")]
        elif addresses == "provided":
            provided = sorted(server_ipv4(server))[0] if server_ipv4(server) else None
        notes = {HOST: uuid, EXPECT: expect, KUBELET_ADDRESSES: ",".join(f"{t}={a}" for t, a in kubelet)}
        created = await self.kube(lambda: register_node(self.api, name, system_uuid=uuid if system_uuid else None,
                                                        provided_node_ip=provided, annotations=notes,
                                                        status_on_create=True))
        if kubelet:
            uid = created.metadata.uid if created is not None else None
            self.kubelet_posts.append(asyncio.create_task(self.post_addresses(name, uid, kubelet, status_after)))
        return f"on {uuid} expect {expect or 'none'}" + (f" provided {provided}" if provided else "") + \
            (f" kubelet {kubelet} after {status_after}s" if kubelet else "")

    async def post_addresses(self, name: str, uid: str | None, kubelet: list[tuple[str, str]], after: float) -> None:
        """The kubelet's first status with its own (VLAN) address, a moment after it registered: added to what the
        Node has (the cloud's addresses stay), guarded by the resourceVersion it read; posted once."""
        await asyncio.sleep(after)
        for _ in range(20):
            node = await self.node(name)
            if node is None or node["metadata"]["uid"] != uid:
                return
            current = list((node.get("status") or {}).get("addresses") or [])
            missing = [{"type": t, "address": a} for t, a in kubelet
                       if not any(c.get("type") == t and c.get("address") == a for c in current)]
            if not missing:
                return
            body = {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                    "status": {"addresses": missing + current}}
            try:
                await self.kube(lambda b=body: patch_node_status(self.api, name, b))  # type: ignore[misc]
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise

    async def delete(self, name: str) -> str:
        node = await self.node(name)
        if node is None:
            return "skipped: no such Node"
        uid = node["metadata"]["uid"]
        self.observer.driver_deleted.add(uid)
        body = V1DeleteOptions(preconditions=V1Preconditions(uid=uid))
        try:
            await self.kube(lambda: self.core.delete_node(name, body=body))
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
        return f"uid {uid}"

    async def do_delete_node(self, name: str) -> str:
        return await self.delete(name)

    async def do_reregister(self, name: str, host: str, system_uuid: bool, addresses: str, status_after: float,
                            pause: float) -> str:
        deleted = await self.delete(name)
        await asyncio.sleep(pause)
        return f"{deleted}; " + await self.do_register(name, host, system_uuid, addresses, status_after)

    def kubelet_alive(self, node: dict[str, Any]) -> bool:
        host = self.state.servers.get((node["metadata"].get("annotations") or {}).get(HOST, ""))
        return host is not None and host["status"] == "running"

    async def do_ready(self, name: str, ready: bool) -> str:
        node = await self.node(name)
        if node is None:
            return "skipped: no such Node"
        if ready and not self.kubelet_alive(node):
            return "skipped: its VM is not running"
        await self.kube(lambda: set_ready(self.api, name, ready))
        return ""

    async def reboot(self, name: str) -> None:
        """The kubelet starts again: new bootID, Ready, and (``--node-ip``) the current address."""
        node = await self.node(name)
        if node is None:
            return
        host = self.state.servers[node["metadata"]["annotations"][HOST]]
        if PROVIDED_NODE_IP_ANNOTATION in (node["metadata"].get("annotations") or {}) and server_ipv4(host):
            ip = sorted(server_ipv4(host))[0]
            patch = {"metadata": {"annotations": {PROVIDED_NODE_IP_ANNOTATION: ip}}}
            await self.kube(lambda: self.core.patch_node(name, patch))
        status = {"status": {"nodeInfo": {"bootID": str(uuidlib.UUID(int=random.Random(
            f"{self.seed}-{name}-{time.monotonic()}").getrandbits(128)))}}}
        await self.kube(lambda: patch_node_status(self.api, name, status))
        await self.kube(lambda: set_ready(self.api, name, True))

    async def do_reboot(self, name: str, new_ip: bool) -> str:
        node = await self.node(name)
        if node is None:
            return "skipped: no such Node"
        if not self.kubelet_alive(node):
            return "skipped: its VM is not running"
        uuid = node["metadata"]["annotations"][HOST]
        if new_ip:
            self.state.set_server_ip(uuid, "auto")
        await self.reboot(name)
        return f"ip {sorted(server_ipv4(self.state.servers[uuid]))}"

    async def kubelets_die(self, uuid: str) -> None:
        for name in self.hosted_on(uuid):
            with contextlib.suppress(ApiException):
                await self.kube(lambda n=name: set_ready(self.api, n, False))  # type: ignore[misc]

    # ----------------------------------------------------------------------------------------- cloud side

    async def do_create_server(self, name: str, sid: str, vlan: bool) -> str:
        nics = [public_dhcp_nic("auto")] + ([private_vlan_nic(VLAN)] if vlan else [])
        server = self.state.add_server(ALICE, name, nics=nics, cpu=2000, smp=2, mem=4 * 1024**3)
        self.sids[sid] = uuid = str(server["uuid"])
        return uuid

    async def do_stop_server(self, sid: str, name: str) -> str:
        server = self.vm(sid)
        if server is None:
            return "skipped: gone"
        self.state.set_status(server["uuid"], "stopped")
        await self.kubelets_die(server["uuid"])
        return ""

    async def do_start_server(self, sid: str, name: str) -> str:
        server = self.vm(sid)
        if server is None:
            return "skipped: gone"
        self.state.set_status(server["uuid"], "running")
        for node in self.hosted_on(server["uuid"]):
            await self.reboot(node)
        return ""

    async def do_delete_server(self, sid: str, name: str) -> str:
        server = self.vm(sid)
        if server is None:
            return "skipped: gone"
        self.state.remove_server(server["uuid"])
        await self.kubelets_die(server["uuid"])
        return str(server["uuid"])

    async def do_replace_vm(self, sid: str, name: str, new_sid: str, vlan: bool) -> str:
        gone = await self.do_delete_server(sid, name)
        return f"{gone} -> " + await self.do_create_server(name, new_sid, vlan)

    async def do_change_ip(self, sid: str, name: str) -> str:
        server = self.vm(sid)
        if server is None or server["status"] != "running":
            return "skipped"
        self.state.set_server_ip(server["uuid"], "auto")
        return str(sorted(server_ipv4(server)))

    async def do_change_meta(self, sid: str, name: str) -> str:
        server = self.vm(sid)
        if server is None:
            return "skipped"
        self.state.set_server_meta(server["uuid"], {"note": f"step-{len(self.report.done)}"})
        return ""

    async def do_change_tags(self, sid: str, name: str) -> str:
        server = self.vm(sid)
        if server is None:
            return "skipped"
        tag = self.state.add_tag(f"robustness-{len(self.report.done)}", owner=ALICE)
        self.state.set_server_tags(server["uuid"], [tag])
        return ""

    async def do_move_host(self, sid: str, name: str) -> str:
        server = self.vm(sid)
        if server is None:
            return "skipped"
        self.state.move_server(server["uuid"], f"host-{len(self.report.done) % 3}")
        return ""

    async def do_outage(self, seconds: float) -> str:
        fault = self.state.add_fault(Fault("error", count=None, status=503, path_prefix="/api/2.0/"))
        self.later(seconds, self._remove_fault(fault))
        return ""

    async def do_rate_limit(self, count: int, retry_after: int) -> str:
        self.state.rate_limit_next(count, retry_after=retry_after, path_prefix="/api/2.0/")
        return ""

    async def do_slow(self, ms: int, seconds: float) -> str:
        fault = self.state.delay_next(None, ms, path_prefix="/api/2.0/")
        self.later(seconds, self._remove_fault(fault))
        return ""

    async def do_proxy_404(self, seconds: float, scope: str) -> str:
        prefixes = ["/api/2.0/servers/"] if scope == "servers" else _single_server_prefixes()
        for prefix in prefixes:
            fault = self.state.proxy_html_next(None, status=404, path_prefix=prefix, method="GET")
            self.later(seconds, self._remove_fault(fault))
        return scope

    async def do_wrong_location(self, seconds: float) -> str:
        """The API URL answers as another location for a while: the same user has an account there (so the
        credential works) with none of the cluster's servers; every GET of one answers CloudSigma's own 404
        notexist with a request id. Only the fresh listing holding another Node's server tells it apart."""
        if self.router is None or self.elsewhere is None:
            return "skipped: no other location"
        self.misrouted += 1
        if self.misrouted == 1:
            self.router.proxy.retarget(self.elsewhere.port)

        async def back() -> None:  # when the last overlapping window ends
            assert self.router is not None
            self.misrouted -= 1
            if not self.misrouted:
                self.router.proxy.retarget(self.router.home.port)
        self.later(seconds, back)
        return f"location {self.elsewhere.state.location_id}"

    # ----------------------------------------------------------------------------------------- credentials

    def _revoke_tokens(self) -> None:
        key = self.state.rotate_signing_key()
        if self.elsewhere is not None:
            self.elsewhere.state.signing_key = key  # one identity provider for both locations

    async def do_token_revoked(self) -> str:
        """The IdP's signing key rotated: every token issued so far answers 401; the CCM must get a new one."""
        self._revoke_tokens()
        return ""

    async def do_idp_down(self, seconds: float, revoke: bool) -> str:
        """The identity provider answers 503 (sometimes with the tokens in use revoked first): no new token, so the
        password credential (the fallback) answers until it is back — and proves nothing for a deletion."""
        fault = self.state.add_fault(Fault("error", count=None, status=503, path_prefix="/realms/"))
        if revoke:
            self._revoke_tokens()
        self.later(seconds, self._remove_fault(fault))
        return "tokens revoked" if revoke else ""

    # ----------------------------------------------------------------------------------------- process

    async def do_kill_leader(self, restart_after: float) -> str:
        leader = await self.leader()
        if leader is None:
            return "skipped: no leader"
        leader.kill()

        async def restart() -> None:
            if leader.proc is not None:
                await leader.proc.wait()
            await leader._launch()  # the kubelet starts the pod's container again
        self.later(restart_after, restart)
        return leader.name

    async def do_pause_leader(self, seconds: float) -> str:
        leader = await self.leader()
        if leader is None or leader.proc is None:
            return "skipped: no leader"
        proc = leader.proc
        proc.send_signal(signal.SIGSTOP)

        async def resume() -> None:
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT)
        self.later(seconds, resume)
        return leader.name

    async def do_restart_apiserver(self, downtime: float) -> str:
        await self.server.arestart(downtime)
        return ""

    async def do_idle(self) -> str:
        return ""

    async def apply(self, op: Op) -> str:
        handler: Callable[..., Awaitable[str]] = getattr(self, f"do_{op.kind}")
        return str(await handler(**op.args))

    # ----------------------------------------------------------------------------------------- settling

    async def settle_kubelets(self) -> None:
        """Faults over: every process up, every kubelet saying what its VM does."""
        await self.run_due(everything=True)
        self.state.clear_faults()
        for task in self.kubelet_posts:
            with contextlib.suppress(Exception):
                await task
        for replica in self.replicas:
            if replica.proc is not None and replica.proc.returncode is None:
                replica.proc.send_signal(signal.SIGCONT)
            if not replica.alive:
                await replica._launch()
        for name, node in list(self.observer.nodes.items()):
            host = self.state.servers.get((node["metadata"].get("annotations") or {}).get(HOST, ""))
            with contextlib.suppress(ApiException):
                if host is not None and host["status"] == "running":
                    await self.reboot(name)
                else:
                    await self.kube(lambda n=name: set_ready(self.api, n, False))  # type: ignore[misc]


def _single_server_prefixes() -> list[str]:
    """Path prefixes that match ``/servers/<any uuid>/`` but not ``/servers/detail/`` (nor any other word)."""
    hexdigits = "0123456789abcdef"
    out = [f"/api/2.0/servers/{c}" for c in hexdigits if c != "d"]
    out += [f"/api/2.0/servers/d{c}" for c in hexdigits if c != "e"]
    out += [f"/api/2.0/servers/de{c}" for c in hexdigits]
    return out


def calls_per_minute(state: EmulatorState, since: float, until: float) -> float:
    count = sum(1 for r in state.requests if since <= r.started_at < until and r.path.startswith("/api/2.0/"))
    return count * 60.0 / max(until - since, 1e-6)


def secrets_of_world() -> dict[str, str]:
    basic = base64.b64encode(f"{ALICE}:{ALICE_PW}".encode()).decode()
    return {ALICE_PW: "alice's password", BOB_PW: "bob's password", CLIENT_SECRET: "OAuth client secret",
            basic: "basic-auth header value"}


@dataclass
class Budget:
    steps: int = 40
    rest_window: float = 15.0
    settle_bound: float = SETTLE_BOUND
    #: Soak: keep drawing operations until this many seconds have passed (0: just ``steps``).
    duration: float = 0.0
    #: Calls/min at rest may exceed the rate before the faults by this factor (more Nodes, more servers).
    rest_factor: float = 2.0
    #: Soak: record violations and go on (the run still fails at the end, listing them all).
    keep_going: bool = False


#: The replicas' --node-monitor-period (s, tests/reliability/replicas.py): how often NotReady Nodes are looked at.
MONITOR_PERIOD = 1.0


def _ready(node: dict[str, Any]) -> bool:
    """Whether the Node's Ready condition is True."""
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def run(seed: int, budget: Budget | None = None, *, workdir: Path | None = None,
              server: KubeAPIServer | None = None, mutant: str = "",
              progress: Callable[[str], None] = lambda _: None) -> Report:
    """One robustness run; raises :class:`RunFailed` on a violation, returns the report otherwise."""
    budget = budget or Budget()
    steps = budget.steps if not budget.duration else max(budget.steps, int(budget.duration / 0.45))
    ops = generate(seed, steps)
    report = Report(seed, ops, keep_going=budget.keep_going)
    own_server = server is None
    tmp = Path(tempfile.mkdtemp(prefix=f"robustness-{seed}-", dir=workdir))
    if server is None:
        server = KubeAPIServer(f"robustness-{seed}", audit=True,
                               extra_args=["--etcd-compaction-interval=1s", "--watch-cache=false"])
        await server.astart()
    # Tokens live 20 s: they expire and are renewed all through a run (the credential side of the menu).
    state = EmulatorState(max_log=10_000_000, token_lifetime=20)
    two_users(state)
    state.add_client(CLIENT_ID, CLIENT_SECRET)
    emulator = EmulatorServer(state)
    await emulator.start()
    # Another location where the same people have accounts (wrong_location); the replicas reach the API through
    # the router.
    other = state.another_location("fra")
    other.add_server(ALICE, "fra-vm", nics=[public_dhcp_nic("auto")])
    other.add_client(CLIENT_ID, CLIENT_SECRET)
    elsewhere = EmulatorServer(other)
    await elsewhere.start()
    router = Router(emulator)
    await router.proxy.start()
    api = await api_client_for(server.admin_kubeconfig)
    if not own_server:
        await delete_all_nodes(api)
    lease_name = f"{LEASE_NAME}-{seed}-{uuidlib.uuid4().hex[:6]}"
    kind = MutantReplica if mutant else Replica
    # Impersonated tokens from the emulator's OAuth side first, the owner's password as the fallback.
    credentials = {"CLOUDSIGMA_IMPERSONATION_ENABLED": "true", "CLOUDSIGMA_OAUTH_URL": emulator.realm_url(),
                   "CLOUDSIGMA_CLIENT_ID": CLIENT_ID, "CLOUDSIGMA_CLIENT_SECRET": CLIENT_SECRET,
                   "CLOUDSIGMA_USER_EMAIL": ALICE}
    settings = {**REPLICA_SETTINGS, **credentials}
    group = [kind(n, server, router, tmp, lease=lease_name, **settings)  # type: ignore[arg-type]
             for n in ("a", "b")]
    for replica in group:
        if isinstance(replica, MutantReplica):
            replica.mutant = mutant

    async def metrics() -> dict[str, str]:
        return {r.name: await r.metrics() for r in group}

    observer = Observer(api, state, audit_log=server.audit_log_path, lease_name=lease_name, lease_duration=LEASE,
                        writers={r.name: Writer(r.tenant_user, r.lease_user) for r in group},
                        logs=lambda: [r.log for r in group], metrics=metrics, secrets=secrets_of_world(),
                        account=ALICE)
    executor = Executor(seed, state, server, api, group, observer, report, router=router, elsewhere=elsewhere)
    started = time.monotonic()
    initial = ops[:2 * INITIAL_NODES]
    try:
        observer.start()
        for replica in group:
            await replica.start()
        for op in initial:
            report.done.append(f"{op.describe()}: {await executor.apply(op)}")
        await _wait_until(lambda: not settled_problems(observer.nodes, state, region="zrh")
                          and len(observer.nodes) == len([o for o in initial if o.kind == 'register']), 60,
                          "the initial Nodes initialized", observer, report)
        window_start = time.time()
        await asyncio.sleep(budget.rest_window)
        report.baseline_per_min = calls_per_minute(state, window_start, time.time())
        baseline_nodes = max(len(observer.nodes), 1)
        progress(f"baseline {report.baseline_per_min:.0f} calls/min")
        rss_t0 = time.monotonic()
        queue = ops[len(initial):]
        for op in queue:
            if budget.duration and time.monotonic() - started > budget.duration:
                break
            await executor.run_due()
            try:
                outcome = await executor.apply(op)
            except Exception as exc:  # the harness's own call failed (e.g. kube-apiserver down too long)
                outcome = f"harness error {exc!r}"
            report.done.append(f"{time.monotonic() - started:7.2f}s {op.describe()}: {outcome}")
            progress(report.done[-1])
            _raise_on_violation(observer, report)
            await asyncio.sleep(op.then)
            _raise_on_violation(observer, report)
            for replica in group:
                if replica.proc is not None and replica.alive:
                    sample = (time.monotonic() - rss_t0, _rss_mib(replica.proc.pid))
                    report.rss.setdefault(f"{replica.name} pid {replica.proc.pid}", []).append(sample)
        # Invariant 6: the faults stop; within the bound every Node is as its server says.
        await executor.settle_kubelets()
        settle_start = time.monotonic()
        await _wait_until(lambda: not settled_problems(observer.nodes, state, region="zrh"), budget.settle_bound,
                          "every Node as its server says", observer, report)
        report.settle_seconds = time.monotonic() - settle_start
        observer.checks[6] += len(observer.nodes)
        window_start = time.time()
        await asyncio.sleep(budget.rest_window)
        report.rest_per_min = calls_per_minute(state, window_start, time.time())
        observer.checks[6] += 1
        # Calls grow with the Nodes: scale by their number. A NotReady Node is looked at every monitor period by
        # design (one shared pass: a listing with its tag and host-group calls, and a GET per NotReady Node), so
        # while one rests NotReady that pass's cost is allowed on top.
        scale = max(1.0, len(observer.nodes) / baseline_nodes)
        not_ready = sum(1 for node in observer.nodes.values() if not _ready(node))
        passes = (3 + not_ready) * 60.0 / MONITOR_PERIOD if not_ready else 0.0
        allowed = budget.rest_factor * scale * report.baseline_per_min + 10 + passes
        if report.rest_per_min > allowed:
            observer.violate(6, "", f"CloudSigma calls/min at rest {report.rest_per_min:.0f} with "
                                    f"{len(observer.nodes)} Nodes ({not_ready} NotReady), before the faults "
                                    f"{report.baseline_per_min:.0f} with {baseline_nodes} (allowed "
                                    f"x{budget.rest_factor:g} per Node + 10 + {passes:.0f} for NotReady passes)")
        await asyncio.sleep(6.0)  # the audit tail: every write of the run is past the settle horizon
        observer.check_writers(settle=0.0)
        observer.check_logs()
        await observer.check_events_and_metrics()
        report.keep_going = False
        _raise_on_violation(observer, report)
        if report.violations:
            raise RunFailed(failure_text(report, "\n".join(report.violations)
                                         + f"\n({len(report.violations)} violations)", ""), report)
    finally:
        report.seconds = time.monotonic() - started
        report.checks = dict(observer.checks)
        report.log_lines, report.events = observer.log_lines, observer.events_total
        report.node_events, report.ccm_deletions = observer.events_seen, len(observer.ccm_deleted)
        await observer.stop()
        for replica in group:
            if replica.proc is not None and replica.proc.returncode is None:
                replica.proc.send_signal(signal.SIGCONT)
            await replica.stop()
        await api.close()
        await router.proxy.stop()
        await elsewhere.stop()
        await emulator.stop()
        if own_server:
            await server.astop()
    return report


def _raise_on_violation(observer: Observer, report: Report) -> None:
    if not observer.violations:
        return
    if report.keep_going:  # a soak: note each one with the operations before it, and go on
        for violation in observer.violations:
            if any(line.startswith(violation.describe()) for line in report.violations):
                continue  # the same finding seen again at a later event
            last = "; ".join(line.strip() for line in report.done[-3:])
            report.violations.append(f"{violation.describe()} [after: {last}]")
        observer.violations.clear()
        return
    first = observer.violations[0]
    what = first.describe()
    if report.violations:
        what = "\n".join([*report.violations, what]) + f"\n({len(report.violations) + 1} violations)"
    raise RunFailed(failure_text(report, what, first.node), report)


def failure_text(report: Report, what: str, node: str) -> str:
    last = "\n".join(f"  {line}" for line in report.done[-12:])
    return (f"robustness run failed, seed {report.seed} (replay: python -m tests.robustness --seed {report.seed})\n"
            f"{what}\nnode: {node or '-'}\nlast operations:\n{last}\nschedule:\n{report.schedule_text()}")


async def _wait_until(predicate: Callable[[], bool], timeout: float, what: str, observer: Observer,
                      report: Report) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        _raise_on_violation(observer, report)
        if time.monotonic() > deadline:
            problems = settled_problems(observer.nodes, observer.state, region="zrh")
            detail = "; ".join(f"{n}: {p}" for n, p in problems[:8])
            observer.violate(6, problems[0][0] if problems else "", f"not {what} within {timeout:g} s: {detail}")
            _raise_on_violation(observer, report)
            return
        await asyncio.sleep(0.2)


def rss_slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope in MiB per hour."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(m for _, m in samples) / n
    var = sum((t - mx) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    return sum((t - mx) * (m - my) for t, m in samples) / var * 3600


__all__ = ["Budget", "Report", "RunFailed", "rss_slope", "run"]
