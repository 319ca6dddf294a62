"""The independent observer of a robustness run: it watches, it never acts.

Its sources are its own: a watch of the Nodes (its own client, re-listing after any break), the emulator's
request log and server table, the kube-apiserver's audit log, and the replicas' log files and /metrics pages.
Its idea of "which server is this Node's" comes from the kubelet side of the world, which the driver writes on
the Node when it registers it (annotations :data:`HOST` and :data:`EXPECT`): with a systemUUID, that server;
without, the one server of the Node's name that existed at registration, or none when there were several or
none. It shares no code with ``ccm/nodes/matching.py``.

Invariants (numbers as in docs/reliability.md):
1. a Node's providerID names its server (``EXPECT``; where that is undecidable, ``HOST``), never another one, at
   every event seen;
2. a Node the driver did not delete is deleted only once its server is gone from the emulator, and (when it had
   a providerID) the last GET of that uuid before the deletion was CloudSigma's own 404 to the cluster's account
   at the home location — not a proxy's, not another location's (those are in another request log);
3. no Node without the uninitialized taint lacks an InternalIP/ExternalIP, and once a Node showed the address its
   kubelet reported (a VLAN InternalIP the API cannot know), it never loses it;
4. every tenant write (audit log) comes from the replica that held the Lease, before its lease ran out;
5. no secret in any replica log line, Event or /metrics page;
6. (:func:`settled_problems`, after the faults stop) each Node initialized and as its server says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes_asyncio import watch
from kubernetes_asyncio.client import ApiClient, CoreV1Api

from tests.emulator import EmulatorState

HOST = "robustness.test/host"
EXPECT = "robustness.test/expect"
UNINIT = "node.cloudprovider.kubernetes.io/uninitialized"
SHUTDOWN = "node.cloudprovider.kubernetes.io/shutdown"
INSTANCE_TYPE = "node.kubernetes.io/instance-type"
REGION = "topology.kubernetes.io/region"
INVARIANTS = {
    1: "providerID names the Node's server",
    2: "no deletion while the server exists / without CloudSigma's own 404",
    3: "no untainted Node without an InternalIP/ExternalIP; no Node loses the address its kubelet reported",
    4: "only the Lease holder writes",
    5: "no secret in logs, Events, metrics",
    6: "after the faults stop: every Node as its server says, calls back to the rest rate",
}
WRITES = ("create", "update", "patch", "delete", "deletecollection")


@dataclass(frozen=True)
class Violation:
    invariant: int
    node: str
    detail: str
    at: float = field(default_factory=time.time)

    def describe(self) -> str:
        return f"invariant {self.invariant} ({INVARIANTS[self.invariant]}) on {self.node or '-'}: {self.detail}"


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def taints(node: dict[str, Any]) -> set[str]:
    return {str(t.get("key")) for t in (node.get("spec") or {}).get("taints") or []}


def addresses(node: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(a.get("type")), str(a.get("address"))) for a in (node.get("status") or {}).get("addresses") or []]


def notes_of(node: dict[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("annotations") or {})


def provider_uuid(node: dict[str, Any]) -> str:
    pid = str((node.get("spec") or {}).get("providerID") or "")
    return pid.removeprefix("cloudsigma://")


def server_ipv4(server: dict[str, Any]) -> set[str]:
    """Public IPv4 addresses the API reports for a server (runtime of its NICs)."""
    out = set()
    for nic in server.get("nics") or []:
        runtime = nic.get("runtime") or {}
        ref = runtime.get("ip_v4")
        if isinstance(ref, dict) and ref.get("uuid"):
            out.add(str(ref["uuid"]))
    return out


def size_label(server: dict[str, Any]) -> str:
    return f"{server['smp']}c-{server['cpu']}mhz-{server['mem'] // (1024 * 1024)}mib"


class AuditTail:
    """The audit log read incrementally (the file only grows; a restart of the server appends)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0  # a shared server: only this run's writes
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


@dataclass
class Writer:
    tenant_user: str
    lease_user: str


