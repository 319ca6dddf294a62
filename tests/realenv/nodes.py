"""Create and drive Nodes the way a kubelet started with ``--cloud-provider=external`` does.

The kubelet registers its Node with the ``node.cloudprovider.kubernetes.io/uninitialized=true:NoSchedule``
taint (the cloud controller manager removes it once it has initialised the node), optionally with the
``alpha.kubernetes.io/provided-node-ip`` annotation (from ``--node-ip``), and then reports status through
the ``status`` subresource: conditions with heartbeats, addresses and ``nodeInfo.systemUUID``.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, cast, overload

from kubernetes_asyncio.client import ApiClient, CoreV1Api, V1Node
from kubernetes_asyncio.client.exceptions import ApiException

__all__ = [
    "PROVIDED_NODE_IP_ANNOTATION",
    "UNINITIALIZED_TAINT_KEY",
    "delete_all_nodes",
    "get_node",
    "has_uninitialized_taint",
    "node_addresses",
    "node_ready_status",
    "patch_node_status",
    "register_node",
    "set_ready",
    "wait_for",
]

UNINITIALIZED_TAINT_KEY = "node.cloudprovider.kubernetes.io/uninitialized"
PROVIDED_NODE_IP_ANNOTATION = "alpha.kubernetes.io/provided-node-ip"

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

T = TypeVar("T")


def _rfc3339(ts: datetime.datetime | None = None) -> str:
    ts = ts or datetime.datetime.now(datetime.UTC)
    return ts.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition_status(ready: bool | None) -> str:
    return "Unknown" if ready is None else ("True" if ready else "False")


def _ready_condition(ready: bool | None, transition: str | None = None) -> dict[str, str]:
    now = _rfc3339()
    status = _condition_status(ready)
    reason, message = {
        "True": ("KubeletReady", "kubelet is posting ready status"),
        "False": ("KubeletNotReady", "container runtime network not ready"),
        "Unknown": ("NodeStatusUnknown", "Kubelet stopped posting node status."),
    }[status]
    return {
        "type": "Ready",
        "status": status,
        "lastHeartbeatTime": now,
        "lastTransitionTime": transition or now,
        "reason": reason,
        "message": message,
    }


def _pressure_conditions() -> list[dict[str, str]]:
    now = _rfc3339()
    return [
        {
            "type": t,
            "status": "False",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
            "reason": f"KubeletHas{reason}",
            "message": f"kubelet has {reason}",
        }
        for t, reason in (
            ("MemoryPressure", "SufficientMemory"),
            ("DiskPressure", "NoDiskPressure"),
            ("PIDPressure", "SufficientPID"),
        )
    ]


async def register_node(
    api_client: ApiClient,
    name: str,
    *,
    taint: bool = True,
    addresses: Iterable[tuple[str, str]] | None = None,
    provided_node_ip: str | None = None,
    system_uuid: str | None = None,
    ready: bool | None = True,
    labels: Mapping[str, str] | None = None,
    provider_id: str | None = None,
    annotations: Mapping[str, str] | None = None,
    status_on_create: bool = False,
) -> V1Node:
    """Create Node ``name`` like a kubelet with ``--cloud-provider=external`` and report its status.

    - ``taint``: add ``node.cloudprovider.kubernetes.io/uninitialized=true:NoSchedule`` (the API server's
      own admission may add ``node.kubernetes.io/not-ready`` as well).
    - ``addresses``: ``[(type, address), ...]`` for ``status.addresses`` (e.g. ``("InternalIP", "10.1.2.3")``);
      ``None`` reports none (and leaves any a CCM already wrote), as an external-cloud kubelet does.
    - ``provided_node_ip``: the ``alpha.kubernetes.io/provided-node-ip`` annotation (kubelet ``--node-ip``).
    - ``system_uuid``: ``status.nodeInfo.systemUUID`` (the SMBIOS UUID; on CloudSigma the server uuid).
    - ``ready``: the Ready condition: ``True``/``False``/``None`` = ``"Unknown"``.
    - ``labels``: added to the kubelet's default labels (hostname, os, arch).
    - ``provider_id``: ``spec.providerID`` (normally left to the CCM).
    - ``status_on_create``: send the status with the create, as a real kubelet does (its ``initialNode`` sets
      ``nodeInfo`` first), so no watcher ever sees the Node without its systemUUID.

    Returns the Node (``V1Node``) as read back after the status update.
    """
    core = CoreV1Api(api_client)
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    }
    node_labels.update(labels or {})
    node_annotations = {
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "node.alpha.kubernetes.io/ttl": "0",
    }
    if provided_node_ip is not None:
        node_annotations[PROVIDED_NODE_IP_ANNOTATION] = provided_node_ip
    node_annotations.update(annotations or {})
    spec: dict[str, Any] = {}
    if taint:
        spec["taints"] = [{"key": UNINITIALIZED_TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    if provider_id is not None:
        spec["providerID"] = provider_id
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels, "annotations": node_annotations},
        "spec": spec,
    }
    status: dict[str, Any] = {
        "conditions": [*_pressure_conditions(), _ready_condition(ready)],
        "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110", "ephemeral-storage": "20Gi"},
        "allocatable": {"cpu": "2", "memory": "3800Mi", "pods": "110", "ephemeral-storage": "18Gi"},
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": (system_uuid or name).replace("-", ""),
            "systemUUID": system_uuid or "",
            "bootID": "00000000-0000-0000-0000-000000000000",
            "kernelVersion": "6.1.0-test",
            "osImage": "Debian GNU/Linux 12 (bookworm)",
            "containerRuntimeVersion": "containerd://1.7.0",
            "kubeletVersion": "v1.34.4",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }
    if addresses is not None:
        # Only when the kubelet has addresses of its own: an empty list in this merge patch would wipe addresses a
        # CCM wrote between the create and this status (a real kubelet keeps them).
        status["addresses"] = [{"type": t, "address": a} for t, a in addresses]
    if status_on_create:
        body["status"] = status
    await core.create_node(cast(Any, body))
    return await patch_node_status(api_client, name, {"status": status}, content_type=MERGE_PATCH)


async def patch_node_status(
    api_client: ApiClient, name: str, body: Mapping[str, Any], *, content_type: str = MERGE_PATCH
) -> V1Node:
    """PATCH ``/api/v1/nodes/{name}/status`` with an explicit patch type (merge patch by default;
    the client's own default for a dict is a strategic merge patch)."""
    core: Any = CoreV1Api(api_client)  # the typing stubs do not declare _content_type
    node = await core.patch_node_status(name, dict(body), _content_type=content_type)
    return cast(V1Node, node)


async def set_ready(api_client: ApiClient, name: str, ready: bool | None) -> V1Node:
    """Post a kubelet heartbeat with Ready = ``True``/``False``/``Unknown`` (``None``).

    ``lastTransitionTime`` only moves when the status changes, as the kubelet does. Returns the Node.
    """
    core = CoreV1Api(api_client)
    node = await core.read_node_status(name)
    transition: str | None = None
    for cond in node.status.conditions or []:
        if cond.type == "Ready" and cond.status == _condition_status(ready) and cond.last_transition_time:
            transition = _rfc3339(cond.last_transition_time)
    patch = {"status": {"conditions": [_ready_condition(ready, transition)]}}
    # Strategic merge: conditions are merged by "type", the other conditions stay.
    return await patch_node_status(api_client, name, patch, content_type=STRATEGIC_MERGE_PATCH)


async def get_node(api_client: ApiClient, name: str) -> V1Node | None:
    """The Node (``V1Node``), or ``None`` if there is none of that name."""
    try:
        return await CoreV1Api(api_client).read_node(name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def delete_all_nodes(api_client: ApiClient, *, timeout: float = 30.0) -> None:
    """Delete every Node and wait until none is left."""
    core = CoreV1Api(api_client)
    await core.delete_collection_node(grace_period_seconds=0)

    async def none_left() -> bool:
        nodes = await core.list_node()
        return not nodes.items

    await wait_for(none_left, timeout, message="nodes still present after delete_all_nodes")


def node_addresses(node: V1Node) -> list[tuple[str, str]]:
    """``status.addresses`` as ``[(type, address), ...]``."""
    return [(a.type, a.address) for a in (node.status.addresses or [])]


def node_ready_status(node: V1Node) -> str | None:
    """The Ready condition's status (``"True"``/``"False"``/``"Unknown"``), or ``None`` if absent."""
    for cond in node.status.conditions or []:
        if cond.type == "Ready":
            return str(cond.status)
    return None


def has_uninitialized_taint(node: V1Node) -> bool:
    return any(t.key == UNINITIALIZED_TAINT_KEY for t in (node.spec.taints or []))


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    *,
    interval: float = ...,
    message: str | None = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,
    *,
    interval: float = ...,
    message: str | None = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    *,
    interval: float = 0.1,
    message: str | None = None,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that value.

    Exceptions raised by the predicate count as "not yet" (the last one is chained to the
    ``TimeoutError`` raised after ``timeout`` seconds).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last, last_exc = result, None
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            detail = f"last error: {last_exc!r}" if last_exc is not None else f"last value: {last!r}"
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; {detail}") from last_exc
        await asyncio.sleep(interval)
