"""deploy/ against a real kube-apiserver: the manifests validate, and the RBAC grants exactly what the CCM needs.

- The base and the example overlay (management cluster) and both tenant variants are created with
  server-side dry-run (``?dryRun=All&fieldValidation=Strict``: unknown or duplicate fields are errors, not
  silently dropped) in a namespace created for real; nothing is persisted.
- The tenant RBAC is then applied for real and checked as the user ``cloudsigma-ccm`` (a client certificate
  with that CN, as in the tenant kubeconfig): SelfSubjectAccessReviews for every permission ``doctor`` checks,
  denials for what it must not do, and real (or dry-run) calls against a registered Node.
- The management Role is applied for real and checked as the ServiceAccount's identity: it can create, read
  and renew its own Lease and nothing else (no Events either).

Both lists of permissions come from ccm/kube/permissions.py, the list the CCM's requests are checked against.

The same API server plays both clusters; everything created here except the namespace is removed again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from ccm.kube import permissions
from ccm.kube.permissions import EVENTS_NAMESPACE, leader_election
from tests.realenv.helm import template
from tests.realenv.kube_fixtures import api_client_for
from tests.realenv.kubeapiserver import KubeAPIServer
from tests.realenv.kustomize import render
from tests.realenv.nodes import register_node

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "base"
OVERLAY = REPO / "deploy" / "overlays" / "example-tenant"
SECRETLESS = REPO / "deploy" / "overlays" / "secretless-example-tenant"
TENANT = REPO / "deploy" / "tenant"
TENANT_WITHOUT_DELETION = REPO / "deploy" / "tenant" / "without-deletion"

NAMESPACE = "cloudsigma-example-3415fbd3"
TENANT_USER = "cloudsigma-ccm"
SERVICE_ACCOUNT = "cloudsigma-ccm"
LEASE = "cloudsigma-ccm"
NODE = "deploy-rbac-node"

JSON = dict[str, Any]
Obj = dict[str, Any]

# kind -> (API prefix, plural, namespaced) for the kinds deploy/ uses.
RESOURCES: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", True),
    ("v1", "Namespace"): ("/api/v1", "namespaces", False),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments", True),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets", True),
}


class Response:
    def __init__(self, status: int, body: JSON, warnings: list[str]) -> None:
        self.status = status
        self.body = body
        self.warnings = warnings

    def __repr__(self) -> str:
        return f"<{self.status} {self.body.get('message') or self.body.get('kind')} warnings={self.warnings}>"


async def call(api: ApiClient, method: str, path: str, *, body: Any = None,
               query: Iterable[tuple[str, str]] = (), content_type: str = "application/json") -> Response:
    """One raw API request; never raises for HTTP errors (the status is the point of these tests)."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    resp = await api.call_api(
        path, method, query_params=list(query), header_params=headers,
        body=body,  # serialized by the client for every "...json" content type (bytes would fail)
        auth_settings=["BearerToken"], _preload_content=False, _request_timeout=30,
    )
    try:
        raw = await resp.read()
        warnings = list(resp.headers.getall("Warning", []))
    finally:
        resp.release()
    payload = json.loads(raw) if raw else {}
    return Response(resp.status, payload if isinstance(payload, dict) else {}, warnings)


def collection_path(obj: Obj, namespace: str | None = None) -> str:
    key = (obj["apiVersion"], obj["kind"])
    if key not in RESOURCES:
        raise AssertionError(f"test does not know the REST path of {key}; add it to RESOURCES")
    prefix, plural, namespaced = RESOURCES[key]
    if not namespaced:
        return f"{prefix}/{plural}"
    ns = obj["metadata"].get("namespace") or namespace
    assert ns, f"{obj['kind']} {obj['metadata']['name']} has no namespace"
    return f"{prefix}/namespaces/{ns}/{plural}"


