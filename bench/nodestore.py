"""Memory per held Node: N realistic Nodes through the daemon's node watcher (its list path and its store).

``.venv/bin/python -m bench.nodestore --nodes 1000,5000`` runs, for every N, a fresh interpreter that imports
the daemon's :class:`~ccm.nodes.watching.NodeWatcher`, pre-serialises N Nodes as a kubelet, the
kube-controller-manager, a CNI and the CCM leave them in a real cluster (``managedFields`` of each writer,
``status.images``, five conditions with heartbeats, ``nodeInfo``, cloud and Cluster API labels and
annotations — about 16 KiB of JSON each), serves them in pages of 500 like a kube-apiserver's list (each page
decoded with ``json.loads`` as the real transport does), lets the watcher list them and go quiet on its watch,
and reads:

- **RSS per held Node**: (RSS after - RSS before) / N, both read after ``gc.collect()`` and glibc's
  ``malloc_trim(0)`` (so freed pages of the decoded lists are returned and only what is held counts);
- **peak RSS per Node during the list** (``VmHWM`` growth) — the transient of decoding pages;
- **traced bytes per held Node** (a second fresh run under ``tracemalloc``): Python allocations still alive
  after the list, i.e. the store itself.

The interpreter, the libraries and the pre-serialised pages exist before the first reading, so they do not
count. The script uses only ``NodeWatcher(kube)``, ``run()``, ``synced`` and ``store`` — the same on every
revision since the watcher existed — so the same command measures an older checkout
(``PYTHONPATH=<checkout> .venv/bin/python bench/nodestore.py``) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

KIB = 1024
GOAL_BYTES_PER_NODE = 3 * KIB


def _uuid(seed: str) -> str:
    h = hashlib.sha256(seed.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"


def _fields(*names: str) -> dict[str, Any]:
    return {f"f:{n}": {} for n in names}


def _managed(manager: str, operation: str, fields: dict[str, Any], time_: str,
             subresource: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"manager": manager, "operation": operation, "apiVersion": "v1", "time": time_,
                             "fieldsType": "FieldsV1", "fieldsV1": fields}
    if subresource:
        entry["subresource"] = subresource
    return entry


IMAGES = [
    ("registry.k8s.io/kube-proxy", "v1.34.4", 30_000_000), ("registry.k8s.io/pause", "3.10", 320_000),
    ("docker.io/calico/node", "v3.29.1", 140_000_000), ("docker.io/calico/cni", "v3.29.1", 95_000_000),
    ("docker.io/calico/csi", "v3.29.1", 9_000_000), ("docker.io/calico/node-driver-registrar", "v3.29.1", 12_000_000),
    ("docker.io/calico/pod2daemon-flexvol", "v3.29.1", 7_000_000), ("registry.k8s.io/coredns/coredns", "v1.12.0",
                                                                     21_000_000),
    ("quay.io/prometheus/node-exporter", "v1.9.0", 12_000_000), ("registry.k8s.io/metrics-server/metrics-server",
                                                                 "v0.7.2", 19_000_000),
    ("docker.io/library/nginx", "1.27.3", 72_000_000), ("docker.io/library/redis", "7.4.2", 45_000_000),
    ("ghcr.io/example/api", "2026.01.3", 88_000_000), ("ghcr.io/example/worker", "2026.01.3", 91_000_000),
    ("docker.io/grafana/promtail", "3.3.2", 80_000_000), ("registry.k8s.io/csi-sig/livenessprobe", "v2.14.0",
                                                         9_000_000),
]


def realistic_node(i: int, *, region: str = "zrh") -> dict[str, Any]:
    """An initialized Node as it sits in a running cluster (kubelet 1.34, calico, Cluster API, this CCM)."""
    name = f"tenant-a-md-0-7f9c2-{i:05d}"
    server = _uuid(f"server-{i}")
    t0 = "2026-01-05T10:00:00Z"
    now = "2026-01-05T12:34:56Z"
    itype = "4c-8000mhz-8192mib"
    host_group = hashlib.sha256(f"host-{i // 4}".encode()).hexdigest()[:16]
    internal, external = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", f"94.26.{(i >> 8) & 255}.{i & 255}"
    labels = {
        "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/instance-type": itype,
        "beta.kubernetes.io/os": "linux", "failure-domain.beta.kubernetes.io/region": region,
        "failure-domain.beta.kubernetes.io/zone": region, "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": itype,
        "topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": region,
        "node-role.kubernetes.io/worker": "", "cluster.x-k8s.io/cluster-name": "tenant-a",
        "topology.cluster.x-k8s.io/deployment-name": "md-0",
        "node.cloudsigma.com/meta.pool": "md-0", "node.cloudsigma.com/meta.cluster": "tenant-a",
        "node.cloudsigma.com/host-group": host_group,
    }
    managed_labels = "node.cloudsigma.com/host-group,node.cloudsigma.com/meta.cluster,node.cloudsigma.com/meta.pool"
    annotations = {
        "cluster.x-k8s.io/annotations-from-machine": "", "cluster.x-k8s.io/cluster-name": "tenant-a",
        "cluster.x-k8s.io/cluster-namespace": "tenant-a", "cluster.x-k8s.io/labels-from-machine":
            "node-role.kubernetes.io/worker", "cluster.x-k8s.io/machine": f"tenant-a-md-0-7f9c2-{i:05d}",
        "cluster.x-k8s.io/owner-kind": "MachineSet", "cluster.x-k8s.io/owner-name": "tenant-a-md-0-7f9c2",
        "csi.volume.kubernetes.io/nodeid": json.dumps({"csi.tigera.io": name}),
        "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
        "node.alpha.kubernetes.io/ttl": "0", "projectcalico.org/IPv4Address": f"{internal}/16",
        "projectcalico.org/IPv4VXLANTunnelAddr": f"192.168.{i & 255}.0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "node.cloudsigma.com/managed-labels": managed_labels,
    }

    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {"type": type_, "status": status, "lastHeartbeatTime": now, "lastTransitionTime": t0,
                "reason": reason, "message": message}

    conditions = [
        cond("NetworkUnavailable", "False", "CalicoIsUp", "Calico is running on this node"),
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]
    images = [{"names": [f"{repo}@sha256:{hashlib.sha256(repo.encode()).hexdigest()}", f"{repo}:{tag}"],
               "sizeBytes": size} for repo, tag, size in IMAGES]
    cond_fields = {f'k:{{"type":"{c["type"]}"}}': {".": {}, **_fields("lastHeartbeatTime", "lastTransitionTime",
                                                                       "message", "reason", "status", "type")}
                   for c in conditions if c["type"] != "NetworkUnavailable"}
    managed_fields = [
        _managed("kubelet", "Update", {"f:metadata": {"f:annotations": {".": {}, **_fields(
            "volumes.kubernetes.io/controller-managed-attach-detach")}, "f:labels": {".": {}, **_fields(
                "beta.kubernetes.io/arch", "beta.kubernetes.io/os", "kubernetes.io/arch", "kubernetes.io/hostname",
                "kubernetes.io/os")}}}, t0),
        _managed("kubeadm", "Update", {"f:metadata": {"f:annotations": _fields(
            "kubeadm.alpha.kubernetes.io/cri-socket")}}, t0),
        _managed("kube-controller-manager", "Update", {"f:metadata": {"f:annotations": _fields(
            "node.alpha.kubernetes.io/ttl")}, "f:spec": _fields("podCIDR", "podCIDRs")}, t0),
        _managed("cloudsigma-ccm", "Update", {"f:metadata": {"f:annotations": _fields(
            "node.cloudsigma.com/managed-labels"), "f:labels": _fields(
                "beta.kubernetes.io/instance-type", "failure-domain.beta.kubernetes.io/region",
                "failure-domain.beta.kubernetes.io/zone", "node.kubernetes.io/instance-type",
                "topology.kubernetes.io/region", "topology.kubernetes.io/zone", "node.cloudsigma.com/host-group",
                "node.cloudsigma.com/meta.cluster", "node.cloudsigma.com/meta.pool")},
            "f:spec": {**_fields("providerID"), "f:taints": {}}}, t0),
        _managed("cloudsigma-ccm", "Update", {"f:status": {"f:addresses": {".": {}, **{
            f'k:{{"type":"{t}"}}': {".": {}, **_fields("address", "type")}
            for t in ("InternalIP", "ExternalIP", "Hostname")}}}}, t0, "status"),
        _managed("manager", "Update", {"f:metadata": {"f:annotations": _fields(
            "cluster.x-k8s.io/annotations-from-machine", "cluster.x-k8s.io/cluster-name",
            "cluster.x-k8s.io/cluster-namespace", "cluster.x-k8s.io/labels-from-machine",
            "cluster.x-k8s.io/machine", "cluster.x-k8s.io/owner-kind", "cluster.x-k8s.io/owner-name"),
            "f:labels": _fields("cluster.x-k8s.io/cluster-name", "node-role.kubernetes.io/worker",
                                "topology.cluster.x-k8s.io/deployment-name")}}, t0),
        _managed("calico-node", "Update", {"f:metadata": {"f:annotations": _fields(
            "projectcalico.org/IPv4Address", "projectcalico.org/IPv4VXLANTunnelAddr")}, "f:status": {
            "f:conditions": {'k:{"type":"NetworkUnavailable"}': {".": {}, **_fields(
                "lastHeartbeatTime", "lastTransitionTime", "message", "reason", "status", "type")}}}}, t0, "status"),
        _managed("kubelet", "Update", {"f:metadata": {"f:annotations": _fields("csi.volume.kubernetes.io/nodeid")},
                                       "f:status": {"f:allocatable": _fields("cpu", "ephemeral-storage", "memory"),
                                                    "f:capacity": _fields("cpu", "ephemeral-storage", "memory"),
                                                    "f:conditions": cond_fields, "f:images": {},
                                                    "f:nodeInfo": _fields("bootID", "kernelVersion", "osImage"),
                                                    "f:runtimeHandlers": {}}}, now, "status"),
    ]
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "uid": _uuid(f"node-{i}"), "resourceVersion": str(100_000 + i),
                     "creationTimestamp": t0, "labels": labels, "annotations": annotations,
                     "managedFields": managed_fields},
        "spec": {"podCIDR": f"10.244.{i % 256}.0/24", "podCIDRs": [f"10.244.{i % 256}.0/24"],
                 "providerID": f"cloudsigma://{server}"},
        "status": {
            "capacity": {"cpu": "4", "ephemeral-storage": "51287520Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
                         "memory": "8148172Ki", "pods": "110"},
            "allocatable": {"cpu": "4", "ephemeral-storage": "47266578354", "hugepages-1Gi": "0",
                            "hugepages-2Mi": "0", "memory": "8045772Ki", "pods": "110"},
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": internal}, {"type": "ExternalIP", "address": external},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": hashlib.md5(name.encode()).hexdigest(), "systemUUID": server,
                         "bootID": _uuid(f"boot-{i}"), "kernelVersion": "6.1.0-29-cloud-amd64",
                         "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.7.24",
                         "kubeletVersion": "v1.34.4", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64"},
            "images": images,
            "runtimeHandlers": [{"name": "runc", "features": {"recursiveReadOnlyMounts": True,
                                                              "userNamespaces": True}},
                                {"name": "", "features": {"recursiveReadOnlyMounts": True, "userNamespaces": True}}],
            "features": {"supplementalGroupsPolicy": True},
        },
    }


def write_nodes(n: int, path: Path) -> None:
    """The N Nodes' JSON, one per line, to ``path`` (written by the parent: generating them in the measured
    interpreter would leave freed memory behind that the list then reuses, hiding part of its cost)."""
    with path.open("wb") as out:
        for i in range(n):
            out.write(json.dumps(realistic_node(i), separators=(",", ":")).encode() + b"\n")


class PagedNodes:
    """Stands in for the tenant API's transport (``request``/``stream``): answers a paged list (``limit``,
    ``continue``) of the Nodes in ``blob`` (one JSON per line), each page decoded with ``json.loads`` like
    :class:`ccm.kube.transport.KubeTransport` does, then holds a watch on which nothing happens."""

    def __init__(self, blob: bytes) -> None:
        self._blob = blob
        self._offsets = [0]
        for line in blob.splitlines(keepends=True):
            self._offsets.append(self._offsets[-1] + len(line))
        self.count = len(self._offsets) - 1
        self.quiet = asyncio.Event()

    async def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                      **_: Any) -> dict[str, Any]:
        query = query or {}
        start, limit = int(query.get("continue") or 0), int(query.get("limit") or self.count)
        end = min(self.count, start + limit)
        meta = {"resourceVersion": str(100_000 + self.count)} | ({"continue": str(end)} if end < self.count else {})
        items = self._blob[self._offsets[start]:self._offsets[end]].rstrip(b"\n").replace(b"\n", b",")
        body = b'{"kind":"NodeList","apiVersion":"v1","metadata":' + json.dumps(meta).encode() + b',"items":['
        payload: dict[str, Any] = json.loads(body + items + b"]}")
        return payload

    async def stream(self, path: str, *, query: Mapping[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        self.quiet.set()
        await asyncio.Event().wait()  # a watch on which nothing happens
        yield {}


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    return 0


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * KIB
    return 0


def _reset_hwm() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _settle() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(nodes_file: Path, *, traced: bool) -> dict[str, Any]:
    """One measurement in this interpreter (run it in a fresh one: see :func:`run_fresh`)."""
    from ccm.nodes.watching import NodeWatcher

    blob = nodes_file.read_bytes()
    kube = PagedNodes(blob)
    n = kube.count

    async def hold() -> Any:
        watcher = NodeWatcher(kube)  # type: ignore[arg-type]
        task = asyncio.create_task(watcher.run())
        await watcher.synced.wait()
        await kube.quiet.wait()
        return watcher, task

    loop = asyncio.new_event_loop()
    # Warm up the code path (imports, caches) with one Node so the reading is of the store alone.
    warm = PagedNodes(blob[:blob.index(b"\n") + 1])
    loop.run_until_complete(_warm(warm))
    _settle()
    if traced:
        tracemalloc.start()
    before_traced = tracemalloc.get_traced_memory()[0] if traced else 0
    before = _rss()
    _reset_hwm()
    started = time.perf_counter()
    watcher, task = loop.run_until_complete(hold())
    seconds = time.perf_counter() - started
    peak = _hwm()
    _settle()
    after = _rss()
    held = len(watcher.store)
    result: dict[str, Any] = {"nodes": n, "held": held, "json_bytes_per_node": round(len(blob) / n),
                              "list_seconds": round(seconds, 3)}
    if traced:
        result["traced_bytes_per_node"] = round((tracemalloc.get_traced_memory()[0] - before_traced) / held)
        tracemalloc.stop()
    else:
        result["rss_bytes_per_node"] = round((after - before) / held)
        result["peak_rss_bytes_per_node"] = round((peak - before) / held)
        result["rss_before_mib"] = round(before / KIB / KIB, 1)
        result["rss_after_mib"] = round(after / KIB / KIB, 1)
    task.cancel()
    return result


async def _warm(kube: PagedNodes) -> None:
    from ccm.nodes.watching import NodeWatcher

    watcher = NodeWatcher(kube)  # type: ignore[arg-type]
    task = asyncio.create_task(watcher.run())
    await watcher.synced.wait()
    task.cancel()


def run_fresh(nodes_file: Path, *, traced: bool) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter with this process's ``sys.path`` (a PYTHONPATH checkout wins)."""
    args = [sys.executable, str(Path(__file__).resolve()), "--one", str(nodes_file)] + (["--traced"] if traced
                                                                                          else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(nodes: list[int]) -> list[dict[str, Any]]:
    """RSS and traced bytes per held Node for each N (each reading in its own fresh interpreter)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="ccm-nodestore-") as tmp:
        for n in nodes:
            path = Path(tmp) / f"nodes-{n}.jsonl"
            write_nodes(n, path)
            result = run_fresh(path, traced=False)
            result.update({k: v for k, v in run_fresh(path, traced=True).items() if k.startswith("traced")})
            result["goal_bytes_per_node"] = GOAL_BYTES_PER_NODE
            results.append(result)
            path.unlink()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.nodestore", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="1000,5000", help="comma-separated node counts (default 1000,5000)")
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, traced=args.traced)))
        return 0
    import ccm

    print(f"# ccm from {Path(ccm.__file__).parent}", file=sys.stderr)
    for result in run([int(x) for x in args.nodes.split(",") if x.strip()]):
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
