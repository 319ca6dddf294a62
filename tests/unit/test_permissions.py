"""ccm/kube/permissions.py: the one list of Kubernetes permissions, and the transport that holds the code to it.

Every request function of ccm/kube and ccm/leader.py is driven here through a KubeTransport carrying the list
(over a recording fake ApiClient): each request must be declared (or the transport refuses it unsent), and every
declared permission must be used by some code — so the list, and the RBAC derived from it, is exactly what the
code does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ccm.clusterref import ClusterRefFollower
from ccm.clusters.clusterapi import clusters_path, secrets_path
from ccm.csr.apply import CSRS, get_csr, write_condition
from ccm.fleet.announce import Announcer, leases_path
from ccm.fleet.discovery import DiscoveryOptions, TenantDiscovery
from ccm.fleet.manager import tenant_lease_name
from ccm.kube.events import EventRecorder, ObjectEvent
from ccm.kube.fetching import get_node, list_nodes
from ccm.kube.informer import Informer, ListWatch
from ccm.kube.patching import delete_node, patch_node, replace_addresses
from ccm.kube.permissions import (
    CLUSTERAPI_GROUP,
    TENANT,
    Permission,
    Request,
    UndeclaredRequest,
    cluster_ref,
    covers,
    fleet,
    leader_election,
    needed,
    rbac_rules,
    request_of,
)
from ccm.kube.transport import KubeTransport
from ccm.leader import LeaseElector
from ccm.nodes.watching import NodeWatcher

NODE = {"metadata": {"name": "n1", "uid": "u1", "resourceVersion": "7"}}
LEASE_NS, LEASE_NAME = "tenant-ns", "cloudsigma-ccm"


class FakeContent:
    async def iter_any(self) -> AsyncIterator[bytes]:
        yield json.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}).encode() + b"\n"
        await asyncio.Event().wait()  # then the watch stays open, as a real one does


class FakeResponse:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self._raw = json.dumps(body).encode()
        self.content = FakeContent()

    async def read(self) -> bytes:
        return self._raw

    def release(self) -> None:
        pass


class RecordingApiClient:
    """Answers like an API server that holds one Node and, after it was created, one Lease; records requests."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.lease: dict[str, Any] | None = None

    def borrow(self) -> contextlib.AbstractAsyncContextManager[RecordingApiClient]:
        """As a KubeconfigClient lends its current ApiClient to one request."""
        return contextlib.nullcontext(self)

    async def call_api(self, path: str, method: str, *, query_params: list[tuple[str, Any]], **_: Any) -> FakeResponse:
        self.calls.append((method, path, dict(query_params)))
        if "/leases" in path:
            if method == "GET":
                return FakeResponse(404, {}) if self.lease is None else FakeResponse(200, self.lease)
            self.lease = {"metadata": {"name": LEASE_NAME, "namespace": LEASE_NS, "resourceVersion": "1"},
                          "spec": {"holderIdentity": "me"}}
            return FakeResponse(201, self.lease)
        if method == "GET" and path == "/api/v1/nodes":
            return FakeResponse(200, {"items": [NODE], "metadata": {"resourceVersion": "8"}})
        return FakeResponse(200, NODE)


def covering(permissions: tuple[Permission, ...], calls: list[tuple[str, str, dict[str, Any]]]) -> set[Permission]:
    used: set[Permission] = set()
    for method, path, query in calls:
        request = request_of(method, path, query)
        assert request is not None, path
        found = [p for p in permissions if covers(p, request)]
        assert found, f"{method} {path} is not declared"
        used.update(found)
    return used


async def start_watch(api: RecordingApiClient, watcher: ListWatch[Any]) -> None:
    """Run ``watcher`` until its watch request has been sent."""
    task = asyncio.create_task(watcher.run())
    while not any(q.get("watch") for _, _, q in api.calls):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_tenant_list_is_exactly_what_the_code_sends() -> None:
    api = RecordingApiClient()
    permissions = needed(TENANT, deletion_enabled=True)
    kube = KubeTransport(api, permissions=permissions)  # type: ignore[arg-type]
    await list_nodes(kube)
    await get_node(kube, "n1")
    await patch_node(kube, "n1", resource_version="7", labels={"a": "b"}, taints=[])
    await replace_addresses(kube, "n1", [{"type": "InternalIP", "address": "10.0.0.1"}], uid="u1",
                            resource_version="7")
    await delete_node(kube, "n1", uid="u1", resource_version="7")
    events = EventRecorder(kube)
    for _ in range(2):  # a repeat updates the Event in place (count, lastTimestamp)
        events.record(NODE, ObjectEvent.normal("Synced", "initialized"))
        await events.flush()
    await start_watch(api, NodeWatcher(kube, watch_timeout=1))
    assert covering(permissions, api.calls) == set(permissions)