def first_difference(sent: Any, got: Any, path: str = "") -> str | None:
    """Where ``sent`` is not part of ``got`` (extra keys in ``got`` are defaults; empty strings are omitted)."""
    if isinstance(sent, dict):
        if not isinstance(got, dict):
            return f"{path}: {got!r} is not a mapping"
        for key, value in sent.items():
            if value == "" and key not in got:
                continue
            if key not in got:
                return f"{path}.{key}: missing"
            diff = first_difference(value, got[key], f"{path}.{key}")
            if diff:
                return diff
        return None
    if isinstance(sent, list):
        if not isinstance(got, list) or len(got) != len(sent):
            return f"{path}: {got!r} is not a list of {len(sent)}"
        for i, (s, g) in enumerate(zip(sent, got, strict=True)):
            diff = first_difference(s, g, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if sent == got else f"{path}: sent {sent!r}, stored {got!r}"


def contained(sent: Any, got: Any) -> bool:
    return first_difference(sent, got) is None


async def create(api: ApiClient, obj: Obj, *, dry_run: bool, namespace: str | None = None) -> Response:
    query = [("fieldValidation", "Strict")] + ([("dryRun", "All")] if dry_run else [])
    return await call(api, "POST", collection_path(obj, namespace), body=obj, query=query)


async def delete(api: ApiClient, obj: Obj, namespace: str | None = None) -> None:
    resp = await call(api, "DELETE", f"{collection_path(obj, namespace)}/{obj['metadata']['name']}")
    assert resp.status in (200, 202, 404), resp


async def ensure_namespace(api: ApiClient, name: str) -> None:
    resp = await call(api, "POST", "/api/v1/namespaces",
                      body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert resp.status in (201, 409), resp


async def can(api: ApiClient, verb: str, resource: str, *, subresource: str = "", group: str = "",
              namespace: str = "", name: str = "") -> bool:
    """SelfSubjectAccessReview for the identity of ``api``."""
    attrs = {"verb": verb, "resource": resource, "subresource": subresource, "group": group,
             "namespace": namespace, "name": name}
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {k: v for k, v in attrs.items() if v}}}
    resp = await call(api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
    assert resp.status == 201, resp
    return bool(resp.body["status"].get("allowed"))


async def eventually(api: ApiClient, expected: bool, verb: str, resource: str, timeout: float = 15.0,
                     **kwargs: str) -> None:
    """Wait until RBAC (whose authorizer cache follows the bindings with a short delay) answers ``expected``."""
    deadline = time.monotonic() + timeout
    while True:
        if await can(api, verb, resource, **kwargs) is expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{verb} {resource} {kwargs}: still not {expected} after {timeout}s")
        await asyncio.sleep(0.2)


def event_body(namespace: str, involved: Mapping[str, str]) -> JSON:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "deploy-test-", "namespace": namespace},
            "involvedObject": dict(involved), "reason": "DeployTest", "message": "rbac check", "type": "Normal"}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
async def management_namespace(kube_api: ApiClient) -> AsyncIterator[str]:
    await ensure_namespace(kube_api, NAMESPACE)
    # Pod Security admission: the CCM must meet the "restricted" standard (violations are warnings on
    # Deployments, which the tests treat as failures, and refusals for Pods).
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
    resp = await call(kube_api, "PATCH", f"/api/v1/namespaces/{NAMESPACE}", body={"metadata": {"labels": labels}},
                      content_type="application/merge-patch+json")
    assert resp.status == 200, resp
    objects = render(OVERLAY)
    for obj in objects:  # left-overs of an interrupted run would turn dry-run creates into 409s
        await delete(kube_api, obj)
    yield NAMESPACE
    for obj in objects:
        await delete(kube_api, obj)


@pytest.fixture
async def no_tenant_rbac(kube_api: ApiClient) -> AsyncIterator[None]:
    objects = render(TENANT)
    for obj in objects:
        await delete(kube_api, obj)
    yield
    for obj in objects:
        await delete(kube_api, obj)


# ------------------------------------------------------------------------------------------------ dry-run


