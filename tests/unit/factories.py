"""Builders of CloudSigma server JSON and Node JSON for unit tests."""

from __future__ import annotations

from typing import Any

from cloudsigma.models import Server, parse_server

UUID1 = "11111111-1111-4111-8111-111111111111"
UUID2 = "22222222-2222-4222-8222-222222222222"
OWNER = "4705fb9a-0591-4ead-9d42-b2e86493f9b4"


def dhcp_nic(ip: str | None, mac: str = "22:aa:00:00:00:01", ipv6: str | None = None) -> dict[str, Any]:
    runtime: dict[str, Any] | None = None
    if ip or ipv6:
        runtime = {"interface_type": "public", "ip_v4": {"uuid": ip} if ip else None,
                   "ip_v6": {"uuid": ipv6} if ipv6 else None}
    return {"ip_v4_conf": {"conf": "dhcp", "ip": None}, "ip_v6_conf": {"conf": "dhcp", "ip": None} if ipv6 else None,
            "mac": mac, "model": "virtio", "vlan": None, "runtime": runtime}


def static_nic(ip: str, mac: str = "22:aa:00:00:00:02") -> dict[str, Any]:
    return {"ip_v4_conf": {"conf": "static", "ip": {"uuid": ip, "resource_uri": f"/api/2.0/ips/{ip}/"}},
            "ip_v6_conf": None, "mac": mac, "model": "virtio", "vlan": None, "runtime": None}


def manual_nic(mac: str = "22:aa:00:00:00:03") -> dict[str, Any]:
    return {"ip_v4_conf": {"conf": "manual", "ip": None}, "mac": mac, "vlan": None, "runtime": None}


def vlan_nic(mac: str = "22:aa:00:00:00:04") -> dict[str, Any]:
    return {"ip_v4_conf": None, "mac": mac, "vlan": {"uuid": "5bc05e7e-6555-4f40-add8-3b8e91447702"},
            "runtime": None}


def server(name: str = "node-1", uuid: str = UUID1, nics: list[dict[str, Any]] | None = None,
           status: str = "running", **extra: Any) -> Server:
    payload: dict[str, Any] = {"uuid": uuid, "name": name, "status": status, "cpu": 4000, "smp": 2,
                               "mem": 4 * 1024 ** 3, "owner": {"uuid": OWNER, "resource_uri": "/x/"},
                               "nics": nics if nics is not None else [dhcp_nic("94.26.101.149")],
                               "runtime": {"nics": []} if status == "running" else None, "meta": {}, "tags": []}
    payload.update(extra)
    return parse_server(payload)


def node(name: str = "node-1", *, tainted: bool = True, provider_id: str = "",
         addresses: list[tuple[str, str]] | None = None, labels: dict[str, str] | None = None,
         annotations: dict[str, str] | None = None, ready: str | None = "True", system_uuid: str = "",
         extra_taints: list[dict[str, Any]] | None = None, ready_since: str = "2026-01-01T00:00:00Z",
         ) -> dict[str, Any]:
    taints: list[dict[str, Any]] = list(extra_taints or [])
    if tainted:
        taints.append({"key": "node.cloudprovider.kubernetes.io/uninitialized", "value": "true",
                       "effect": "NoSchedule"})
    conditions = [] if ready is None else [{"type": "Ready", "status": ready, "lastTransitionTime": ready_since}]
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "10", "labels": labels or {},
                     "annotations": annotations or {}, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"providerID": provider_id, "taints": taints} if provider_id else {"taints": taints},
        "status": {"addresses": [{"type": t, "address": a} for t, a in (addresses or [])],
                   "conditions": conditions, "nodeInfo": {"systemUUID": system_uuid}},
    }