async def test_the_csr_approvers_list_is_exactly_what_it_sends() -> None:
    api = RecordingApiClient()
    permissions = [p for p in TENANT if p.when == "csr-approval"]
    kube = KubeTransport(api, permissions=permissions)  # type: ignore[arg-type]
    csr = {"metadata": {"name": "csr-1", "resourceVersion": "3"}}
    await get_csr(kube, "csr-1")
    await write_condition(kube, csr, approve=True, message="checked")
    await start_watch(api, Informer(kube, CSRS, field_selector="spec.signerName=x"))
    unused = set(permissions) - covering(tuple(permissions), api.calls)
    # Checked by the API server's CertificateApproval admission on the approval write, never sent by us.
    assert {(p.verb, p.resource) for p in unused} == {("approve", "signers")}


async def test_the_leader_election_list_is_exactly_what_the_code_sends() -> None:
    api = RecordingApiClient()
    permissions = leader_election(LEASE_NS, LEASE_NAME)
    kube = KubeTransport(api, permissions=permissions)  # type: ignore[arg-type]
    elector = LeaseElector(kube, name=LEASE_NAME, namespace=LEASE_NS, identity="me", lease_duration=15,
                           renew_deadline=10, retry_period=2)
    assert await elector.try_acquire_or_renew()  # GET 404, POST
    assert await elector.try_acquire_or_renew()  # GET, PUT
    elector.leading = True
    await elector.release()
    assert covering(permissions, api.calls) == set(permissions)


async def test_transport_refuses_an_undeclared_request_without_sending_it() -> None:
    api = RecordingApiClient()
    kube = KubeTransport(api, permissions=needed(TENANT, deletion_enabled=False))  # type: ignore[arg-type]
    with pytest.raises(UndeclaredRequest, match=r"DELETE /api/v1/nodes/n1 needs delete nodes, which ccm/kube/"):
        await delete_node(kube, "n1", uid="u1", resource_version="7")
    with pytest.raises(UndeclaredRequest, match="update nodes"):
        await kube.request("PUT", "/api/v1/nodes/n1", body=NODE)
    with pytest.raises(UndeclaredRequest, match="create events in kube-system"):
        await kube.request("POST", "/api/v1/namespaces/kube-system/events", body={})
    with pytest.raises(UndeclaredRequest):
        async for _ in kube.stream("/api/v1/namespaces/default/pods", query={"watch": "true"}, timeout=1):
            pass
    assert api.calls == []
    await patch_node(kube, "n1", resource_version="7", labels={"a": "b"})
    assert [c[:2] for c in api.calls] == [("PATCH", "/api/v1/nodes/n1")]


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("GET", "/api/v1/nodes", {"limit": 500}, Request("list", "", "nodes", "", None, None)),
    ("GET", "/api/v1/nodes", {"watch": "true"}, Request("watch", "", "nodes", "", None, None)),
    ("GET", "/api/v1/nodes/n1", None, Request("get", "", "nodes", "", None, "n1")),
    ("PATCH", "/api/v1/nodes/n1/status", None, Request("patch", "", "nodes", "status", None, "n1")),
    ("DELETE", "/api/v1/nodes/n1", None, Request("delete", "", "nodes", "", None, "n1")),
    ("POST", "/api/v1/namespaces/default/events", None, Request("create", "", "events", "", "default", None)),
    ("PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", None,
     Request("update", "coordination.k8s.io", "leases", "", "ns", "l")),
    ("GET", "/api/v1/namespaces", None, Request("list", "", "namespaces", "", None, None)),
    ("GET", "/version", None, None),
])
def test_request_of(method: str, path: str, query: dict[str, Any] | None, expected: Request | None) -> None:
    assert request_of(method, path, query) == expected