@pytest.mark.parametrize("source", [BASE, OVERLAY, SECRETLESS], ids=["base", "overlay", "secretless"])
async def test_management_manifests_validate(kube_api: ApiClient, management_namespace: str, source: Path) -> None:
    objects = render(source)
    assert {o["kind"] for o in objects} == {"ServiceAccount", "Role", "RoleBinding", "Deployment",
                                            "PodDisruptionBudget"}
    for obj in objects:
        resp = await create(kube_api, obj, dry_run=True, namespace=management_namespace)
        assert resp.status == 201, (obj["kind"], resp)
        assert resp.warnings == [], (obj["kind"], resp.warnings)
        assert resp.body["kind"] == obj["kind"]
        assert resp.body["metadata"]["name"] == obj["metadata"]["name"]
        assert resp.body["metadata"]["namespace"] == management_namespace
        # Nothing was dropped or rewritten on the way: the server only adds defaults.
        assert contained(obj, resp.body), (obj["kind"], first_difference(obj, resp.body))
    # Dry-run persisted nothing.
    for obj in objects:
        path = f"{collection_path(obj, management_namespace)}/{obj['metadata']['name']}"
        assert (await call(kube_api, "GET", path)).status == 404, path


@pytest.mark.parametrize("source", [OVERLAY, SECRETLESS], ids=["overlay", "secretless"])
async def test_pod_meets_the_restricted_pod_security_standard(kube_api: ApiClient, management_namespace: str,
                                                              source: Path) -> None:
    dep = next(o for o in render(source) if o["kind"] == "Deployment")
    template = dep["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "cloudsigma-ccm-pss", "namespace": management_namespace,
                        "labels": template["metadata"]["labels"]},
           "spec": template["spec"]}
    resp = await call(kube_api, "POST", f"/api/v1/namespaces/{management_namespace}/pods", body=pod,
                      query=[("dryRun", "All"), ("fieldValidation", "Strict")])
    assert resp.status == 201, resp
    assert resp.warnings == []
    # The check bites: a pod without the hardening is refused in this namespace.
    weak = {**pod, "spec": {**pod["spec"], "securityContext": {},
                            "containers": [{**pod["spec"]["containers"][0], "securityContext": {}}]}}
    resp = await call(kube_api, "POST", f"/api/v1/namespaces/{management_namespace}/pods", body=weak,
                      query=[("dryRun", "All")])
    assert resp.status == 403 and "restricted" in str(resp.body.get("message")), resp