class Observer:
    """Checks invariants 1-5 as things happen; :meth:`settled_problems` checks 6."""

    def __init__(self, api: ApiClient, state: EmulatorState, *, audit_log: Path, lease_name: str,
                 lease_duration: float, writers: dict[str, Writer], logs: Callable[[], Iterable[Path]],
                 metrics: Callable[[], Any], secrets: dict[str, str], account: str) -> None:
        self.api = api
        self.account = account  # the cluster's CloudSigma user (email) at the home location
        self.state = state
        self.audit = AuditTail(audit_log)
        self.lease_name = lease_name
        self.lease_duration = lease_duration
        self.writers = writers
        self.logs = logs
        self.metrics = metrics
        self.secrets = secrets
        self.nodes: dict[str, dict[str, Any]] = {}
        self.driver_deleted: set[str] = set()  # uids the driver (kubelet side) deleted
        self.ccm_deleted: list[tuple[str, str]] = []  # (name, own server uuid)
        self.violations: list[Violation] = []
        self.checks: Counter[int] = Counter()
        self.events_seen = 0
        self._log_offsets: dict[Path, int] = {}
        self._lease_writes: list[tuple[float, str]] = []  # (received, replica) successful Lease writes
        self._tenant_writes: list[tuple[float, str, str]] = []  # (received, replica, what)
        self._event_uids: set[str] = set()
        self._kubelet_seen: set[tuple[str, tuple[str, str]]] = set()
        self.log_lines = 0
        self.tasks: list[asyncio.Task[None]] = []

    # ----------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._watch_nodes()), asyncio.create_task(self._periodic())]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def violate(self, invariant: int, node: str, detail: str) -> None:
        self.violations.append(Violation(invariant, node, detail))

    # ----------------------------------------------------------------------------------------- nodes (1, 2, 3)

    async def _watch_nodes(self) -> None:
        core = CoreV1Api(self.api)
        while True:
            try:
                body = self.api.sanitize_for_serialization(await core.list_node())
                seen = {}
                for item in body.get("items") or []:
                    seen[item["metadata"]["name"]] = item
                    self._on_node("MODIFIED", item)
                for name in set(self.nodes) - set(seen):
                    self._on_node("DELETED", self.nodes[name])
                rv = body["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=300,
                                              allow_watch_bookmarks=False)
                async for event in stream:
                    raw = event.get("raw_object") or {}
                    if event.get("type") == "ERROR" or raw.get("kind") == "Status":
                        break  # expired (410) or broken: list again
                    self._on_node(str(event["type"]), raw)
            except asyncio.CancelledError:
                raise
            except Exception:  # the API server restarting; the watch ending
                await asyncio.sleep(0.2)

    def _on_node(self, kind: str, node: dict[str, Any]) -> None:
        name = node["metadata"]["name"]
        uid = node["metadata"].get("uid", "")
        self.events_seen += 1
        if kind == "DELETED":
            previous = self.nodes.pop(name, None)
            self._on_deleted(previous or node)
            return
        old = self.nodes.get(name)
        if old is not None and old["metadata"].get("uid") != uid:
            self._on_deleted(old)  # replaced between two observations: the old one was deleted
        self.nodes[name] = node
        self._check_provider_id(node)
        self._check_untainted_has_ip(node)

    def _check_provider_id(self, node: dict[str, Any]) -> None:
        self.checks[1] += 1
        notes = notes_of(node)
        if EXPECT not in notes:
            return
        got = provider_uuid(node)
        # EXPECT is the server a CCM can tell from the Node's registration; when it cannot (no systemUUID and the
        # name not unique then), the server the Node runs on (HOST) is still the only right answer.
        want = notes[EXPECT] or notes.get(HOST, "")
        if got and got != want:
            how = "" if notes[EXPECT] else " (no systemUUID, name not unique at registration)"
            self.violate(1, node["metadata"]["name"], f"providerID cloudsigma://{got}, its server is {want}{how}; "
                                                      f"node uid {node['metadata'].get('uid')}")

    def _check_untainted_has_ip(self, node: dict[str, Any]) -> None:
        self.checks[3] += 1
        uid = node["metadata"].get("uid", "")
        for kubelet in _kubelet_addresses(node):
            if kubelet in addresses(node):
                self._kubelet_seen.add((uid, kubelet))
            elif (uid, kubelet) in self._kubelet_seen:
                self.violate(3, node["metadata"]["name"], f"lost the {kubelet[0]} {kubelet[1]} its kubelet reported; "
                                                          f"addresses now {addresses(node)}")
        if UNINIT in taints(node):
            return
        if not any(t in ("InternalIP", "ExternalIP") for t, _ in addresses(node)):
            self.violate(3, node["metadata"]["name"], f"no uninitialized taint, addresses {addresses(node)}")

    def _on_deleted(self, node: dict[str, Any]) -> None:
        self.checks[2] += 1
        name = node["metadata"]["name"]
        uid = node["metadata"].get("uid", "")
        if uid in self.driver_deleted:
            return
        own = provider_uuid(node) or notes_of(node).get(HOST, "")
        self.ccm_deleted.append((name, own))
        if own and own in self.state.servers:
            self.violate(2, name, f"deleted while its server {own} exists ({self.state.servers[own]['status']})")
            return
        pid = provider_uuid(node)
        if pid:
            # The proof rule: the last direct GET of that server answered before the deletion was CloudSigma's own
            # 404 (no fault: the notexist body, an X-REQUEST-ID) to the cluster's account at this location — not a
            # proxy's page, not another location's or another account's answer, not an older answer.
            now = time.time()
            gets = [r for r in self.state.requests
                    if r.method == "GET" and r.path.rstrip("/").endswith(f"/servers/{pid}")
                    and r.started_at + r.duration_ms / 1000 <= now]
            last = gets[-1] if gets else None
            if last is None:
                self.violate(2, name, f"deleted without any GET of {pid} at this location (request log)")
            elif last.status != 404 or last.fault is not None or not last.request_id or last.user != self.account:
                self.violate(2, name, f"deleted, but the last GET of {pid} before it was not CloudSigma's own 404 "
                                      f"to {self.account}: status {last.status}, fault {last.fault}, user {last.user}")

    # ----------------------------------------------------------------------------------------- periodic (4, 5)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                self.check_writers(settle=5.0)
            with contextlib.suppress(Exception):
                self.check_logs()
            with contextlib.suppress(Exception):
                await self.check_events_and_metrics()

    def _replica_of(self, user: str, field_name: str) -> str | None:
        for name, writer in self.writers.items():
            if getattr(writer, field_name) == user:
                return name
        return None

    def check_writers(self, settle: float) -> None:
        """Invariant 4 for every tenant write received more than ``settle`` s ago (the Lease writes before it are
        in the log by then)."""
        for event in self.audit.read():
            if event.get("verb") not in WRITES:
                continue
            user = str((event.get("user") or {}).get("username", ""))
            ref = event.get("objectRef") or {}
            code = int((event.get("responseStatus") or {}).get("code", 0))
            received = _ts(event["requestReceivedTimestamp"])
            lease_replica = self._replica_of(user, "lease_user")
            if lease_replica and ref.get("resource") == "leases" and ref.get("name") == self.lease_name \
                    and code in (200, 201):
                self._lease_writes.append((received, lease_replica))
            tenant_replica = self._replica_of(user, "tenant_user")
            if tenant_replica:
                what = f"{event['verb']} {ref.get('resource')}/{ref.get('subresource') or ''} {ref.get('name')}"
                self._tenant_writes.append((received, tenant_replica, f"{what} -> {code}"))
        self._lease_writes.sort()
        horizon = time.time() - settle
        due = sorted(w for w in self._tenant_writes if w[0] < horizon)
        self._tenant_writes = [w for w in self._tenant_writes if w[0] >= horizon]
        for received, replica, what in due:
            self.checks[4] += 1
            before = [lw for lw in self._lease_writes if lw[0] <= received]
            if not before:
                self.violate(4, "", f"replica {replica} wrote ({what}) before any replica held the Lease")
                continue
            at, holder = before[-1]
            if holder != replica:
                self.violate(4, "", f"replica {replica} wrote ({what}) at {received:.3f} while {holder} held the "
                                    f"Lease (renewed {at:.3f})")
            elif received >= at + self.lease_duration:
                self.violate(4, "", f"replica {replica} wrote ({what}) {received - at:.3f} s after its last renewal "
                                    f"(lease {self.lease_duration:g} s)")

    def _leaks(self, where: str, text: str) -> None:
        self.checks[5] += 1
        for secret, kind in self.secrets.items():
            if secret in text:
                self.violate(5, "", f"{kind} in {where}")

    def check_logs(self) -> None:
        for path in self.logs():
            if not path.exists():
                continue
            with path.open("rb") as f:
                f.seek(self._log_offsets.get(path, 0))
                data = f.read()
            cut = data.rfind(b"\n") + 1
            self._log_offsets[path] = self._log_offsets.get(path, 0) + cut
            chunk = data[:cut].decode(errors="replace")
            self.log_lines += chunk.count("\n")
            if chunk:
                self._leaks(f"log {path.name}", chunk)

    async def check_events_and_metrics(self) -> None:
        core = CoreV1Api(self.api)
        listed = self.api.sanitize_for_serialization(await core.list_event_for_all_namespaces())
        for event in listed.get("items") or []:
            uid = event["metadata"].get("uid", "")
            if uid not in self._event_uids:
                self._event_uids.add(uid)
                self._leaks("Event", json.dumps(event))
        for name, page in (await self.metrics()).items():
            if page:
                self._leaks(f"/metrics of {name}", page)

    @property
    def events_total(self) -> int:
        return len(self._event_uids)