def test_covers_respects_namespace_and_name() -> None:
    lease = leader_election("ns", "mine")
    get = Request("get", "coordination.k8s.io", "leases", "", "ns", "mine")
    assert any(covers(p, get) for p in lease)
    assert not any(covers(p, Request("get", "coordination.k8s.io", "leases", "", "ns", "other")) for p in lease)
    assert not any(covers(p, Request("get", "coordination.k8s.io", "leases", "", "elsewhere", "mine")) for p in lease)
    create = Request("create", "coordination.k8s.io", "leases", "", "ns", None)
    assert any(covers(p, create) for p in lease)


def test_rbac_rules_group_verbs_per_resource() -> None:
    assert rbac_rules(needed(TENANT, deletion_enabled=False, csr_approval=False)) == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch", "get", "patch"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    assert rbac_rules(leader_election("ns", "l")) == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["l"],
         "verbs": ["get", "update"]},
    ]


def test_labels_and_reviews() -> None:
    events = Permission("create", "events", namespace="default")
    assert events.label == "create events in default"
    assert events.review()["spec"]["resourceAttributes"] == {"verb": "create", "resource": "events",
                                                             "namespace": "default"}
    status = Permission("patch", "nodes", "status")
    assert status.label == "patch nodes/status"
    assert status.review()["spec"]["resourceAttributes"] == {"verb": "patch", "resource": "nodes",
                                                             "subresource": "status"}


async def run_until_watching(api: RecordingApiClient, informer: Informer) -> None:
    """Run ``informer`` until its own watch request has been sent."""
    task = asyncio.create_task(informer.run())
    while not any(q.get("watch") and path == informer.path for _, path, q in api.calls):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_fleet_list_is_exactly_what_the_code_sends() -> None:
    api = RecordingApiClient()
    permissions = fleet("fleet-ns", namespace_selector=True)
    kube = KubeTransport(api, permissions=permissions)  # type: ignore[arg-type]
    elector = LeaseElector(kube, name=tenant_lease_name("f", "team/c1"), namespace="fleet-ns", identity="me",
                           lease_duration=15, renew_deadline=10, retry_period=2, labels={"l": "v"})
    assert await elector.try_acquire_or_renew()  # GET 404, POST
    assert await elector.try_acquire_or_renew()  # GET, PUT
    announcer = Announcer(kube, namespace="fleet-ns", fleet="f", identity="me", lease_duration=15, renew_interval=5)
    assert await announcer.renew()  # GET, PATCH
    await announcer.leave()  # DELETE
    discovery = TenantDiscovery(kube, DiscoveryOptions(namespace_selector="fleet=yes"))
    for informer in (*discovery.informers, Informer(kube, leases_path("fleet-ns"), label_selector="a=b")):
        await run_until_watching(api, informer)
    assert covering(permissions, api.calls) == set(permissions)


async def test_a_fleet_watching_one_namespace_needs_no_cluster_wide_rights() -> None:
    api = RecordingApiClient()
    permissions = fleet("fleet-ns", tenant_namespace="tenants")
    assert all(p.namespace in ("tenants", "fleet-ns") for p in permissions)
    kube = KubeTransport(api, permissions=permissions)  # type: ignore[arg-type]
    for informer in TenantDiscovery(kube, DiscoveryOptions(namespace="tenants")).informers:
        await run_until_watching(api, informer)
    with pytest.raises(UndeclaredRequest, match="list secrets"):
        await kube.request("GET", secrets_path())


async def test_cluster_ref_reads_its_one_cloudsigmacluster_only() -> None:
    api = RecordingApiClient()
    permissions = cluster_ref("team-a", "prod-1")
    kube = KubeTransport(api, permissions=permissions)  # type: ignore[arg-type]
    follower = ClusterRefFollower(kube, "team-a", "prod-1")
    await run_until_watching(api, follower.informer)
    assert covering(permissions, api.calls) == set(permissions)
    assert rbac_rules(permissions) == [{"apiGroups": [CLUSTERAPI_GROUP], "resources": ["cloudsigmaclusters"],
                                        "resourceNames": ["prod-1"], "verbs": ["list", "watch"]}]
    with pytest.raises(UndeclaredRequest):  # without the name selector: every cluster of the namespace
        await kube.request("GET", clusters_path("team-a"))
    with pytest.raises(UndeclaredRequest):
        await kube.request("GET", clusters_path("team-a"), query={"fieldSelector": "metadata.name=other"})
