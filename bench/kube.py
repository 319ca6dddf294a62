"""The Kubernetes side of the benchmark: an admin client, kubelet-like Node registration in a burst, and a
watch that timestamps when each Node loses the uninitialized taint.

Nodes are created the way kubelet's ``registerWithAPIServer`` does with ``--cloud-provider=external``: one
``POST /api/v1/nodes`` carrying the uninitialized taint *and* the initial status (conditions, capacity,
``nodeInfo``), without addresses (an external-cloud kubelet without ``--node-ip`` leaves them to the CCM).
A separate status PATCH (as ``tests/realenv/nodes.register_node`` does) would race with the CCM in a burst
and, as a JSON merge patch with ``addresses: []``, wipe addresses the CCM had already set; kubelet never
sends that. Requests go out as raw JSON (``_preload_content=False``): the generated models' deserialisation
would make the bench itself the bottleneck at 5,000 nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration

UNINITIALIZED_TAINT = "node.cloudprovider.kubernetes.io/uninitialized"
NODES = "/api/v1/nodes"


async def admin_client(kubeconfig: Path, pool_size: int = 100) -> ApiClient:
    """An ApiClient for ``kubeconfig`` with a connection pool of ``pool_size`` (no global state)."""
    cfg = Configuration()
    await kube_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg, persist_config=False)
    cfg.connection_pool_maxsize = pool_size
    return ApiClient(configuration=cfg)


async def call(client: ApiClient, method: str, path: str, *, body: Any = None,
               query: dict[str, Any] | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
    resp = await client.call_api(path, method, body=body, query_params=list((query or {}).items()),
                                 header_params={"Accept": "application/json", "Content-Type": "application/json"},
                                 auth_settings=["BearerToken"], _preload_content=False, _request_timeout=timeout)
    try:
        return int(resp.status), await resp.read()
    finally:
        resp.release()


async def cloud_label_summary(client: ApiClient) -> dict[str, int]:
    """How many Nodes carry each kind of ``node.cloudsigma.com/`` label, and how many distinct host groups."""
    status, body = await call(client, "GET", NODES)
    if status != 200:
        return {}
    counts = {"meta": 0, "tag": 0, "host-group": 0}
    groups: set[str] = set()
    for node in json.loads(body).get("items", []):
        labels = (node.get("metadata") or {}).get("labels") or {}
        keys = [k[len("node.cloudsigma.com/"):] for k in labels if k.startswith("node.cloudsigma.com/")]
        counts["meta"] += any(k.startswith("meta.") for k in keys)
        counts["tag"] += any(k.startswith("tag.") for k in keys)
        if "host-group" in keys:
            counts["host-group"] += 1
            groups.add(labels["node.cloudsigma.com/host-group"])
    counts["host_groups_distinct"] = len(groups)
    return counts


def _rfc3339(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def node_body(name: str) -> dict[str, Any]:
    """A Node as kubelet (``--cloud-provider=external``) registers it: tainted, Ready, no addresses."""
    now = _rfc3339(datetime.now(UTC))

    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {"type": type_, "status": status, "lastHeartbeatTime": now, "lastTransitionTime": now,
                "reason": reason, "message": message}

    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64"},
            "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true",
                            "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [{"key": UNINITIALIZED_TAINT, "value": "true", "effect": "NoSchedule"}]},
        "status": {
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110", "ephemeral-storage": "20Gi"},
            "allocatable": {"cpu": "2", "memory": "3800Mi", "pods": "110", "ephemeral-storage": "18Gi"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": name.replace("-", ""), "systemUUID": "", "bootID": "00000000-0000-0000-0000-000000000000",
                "kernelVersion": "6.1.0-bench", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.0", "kubeletVersion": "v1.34.4", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "amd64",
            },
        },
    }


@dataclass
class Registration:
    """When each create returned (monotonic seconds), and how long the whole burst took."""

    created_at: dict[str, float] = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    errors: int = 0

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def last_created(self) -> float:
        return max(self.created_at.values()) if self.created_at else self.finished


async def register_burst(client: ApiClient, names: list[str], concurrency: int) -> Registration:
    """Create all ``names`` concurrently, at most ``concurrency`` requests in flight; retries 429/5xx."""
    reg = Registration(started=time.monotonic())
    sem = asyncio.Semaphore(concurrency)

    async def one(name: str) -> None:
        body = node_body(name)
        async with sem:
            for attempt in range(10):
                try:
                    status, raw = await call(client, "POST", NODES, body=body)
                except (TimeoutError, aiohttp.ClientError):
                    status, raw = 0, b""
                if 200 <= status < 300:
                    reg.created_at[name] = time.monotonic()
                    return
                if status == 409:  # created by an attempt whose answer was lost
                    reg.created_at.setdefault(name, time.monotonic())
                    return
                reg.errors += 1
                if status not in (0, 429, 500, 503, 504):
                    raise RuntimeError(f"creating node {name} failed: {status} {raw[:300]!r}")
                await asyncio.sleep(0.1 * (attempt + 1))
            raise RuntimeError(f"creating node {name} kept failing")

    await asyncio.gather(*(one(n) for n in names))
    reg.finished = time.monotonic()
    return reg


class TaintWatcher:
    """Watches Nodes in its own thread (own event loop and connection, so the registering loop does not delay
    its timestamps) and records, per Node, the monotonic time of the first event without the taint."""

    def __init__(self, kubeconfig: Path) -> None:
        self._kubeconfig = kubeconfig
        self.removed_at: dict[str, float] = {}
        self.tainted_seen: set[str] = set()
        self.events = 0
        self.restarts = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name="taint-watch", daemon=True)

    def start(self, timeout: float = 30.0) -> TaintWatcher:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("node watch did not start")
        if self._error is not None:
            raise RuntimeError(f"node watch failed: {self._error!r}")
        return self

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._run())
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    async def _run(self) -> None:
        client = await admin_client(self._kubeconfig, pool_size=4)
        try:
            status, raw = await call(client, "GET", NODES, query={"limit": 1})
            if status != 200:
                raise RuntimeError(f"listing nodes failed: {status}")
            rv = str(json.loads(raw)["metadata"]["resourceVersion"])
            first = True
            while True:
                rv = await self._watch(client, rv, started=self._ready.set if first else None)
                first = False
                self.restarts += 1
        finally:
            await client.close()

    async def _watch(self, client: ApiClient, rv: str, started: Callable[[], None] | None) -> str:
        query = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": 3600}
        resp = await client.call_api(NODES, "GET", query_params=list(query.items()),
                                     header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
                                     _preload_content=False, _request_timeout=4000)
        try:
            if resp.status != 200:
                raise RuntimeError(f"node watch answered {resp.status}")
            if started is not None:
                started()
            buffer = b""
            async for chunk in resp.content.iter_any():
                now = time.monotonic()
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        rv = self._on_event(json.loads(line), now) or rv
        finally:
            resp.release()
        return rv

    def _on_event(self, event: dict[str, Any], now: float) -> str | None:
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        if event.get("type") not in ("ADDED", "MODIFIED"):
            return rv if isinstance(rv, str) else None
        self.events += 1
        name = str(meta.get("name"))
        tainted = any(t.get("key") == UNINITIALIZED_TAINT for t in (obj.get("spec") or {}).get("taints") or [])
        with self._cond:
            if tainted:
                self.tainted_seen.add(name)
            elif name in self.tainted_seen and name not in self.removed_at:
                self.removed_at[name] = now
                self._cond.notify_all()
        return rv if isinstance(rv, str) else None

    def wait_all(self, names: set[str], timeout: float) -> bool:
        """Block until every name in ``names`` lost the taint; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not names <= self.removed_at.keys():
                left = deadline - time.monotonic()
                if left <= 0 or self._error is not None:
                    return False
                self._cond.wait(min(left, 1.0))
        return True

    def count_removed(self) -> int:
        with self._cond:
            return len(self.removed_at)

    def stop(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout=10)