async def test_dry_run_is_strict(kube_api: ApiClient, management_namespace: str) -> None:
    """A misspelt field is an error, not silently dropped: the validation above can fail."""
    dep = next(o for o in render(OVERLAY) if o["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoots"] = True
    resp = await create(kube_api, dep, dry_run=True)
    assert resp.status in (400, 422), resp
    assert "runAsNonRoots" in str(resp.body.get("message")), resp


@pytest.mark.usefixtures("no_tenant_rbac")
@pytest.mark.parametrize("source", [TENANT, TENANT_WITHOUT_DELETION], ids=["tenant", "without-deletion"])
async def test_tenant_manifests_validate(kube_api: ApiClient, source: Path) -> None:
    objects = render(source)
    assert {o["kind"] for o in objects} == {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    for obj in objects:
        resp = await create(kube_api, obj, dry_run=True)
        assert resp.status == 201, (obj["kind"], obj["metadata"]["name"], resp)
        assert resp.warnings == []
        assert resp.body.get("rules", resp.body.get("subjects")) == obj.get("rules", obj.get("subjects"))
    for obj in objects:
        path = f"{collection_path(obj)}/{obj['metadata']['name']}"
        assert (await call(kube_api, "GET", path)).status == 404, path


# ------------------------------------------------------------------------------------------------ tenant RBAC


@pytest.mark.usefixtures("no_tenant_rbac", "clean_nodes")
@pytest.mark.parametrize("deletion", [True, False], ids=["with-deletion", "without-deletion"])
async def test_tenant_rbac_grants_exactly_what_the_ccm_uses(
        kube_api: ApiClient, kube_apiserver: KubeAPIServer, deletion: bool) -> None:
    for obj in render(TENANT if deletion else TENANT_WITHOUT_DELETION):
        resp = await create(kube_api, obj, dry_run=False)
        assert resp.status == 201, resp
    await register_node(kube_api, NODE, addresses=[("InternalIP", "10.9.0.20"), ("Hostname", NODE)])

    ccm = await api_client_for(kube_apiserver.kubeconfig(TENANT_USER))
    try:
        await eventually(ccm, True, "list", "nodes")
        await eventually(ccm, deletion, "delete", "nodes")

        # Everything `cloudsigma-ccm doctor` checks, i.e. everything the daemon does.
        for p in permissions.TENANT:
            expected = {"deletion": deletion, "csr-approval": False, "load-balancer": False,
                        "metallb": False}.get(p.when, True)
            assert await can(ccm, p.verb, p.resource, subresource=p.subresource, group=p.group,
                             namespace=p.namespace or "", name=p.name or "") is expected, p.label
        assert await can(ccm, "get", "nodes", name=NODE)
        assert await can(ccm, "create", "events", namespace=EVENTS_NAMESPACE)

        # And nothing else.
        denied = [
            ("get", "secrets", {}), ("list", "secrets", {}), ("get", "secrets", {"namespace": "kube-system"}),
            ("delete", "pods", {"namespace": "default"}), ("create", "pods", {"namespace": "default"}),
            ("list", "pods", {}), ("create", "nodes", {}), ("update", "nodes", {"subresource": "status"}),
            ("update", "nodes", {}),  # every Node write is a patch
            ("delete", "events", {"namespace": "default"}), ("list", "events", {}), ("get", "configmaps", {}),
            # Events only in the one namespace the CCM records them in, not cluster-wide.
            ("create", "events", {"namespace": "kube-system"}), ("patch", "events", {"namespace": "kube-system"}),
            ("create", "events", {}),
            ("create", "leases", {"group": "coordination.k8s.io", "namespace": "kube-system"}),
            ("bind", "clusterroles", {"group": "rbac.authorization.k8s.io"}),
            ("escalate", "clusterroles", {"group": "rbac.authorization.k8s.io"}),
            ("impersonate", "users", {}),
        ]
        for verb, resource, kwargs in denied:
            assert not await can(ccm, verb, resource, **kwargs), (verb, resource, kwargs)

        # Real calls, as the daemon makes them (ccm/kube).
        resp = await call(ccm, "GET", "/api/v1/nodes", query=[("limit", "500")])
        assert resp.status == 200 and NODE in [n["metadata"]["name"] for n in resp.body["items"]], resp
        resp = await call(ccm, "GET", "/api/v1/nodes", query=[("watch", "1"), ("timeoutSeconds", "1")])
        assert resp.status == 200, resp
        node = (await call(ccm, "GET", f"/api/v1/nodes/{NODE}")).body
        merge = "application/merge-patch+json"
        resp = await call(ccm, "PATCH", f"/api/v1/nodes/{NODE}", content_type=merge, body={
            "metadata": {"resourceVersion": node["metadata"]["resourceVersion"],
                         "labels": {"topology.kubernetes.io/region": "zrh"}},
            "spec": {"providerID": "cloudsigma://2f0ae6b6-1b8f-4c51-9d5e-0c1b7a3f6a11"}})
        assert resp.status == 200, resp
        resp = await call(ccm, "PATCH", f"/api/v1/nodes/{NODE}/status", content_type=merge,
                          body={"status": {"addresses": [{"type": "InternalIP", "address": "10.9.0.21"}]}})
        assert resp.status == 200 and resp.body["status"]["addresses"] == [
            {"type": "InternalIP", "address": "10.9.0.21"}], resp
        resp = await call(ccm, "POST", "/api/v1/namespaces/default/events",
                          body=event_body("default", {"kind": "Node", "name": NODE, "apiVersion": "v1"}))
        assert resp.status == 201, resp
        resp = await call(ccm, "PATCH", f"/api/v1/namespaces/default/events/{resp.body['metadata']['name']}",
                          content_type=merge, body={"count": 2})
        assert resp.status == 200 and resp.body["count"] == 2, resp
        resp = await call(ccm, "POST", "/api/v1/namespaces/kube-system/events", query=[("dryRun", "All")],
                          body=event_body("kube-system", {"kind": "Node", "name": NODE, "apiVersion": "v1"}))
        assert resp.status == 403, resp
        resp = await call(ccm, "GET", "/api/v1/namespaces/default/secrets/anything")
        assert resp.status == 403, resp
        resp = await call(ccm, "DELETE", "/api/v1/namespaces/default/pods/anything", query=[("dryRun", "All")])
        assert resp.status == 403, resp
        resp = await call(ccm, "DELETE", f"/api/v1/nodes/{NODE}", query=[("dryRun", "All")])
        assert resp.status == (200 if deletion else 403), resp
    finally:
        await ccm.close()
        resp = await call(kube_api, "DELETE", f"/api/v1/nodes/{NODE}")
        assert resp.status in (200, 404), resp


# ------------------------------------------------------------------------------------------------ management RBAC


async def test_management_role_allows_only_its_own_lease(
        kube_api: ApiClient, kube_apiserver: KubeAPIServer, management_namespace: str) -> None:
    objects = render(OVERLAY)
    for obj in objects:
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            resp = await create(kube_api, obj, dry_run=False)
            assert resp.status == 201, resp
    ns = management_namespace
    for p in leader_election(ns, LEASE):  # what ccm/leader.py does, per the list its transport is checked against
        assert p.namespace == ns
    # The identity the pod's ServiceAccount token carries (RBAC only looks at the user name and groups).
    identity = kube_apiserver.kubeconfig(f"system:serviceaccount:{ns}:{SERVICE_ACCOUNT}",
                                         ["system:serviceaccounts", f"system:serviceaccounts:{ns}"])
    sa = await api_client_for(identity)
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
    try:
        await eventually(sa, True, "create", "leases", group="coordination.k8s.io", namespace=ns)

        # What kubernetes_asyncio's LeaseLock does: get (404 at first), create, get, update (replace).
        assert (await call(sa, "GET", f"{leases}/{LEASE}")).status == 404
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": LEASE, "namespace": ns},
                 "spec": {"holderIdentity": "pod-a_1234", "leaseDurationSeconds": 15}}
        resp = await call(sa, "POST", leases, body=lease)
        assert resp.status == 201, resp
        current = await call(sa, "GET", f"{leases}/{LEASE}")
        assert current.status == 200, current
        current.body["spec"]["holderIdentity"] = "pod-b_5678"
        resp = await call(sa, "PUT", f"{leases}/{LEASE}", body=current.body)
        assert resp.status == 200 and resp.body["spec"]["holderIdentity"] == "pod-b_5678", resp

        # Not someone else's Lease, not Leases elsewhere, no listing, no deleting, no secrets.
        other = {**lease, "metadata": {"name": "someone-else", "namespace": ns}}
        assert (await call(kube_api, "POST", leases, body=other)).status == 201
        assert (await call(sa, "GET", f"{leases}/someone-else")).status == 403
        assert (await call(sa, "PUT", f"{leases}/someone-else", body=other)).status == 403
        assert (await call(sa, "GET", leases)).status == 403
        assert (await call(sa, "DELETE", f"{leases}/{LEASE}")).status == 403
        assert (await call(sa, "PATCH", f"{leases}/{LEASE}", body={"spec": {"holderIdentity": "x"}},
                           content_type="application/merge-patch+json")).status == 403
        elsewhere = {**lease, "metadata": {"name": LEASE, "namespace": "default"}}
        assert (await call(sa, "POST", "/apis/coordination.k8s.io/v1/namespaces/default/leases",
                           body=elsewhere, query=[("dryRun", "All")])).status == 403
        assert (await call(sa, "GET", f"/api/v1/namespaces/{ns}/secrets")).status == 403
        assert (await call(sa, "GET", f"/api/v1/namespaces/{ns}/secrets/cloudsigma-impersonation")).status == 403
        assert (await call(sa, "GET", "/api/v1/nodes")).status == 403
        for p in leader_election(ns, LEASE):
            assert await can(sa, p.verb, p.resource, group=p.group, namespace=ns, name=p.name or ""), p.label
        # No Events: the CCM records none in the management cluster.
        involved = {"kind": "Lease", "name": LEASE, "namespace": ns, "apiVersion": "coordination.k8s.io/v1"}
        resp = await call(sa, "POST", f"/api/v1/namespaces/{ns}/events", body=event_body(ns, involved),
                          query=[("dryRun", "All")])
        assert resp.status == 403, resp
        assert not await can(sa, "patch", "events", namespace=ns)
    finally:
        await sa.close()
        for name in (LEASE, "someone-else"):
            resp = await call(kube_api, "DELETE", f"{leases}/{name}")
            assert resp.status in (200, 404), resp


# ------------------------------------------------------------------------------------------------ fleet


FLEET_SELECTOR = REPO / "deploy" / "fleet" / "namespace-selector"
FLEET_NAMESPACE = FLEET_SA = "cloudsigma-ccm-fleet"


async def test_fleet_manifests_validate_and_grant_what_the_fleet_uses(
        kube_api: ApiClient, kube_apiserver: KubeAPIServer) -> None:
    """deploy/fleet (with the namespace selector, so every object): created with server-side dry-run in its
    namespace (created for real, Pod Security "restricted" enforced), then its RBAC applied for real and checked as
    its ServiceAccount: every permission the fleet declares, and nothing else."""
    objects = render(FLEET_SELECTOR)
    namespace = next(o for o in objects if o["kind"] == "Namespace")
    resp = await create(kube_api, namespace, dry_run=False)
    assert resp.status in (201, 409), resp
    rbac = [o for o in objects if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                                "RoleBinding")]
    for obj in rbac:
        await delete(kube_api, obj)
    for obj in objects:
        if obj["kind"] == "Namespace":
            continue
        resp = await create(kube_api, obj, dry_run=True)
        assert resp.status == 201, (obj["kind"], resp)
        assert resp.warnings == [], (obj["kind"], resp.warnings)
        assert contained(obj, resp.body), (obj["kind"], first_difference(obj, resp.body))
    template = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fleet-pss", "namespace": FLEET_NAMESPACE},
           "spec": template["spec"]}
    resp = await call(kube_api, "POST", f"/api/v1/namespaces/{FLEET_NAMESPACE}/pods", body=pod,
                      query=[("dryRun", "All"), ("fieldValidation", "Strict")])
    assert resp.status == 201 and resp.warnings == [], resp
    identity = kube_apiserver.kubeconfig(f"system:serviceaccount:{FLEET_NAMESPACE}:{FLEET_SA}",
                                         ["system:serviceaccounts", f"system:serviceaccounts:{FLEET_NAMESPACE}"])
    sa = await api_client_for(identity)
    try:
        for obj in rbac:
            resp = await create(kube_api, obj, dry_run=False)
            assert resp.status == 201, resp
        await eventually(sa, True, "list", "cloudsigmaclusters", group=permissions.CLUSTERAPI_GROUP)
        for p in permissions.fleet(FLEET_NAMESPACE, namespace_selector=True):
            assert await can(sa, p.verb, p.resource, group=p.group, namespace=p.namespace or "",
                             name=p.name or ""), p.label
        denied = [
            ("get", "secrets", {"namespace": "default", "name": "some-kubeconfig"}),
            ("create", "secrets", {"namespace": "default"}), ("update", "secrets", {"namespace": "default"}),
            ("update", "cloudsigmaclusters", {"group": permissions.CLUSTERAPI_GROUP, "namespace": "default"}),
            ("create", "leases", {"group": "coordination.k8s.io", "namespace": "default"}),
            ("list", "leases", {"group": "coordination.k8s.io", "namespace": "kube-system"}),
            ("list", "nodes", {}), ("list", "pods", {}), ("create", "events", {"namespace": FLEET_NAMESPACE}),
            ("get", "namespaces", {"name": "default"}), ("impersonate", "users", {}),
        ]
        for verb, resource, kwargs in denied:
            assert not await can(sa, verb, resource, **kwargs), (verb, resource, kwargs)
    finally:
        await sa.close()
        for obj in rbac:
            await delete(kube_api, obj)


