"""``cloudsigma-ccm doctor --all-tenants``: every tenant of the fleet at a glance, from the management cluster alone.

One look at what the fleet itself reads: the CloudSigmaClusters and kubeconfig Secrets (judged by the same pure
functions as discovery, so a tenant that cannot be served says why), the member Leases (the replicas) and the
tenant Leases — whose holder is the replica serving the tenant and whose status annotation, written by that holder
with every renewal, gives nodes, uninitialized nodes, last sync, credential state and last error. Nothing is
written. Never prints a secret or any part of a kubeconfig.

A Lease's liveness is judged here from its ``renewTime`` against this machine's clock (a single look has no
history); the replicas themselves judge by their own clock since the record last changed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from ccm.clusters.clusterapi import clusters_path, secrets_path
from ccm.clusters.tenants import TenantError, slim_cluster
from ccm.config import Settings
from ccm.fleet.announce import FLEET_LABEL, leases_path
from ccm.fleet.discovery import NAMESPACES, desired_tenant, slim_secret
from ccm.fleet.manager import STATUS_ANNOTATION, TENANT_LEASE_LABEL, tenant_lease_name
from ccm.kube.errors import KubeError
from ccm.kube.informer import list_all, object_key
from ccm.kube.transport import JSON, KubeTransport

__all__ = ["TenantRow", "collect_tenants", "render_tenants"]


@dataclass
class TenantRow:
    tenant: str
    owner: str | None = None
    nodes: int | None = None
    uninitialized: int | None = None
    last_sync: float | None = None
    credentials: str = "unknown"
    last_error: str | None = None
    problem: str | None = None
    state: str | None = None
    synced: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Served by a live replica, its nodes listed, its credentials and controllers working."""
        return (self.problem is None and self.owner is not None and self.state == "running" and self.synced
                and not self.credentials.startswith("failing"))


def _renewed(spec: dict[str, Any]) -> float | None:
    text = spec.get("renewTime")
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _live_holder(lease: JSON, now: float) -> str | None:
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or None
    renewed = _renewed(spec)
    duration = float(spec.get("leaseDurationSeconds") or 0)
    if holder is None or renewed is None or now > renewed + duration:
        return None
    return str(holder)


async def collect_tenants(settings: Settings, kube: KubeTransport, *, namespace: str) -> dict[str, Any]:
    """Every tenant, the live replicas, and the problems, as plain data."""
    now = time.time()
    tenant_ns = settings.fleet_tenant_namespace
    clusters, _ = await list_all(kube, clusters_path(tenant_ns), query=(
        {"labelSelector": settings.fleet_cluster_selector} if settings.fleet_cluster_selector else None))
    secret_query = {"labelSelector": settings.fleet_secret_selector} if settings.fleet_secret_selector else None
    secret_items, _ = await list_all(kube, secrets_path(tenant_ns), query=secret_query)
    secrets: dict[str, JSON] = {}
    for item in secret_items:
        slim = slim_secret(item)
        if slim is not None:
            secrets[object_key(item)] = slim
    selected: set[str] | None = None
    if settings.fleet_namespace_selector:
        items, _ = await list_all(kube, NAMESPACES, query={"labelSelector": settings.fleet_namespace_selector})
        selected = {object_key(i) for i in items}
    tenant_leases, _ = await list_all(kube, leases_path(namespace),
                                      query={"labelSelector": f"{TENANT_LEASE_LABEL}={settings.fleet_name}"})
    member_leases, _ = await list_all(kube, leases_path(namespace),
                                      query={"labelSelector": f"{FLEET_LABEL}={settings.fleet_name}"})
    leases = {str((lease.get("metadata") or {}).get("name")): lease for lease in tenant_leases}
    rows: list[TenantRow] = []
    for cluster in clusters:
        key = object_key(cluster)
        row = TenantRow(key)
        rows.append(row)
        slim_obj = slim_cluster(cluster)
        try:
            spec = desired_tenant(slim_obj, secrets, selected=selected is None or key.split("/", 1)[0] in selected)
        except TenantError as exc:
            row.problem = str(exc)
            continue
        if spec is None:
            row.problem = "not selected (namespace selector)"
            continue
        row.data = {"cluster": spec.cluster_name, "user_email": spec.user_email, "region": spec.region,
                    "api_server": spec.api_server}
        lease = leases.get(tenant_lease_name(settings.fleet_name, key))
        if lease is None:
            continue
        row.owner = _live_holder(lease, now)
        try:
            status = json.loads(((lease.get("metadata") or {}).get("annotations") or {}).get(STATUS_ANNOTATION)
                                or "null")
        except ValueError:
            status = None
        if isinstance(status, dict) and row.owner is not None:
            row.state = status.get("state")
            row.synced = bool(status.get("synced"))
            row.nodes, row.uninitialized = status.get("nodes"), status.get("uninitialized")
            row.last_sync = status.get("last_sync")
            credentials = status.get("credentials") or {}
            row.credentials = str(credentials.get("state") or "unknown")
            if credentials.get("reason"):
                row.credentials += f" ({credentials['reason']})"
            error = status.get("last_error") or {}
            row.last_error = error.get("error") if isinstance(error, dict) else None
    members = sorted(h for h in (_live_holder(lease, now) for lease in member_leases) if h)
    return {"fleet": settings.fleet_name, "namespace": namespace, "members": members,
            "tenants": [asdict(r) | {"ok": r.ok} for r in sorted(rows, key=lambda r: r.tenant)]}


def _ago(moment: float | None) -> str:
    if moment is None:
        return "-"
    return f"{max(0.0, time.time() - moment):.0f}s ago"


def render_tenants(view: dict[str, Any]) -> str:
    lines = [f"fleet {view['fleet']} in {view['namespace']}: {len(view['members'])} live replica(s): "
             + (", ".join(view["members"]) or "none")]
    header = ("TENANT", "OWNER", "NODES", "UNINIT", "LAST SYNC", "CREDENTIALS", "LAST ERROR / PROBLEM")
    table = [header]
    for row in view["tenants"]:
        def num(value: Any) -> str:
            return "-" if value is None else str(value)
        table.append((row["tenant"], row["owner"] or "none", num(row["nodes"]), num(row["uninitialized"]),
                      _ago(row["last_sync"]), row["credentials"], row["problem"] or row["last_error"] or "-"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for r in table:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    bad = [r for r in view["tenants"] if not r["ok"]]
    lines.append("")
    lines.append(f"{len(bad)} tenant(s) need attention." if bad else "Every tenant is served.")
    return "\n".join(lines)


async def run_all_tenants(settings: Settings, kube: KubeTransport, *, namespace: str,
                          output: str) -> tuple[str, bool]:
    """The text to print and whether every tenant is fine."""
    try:
        view = await collect_tenants(settings, kube, namespace=namespace)
    except KubeError as exc:
        text = json.dumps({"ok": False, "error": str(exc)}) if output == "json" else (
            f"cannot read the management cluster: {exc}")
        return text, False
    ok = all(r["ok"] for r in view["tenants"])
    if output == "json":
        return json.dumps({"ok": ok, **view}, indent=2, default=str), ok
    return render_tenants(view), ok