# --------------------------------------------------------------------------------------------- invariant 6


def settled_problems(nodes: dict[str, dict[str, Any]], state: EmulatorState, *, region: str) -> list[tuple[str, str]]:
    """Invariant 6 for every Node whose server exists: what differs from what the server says (empty: settled).
    A Node without a systemUUID whose name is not unique (at registration, or now while it has no providerID yet)
    is expected to stay uninitialized, and a Node whose server is gone (with a providerID) to be deleted."""
    out = []
    for name, node in sorted(nodes.items()):
        notes = notes_of(node)
        if EXPECT not in notes:
            continue
        want = notes[EXPECT]
        if not want:
            if provider_uuid(node) and provider_uuid(node) != notes.get(HOST):
                out.append((name, "a providerID of another server although its own cannot be told"))
            continue
        server = state.servers.get(want)
        if server is None:
            # Deleted only once a listing shows the cluster's account: one holding another Node's server. Without
            # such a Node nothing tells a missing server from the wrong account, and the Node stays (by design).
            if provider_uuid(node) and _another_nodes_server_exists(name, nodes, state):
                out.append((name, f"still there, its server {want} is gone"))
            continue
        reported = ((node.get("status") or {}).get("nodeInfo") or {}).get("systemUUID")
        if not reported and not provider_uuid(node) \
                and sum(1 for s in state.servers.values() if s["name"] == name) > 1:
            continue  # its name became ambiguous before it was initialized: nothing tells which server it is
        if not provider_uuid(node) and UNINIT in taints(node) and server["status"] == "stopped" \
                and not any(t in ("InternalIP", "ExternalIP") for t, _ in addresses(node)):
            continue  # stopped before it was initialized: no address to give it, so it waits (invariant 3)
        if provider_uuid(node) != want:
            out.append((name, f"providerID {provider_uuid(node)!r}, want {want}"))
            continue
        if UNINIT in taints(node):
            out.append((name, "still tainted uninitialized"))
        labels = (node.get("metadata") or {}).get("labels") or {}
        if labels.get(INSTANCE_TYPE) != size_label(server) or labels.get(REGION) != region:
            out.append((name, f"labels {labels.get(INSTANCE_TYPE)}/{labels.get(REGION)}"))
        stopped = server["status"] == "stopped"
        if (SHUTDOWN in taints(node)) != stopped:
            out.append((name, f"shutdown taint {SHUTDOWN in taints(node)} for a {server['status']} server"))
        if not stopped:
            external = {a for t, a in addresses(node) if t == "ExternalIP"}
            if external != server_ipv4(server):
                out.append((name, f"ExternalIPs {sorted(external)}, the server has {sorted(server_ipv4(server))}"))
            for kind, address in _kubelet_addresses(node):
                if (kind, address) not in addresses(node):
                    out.append((name, f"lost the kubelet's {kind} {address}"))
    return out


def _another_nodes_server_exists(name: str, nodes: dict[str, dict[str, Any]], state: EmulatorState) -> bool:
    return any(other != name and notes_of(node).get(EXPECT, "") in state.servers
               for other, node in nodes.items())


def _kubelet_addresses(node: dict[str, Any]) -> list[tuple[str, str]]:
    raw = notes_of(node).get("robustness.test/kubelet-addresses", "")
    return [(kind, address) for kind, _, address in (item.partition("=") for item in raw.split(",")) if address]