# ------------------------------------------------------------------------------------------------ the Helm chart


EXAMPLES = REPO / "deploy" / "helm" / "examples"
CHART_VARIANTS: dict[str, tuple[list[str], str]] = {  # values files (deploy/helm/examples), release namespace
    "defaults": ([], NAMESPACE),
    "example-tenant": (["example-tenant.yaml"], NAMESPACE),
    "secretless": (["example-tenant.yaml", "secretless-example-tenant.yaml"], NAMESPACE),
    "cluster-ref": (["cluster-ref-example-tenant.yaml"], NAMESPACE),
    "one-replica-csr-approval": (["example-tenant.yaml"], NAMESPACE),
    "fleet": (["fleet.yaml", "fleet-namespace-selector.yaml"], FLEET_NAMESPACE),
    "tenant-rbac": (["tenant-rbac.yaml", "tenant-rbac-csr-approval.yaml"], "kube-system"),
}


@pytest.mark.usefixtures("no_tenant_rbac")
@pytest.mark.parametrize("variant", list(CHART_VARIANTS))
async def test_chart_renderings_pass_the_same_dry_run(kube_api: ApiClient, management_namespace: str,
                                                      variant: str) -> None:
    """What ``helm template`` renders (tests/realenv/helm.py: the real Helm v4) passes the strict server-side
    dry-run the kustomize output passes, Pod Security "restricted" included; nothing is persisted but the
    namespaces. (tests/unit/test_helm_chart.py proves the same objects equal deploy/'s.)"""
    files, namespace = CHART_VARIANTS[variant]
    extra = ["replicas=1", "csrApproval=approve"] if variant == "one-replica-csr-approval" else []
    objects = template([EXAMPLES / f for f in files], namespace=namespace, set_values=extra)
    assert objects
    for obj in objects:
        if obj["kind"] == "Namespace":
            resp = await create(kube_api, obj, dry_run=False)
            assert resp.status in (201, 409), resp
            continue
        if not RESOURCES[(obj["apiVersion"], obj["kind"])][2]:
            await delete(kube_api, obj)  # cluster-scoped left-overs would turn the dry-run create into a 409
        resp = await create(kube_api, obj, dry_run=True)
        assert resp.status == 201, (obj["kind"], obj["metadata"]["name"], resp)
        assert resp.warnings == [], (obj["kind"], resp.warnings)
        assert contained(obj, resp.body), (obj["kind"], first_difference(obj, resp.body))
        if obj["kind"] == "Deployment":
            template_ = obj["spec"]["template"]
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "chart-pss", "namespace": namespace, "labels": template_["metadata"]["labels"]},
                   "spec": template_["spec"]}
            resp = await call(kube_api, "POST", f"/api/v1/namespaces/{namespace}/pods", body=pod,
                              query=[("dryRun", "All"), ("fieldValidation", "Strict")])
            assert resp.status == 201 and resp.warnings == [], resp
    for obj in objects:
        if obj["kind"] != "Namespace":
            path = f"{collection_path(obj)}/{obj['metadata']['name']}"
            assert (await call(kube_api, "GET", path)).status == 404, path
